"""One pydantic model per stage, loaded from YAML with CLI flags overriding.

A YAML file is either flat (the keys of one stage) or has one section per stage (`label:`,
`distill:`, ...), so a single file can configure a whole pipeline. Unknown keys and wrong types
fail before any work starts, with a one-line error naming the file and the key.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qadist import storage
from qadist.errors import UserError

PRODUCTION_TEACHER = "ahotrod/albert_xxlargev1_squad2_512"
PRODUCTION_STUDENT = "albert-base-v2"
PRODUCTION_ENCODER = "sentence-transformers/multi-qa-MiniLM-L6-cos-v1"
STAGES = ("pairs", "label", "distill", "finetune", "predict", "evaluate", "demo")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Compute precision of forward (and backward) passes: "auto" = bf16 autocast on a GPU (fp16 where
# it has no bf16), fp32 on a CPU; "bf16" on a CPU with AVX512-BF16/AMX: inference ~2x, training ~1.2-1.3x faster.
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class WindowSettings(StageConfig):
    """How contexts are cut into windows (the same for teacher, student and prediction)."""

    max_seq_len: int = Field(384, ge=16)
    doc_stride: int = Field(128, ge=0)
    max_query_len: int = Field(64, ge=4)

    @model_validator(mode="after")
    def _lengths_fit(self):
        from qadist.squad.features import check_lengths

        reason = check_lengths(self.max_seq_len, self.doc_stride, self.max_query_len)
        if reason:
            raise ValueError(reason)
        return self


class PairsConfig(StageConfig):
    questions: str
    documents: str
    out: str
    model: str = "packaged:all-MiniLM-L6-v2"
    top_k: int = Field(1, ge=1)
    min_score: float | None = None
    passage_tokens: int = Field(128, ge=16)
    passage_overlap: int = Field(32, ge=0)
    context_tokens: int = Field(300, ge=0)  # a pair's context: the passage widened to this many tokens (0: passage only)
    lexical_weight: float = Field(1.0, ge=0)  # score = cosine + lexical_weight * normalised BM25 (0: dense only)
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    approximate_above: int = Field(1_000_000, ge=0)
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    rows_per_file: int = Field(10_000, ge=1)
    overwrite: bool = False


class LabelConfig(WindowSettings):
    pairs: str
    out: str
    teachers: list[str] = Field(min_length=1)
    revisions: list[str] | None = None
    combine: Literal["mean_logits", "mean_probs"] = "mean_logits"
    keep_teacher_logits: bool = False
    batch_size: int = Field(64, ge=1)
    num_actors: int = Field(1, ge=1)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    num_cpus_per_actor: float = Field(1.0, gt=0)  # also the torch threads of a CPU-only actor
    precision: Precision = "auto"
    spread_actors: bool = False  # place teacher actors on different nodes (Ray's SPREAD strategy)
    rows_per_shard: int = Field(10_000, ge=1)
    max_context_chars: int = Field(100_000, ge=1)
    overwrite: bool = False
    trust_remote_code: bool = False


class TrainSettings(WindowSettings):
    """Optimiser, schedule and scale settings shared by distill and finetune."""

    out: str
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    # How Ray places the workers: PACK fills a node first; SPREAD / STRICT_SPREAD one per node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    checkpoint_every: int = Field(500, ge=1)
    max_failures: int = Field(2, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    shuffle_buffer: int = Field(2048, ge=0)  # windows in each worker's local shuffle buffer; 0 = stream order
    # Micro-batches drawn together and re-cut by window length: less padding (SQuAD windows: 1.68
    # padded tokens per real token in stream order, 1.08 in groups of 8); 1 = stream order.
    length_group: int = Field(1, ge=1)
    precision: Precision = "auto"
    eval_file: str | None = None
    seed: int = 0
    trust_remote_code: bool = False


class DistillConfig(TrainSettings):
    labels: str
    student: str
    temperature: float = Field(2.0, gt=0)
    alpha_kd: float = Field(1.0, ge=0)
    alpha_hard: float = Field(0.0, ge=0)
    train_file: str | None = None


class FinetuneConfig(TrainSettings):
    train_file: str
    model: str
    epochs: float = Field(3.0, gt=0)


class PredictConfig(WindowSettings):
    model: str
    data: str
    out: str
    na_probs: str | None = None
    batch_size: int = Field(64, ge=1)
    n_best: int = Field(20, ge=1)
    max_answer_len: int = Field(30, ge=1)
    null_threshold: float = 0.0
    use_gpu: bool | None = None
    precision: Precision = "auto"
    trust_remote_code: bool = False


class EvaluateConfig(StageConfig):
    data: str
    predictions: str
    na_probs: str | None = None
    na_prob_thresh: float = 1.0
    out: str | None = None


class DemoConfig(StageConfig):
    out: str = "qadist-demo"
    quick: bool = False
    seed: int = 0


Config = TypeVar("Config", bound=StageConfig)


def read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a YAML mapping of keys to values")
    return data


def stage_section(data: dict[str, Any], stage: str, path: str) -> dict[str, Any]:
    """The stage's own keys: its section in a pipeline file, or the whole flat file."""
    if not any(isinstance(data.get(s), dict) for s in STAGES):
        return data
    section = data.get(stage) or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: section '{stage}' must be a mapping")
    return section


def describe_error(e: ValidationError, cls: type[StageConfig], source: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(config)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; valid keys are: {', '.join(cls.model_fields)}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'; set it in the config or with --{key.replace('_', '-')}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: key '{key}': {msg} (got {err.get('input')!r})" if err["loc"] else f"{source}: {msg}"


def load_config(cls: type[Config], stage: str, config_path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """YAML (optional) + flags that were given (not None) -> a validated stage config."""
    values: dict[str, Any] = {}
    if config_path:
        values.update(stage_section(read_yaml(config_path), stage, config_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    source = config_path or "command line"
    try:
        return cls(**values)
    except ValidationError as e:
        raise UserError(describe_error(e, cls, source)) from e


def to_dict(cfg: StageConfig) -> dict[str, Any]:
    """The resolved config, for manifests and checkpoints (never holds credentials: URIs only)."""
    return cfg.model_dump(mode="json")


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "pairs": PairsConfig,
    "label": LabelConfig,
    "distill": DistillConfig,
    "finetune": FinetuneConfig,
    "predict": PredictConfig,
    "evaluate": EvaluateConfig,
    "demo": DemoConfig,
}
