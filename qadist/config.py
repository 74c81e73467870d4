"""One pydantic model per stage, loaded from YAML with CLI flags overriding.

A YAML file is either flat (the keys of one stage) or has one section per stage (`label:`,
`distill:`, ...), so a single file can configure a whole pipeline. Unknown keys and wrong types
fail before any work starts, with a one-line error naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from qadist import storage
from qadist.errors import UserError, first_line

PRODUCTION_TEACHER = "ahotrod/albert_xxlargev1_squad2_512"
PRODUCTION_STUDENT = "albert-base-v2"
PRODUCTION_ENCODER = "sentence-transformers/multi-qa-MiniLM-L6-cos-v1"


def Uri(default: Any = ..., help: str = "") -> Any:  # noqa: N802 (a Field factory)
    """A file or folder URI: a local path (made absolute on the driver, so Ray workers anywhere
    find it), file://... or s3://bucket/prefix."""
    return Field(default, description=help, json_schema_extra={"kind": "uri"})


def Model(default: Any = ..., help: str = "", flag: str | None = None) -> Any:  # noqa: N802
    """A model: a Hugging Face name, a local save_pretrained folder (made absolute) or an s3:// folder."""
    extra: dict[str, Any] = {"kind": "model"}
    if flag:
        extra["flag"] = flag
    return Field(default, description=help, json_schema_extra=extra)


def Opt(default: Any = None, help: str = "", flag: str | None = None, **constraints: Any) -> Any:  # noqa: N802
    """A plain setting with its help text (and a flag spelling when it is not `--<name>`)."""
    return Field(default, description=help, json_schema_extra={"flag": flag} if flag else None, **constraints)


def _resource_pairs(value: Any) -> Any:
    """`--resource NAME=N` flags (a list of strings) -> {NAME: N}; a YAML mapping as it is."""
    if not isinstance(value, list):
        return value
    out: dict[str, Any] = {}
    for item in value:
        name, sep, amount = str(item).partition("=")
        if not sep or not name:
            raise ValueError(f"{item!r} is not NAME=AMOUNT (for example qadist_label=1)")
        out[name.strip()] = amount.strip()
    return out


# Custom Ray resources each unit (actor, Train worker, replica) asks for, beside its CPUs and GPUs:
# they steer the unit onto the node types that declare them (cluster.yaml: qadist_label, qadist_train).
Resources = Annotated[dict[str, float], BeforeValidator(_resource_pairs)]
RESOURCES_HELP = "Custom Ray resources per {unit}, NAME=AMOUNT, repeatable (e.g. {example}: only nodes declaring it)."


def _looks_like_path(value: str) -> bool:
    # Hub names are `name` or `org/name`; anything else with a slash, or starting like a path, is a folder.
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value


def resolve_uri(value: str) -> str:
    if "://" in value and not value.startswith("file://"):
        return value
    return os.path.abspath(os.path.expanduser(value.removeprefix("file://")))


def resolve_model(value: str) -> str:
    """A local folder (or what looks like one) -> its absolute path; a hub name or s3:// URI as it is.
    A folder that does not exist (yet: a pipeline's later stage) fails when it is loaded."""
    if value.startswith(("s3://", "packaged:")):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    return os.path.abspath(path) if os.path.isdir(path) or _looks_like_path(value) else value


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _resolve_paths(cls, values: Any) -> Any:
        """Every path is resolved where the config is made (the driver): relative paths then work from
        any directory, and in Ray workers whose working directory is elsewhere."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, field in cls.model_fields.items():
            kind = (field.json_schema_extra or {}).get("kind") if isinstance(field.json_schema_extra, dict) else None
            value = out.get(name)
            if kind is None or value is None:
                continue
            resolve = resolve_uri if kind == "uri" else resolve_model
            if isinstance(value, str):
                out[name] = resolve(value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[name] = [resolve(v) for v in value]
        return out


# Compute precision of forward (and backward) passes: "auto" = bf16 autocast on a GPU (fp16 where
# it has no bf16), fp32 on a CPU; "bf16" on a CPU with AVX512-BF16/AMX: inference ~2x, training ~1.2-1.3x faster.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_HELP = (
    "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16; bf16 on a CPU with AVX512-BF16/AMX: "
    "inference ~2x, training ~1.2-1.3x faster than fp32"
)


class WindowSettings(StageConfig):
    """How contexts are cut into windows (the same for teacher, student and prediction)."""

    max_seq_len: int = Opt(384, "Tokens per window (question + context + special tokens).", ge=16)
    doc_stride: int = Opt(128, "Tokens shared by consecutive windows of a long context.", ge=0)
    max_query_len: int = Opt(64, "Question tokens kept (longer questions are cut).", ge=4)

    @model_validator(mode="after")
    def _lengths_fit(self):
        from qadist.squad.features import check_lengths

        reason = check_lengths(self.max_seq_len, self.doc_stride, self.max_query_len)
        if reason:
            raise ValueError(reason)
        return self


class PairsConfig(StageConfig):
    questions: str = Uri(help="Questions URI (JSONL/Parquet: id, question).")
    documents: str = Uri(help="Documents URI (JSONL/Parquet: id, text or context, title).")
    out: str = Uri(help="Output folder URI for pairs and rejects.")
    model: str = Opt(
        "packaged:all-MiniLM-L6-v2",
        "sentence-transformers model name or path (default: the packaged all-MiniLM-L6-v2).",
    )
    top_k: int = Opt(1, "Documents kept per question (each with its best passage).", ge=1)
    min_score: float | None = Opt(
        None, "Drop matches whose score (cosine + lexical weight x normalised BM25) is below this."
    )
    passage_tokens: int = Opt(128, "Tokens of the embedding model per passage.", ge=16)
    passage_overlap: int = Opt(32, "Tokens shared by consecutive passages.", ge=0)
    context_tokens: int = Opt(
        300, "A pair's context: the passage widened to this many tokens (0: the passage only).", ge=0
    )
    lexical_weight: float = Opt(1.0, "Weight of the normalised BM25 score (0: cosine only).", ge=0)
    batch_size: int = Opt(256, "Texts per embedding batch.", ge=1)
    num_actors: int = Opt(1, "Embedding/matching actors in each pool.", ge=1)
    num_gpus_per_actor: float = Opt(0.0, "GPUs per actor (0: CPU).", ge=0)
    resources_per_actor: Resources = Opt(
        {}, RESOURCES_HELP.format(unit="actor", example="qadist_label=1"), flag="--resource"
    )
    approximate_above: int = Opt(1_000_000, "Passages above which search is approximate (with faiss installed).", ge=0)
    output_format: Literal["jsonl", "parquet"] = Opt("jsonl", "jsonl or parquet.")
    rows_per_file: int = Opt(10_000, "Pairs per output part file.", ge=1)
    overwrite: bool = Opt(False, "Replace an existing output.")


class LabelConfig(WindowSettings):
    pairs: str = Uri(help="Pairs URI (SQuAD JSON, JSONL or Parquet; file or prefix).")
    out: str = Uri(help="Output URI for shards, manifest and rejects.")
    teachers: list[str] = Model(help="Teacher model name or path; repeat for an ensemble.", flag="--teacher")
    revisions: list[str] | None = Opt(
        None, "Hub revision of each teacher, in --teacher order (default: the resolved commit).", flag="--revision"
    )
    combine: Literal["mean_logits", "mean_probs"] = Opt("mean_logits", "How the ensemble's logits are combined.")
    keep_teacher_logits: bool = Opt(False, "Also store each teacher's logits.")
    batch_size: int = Opt(64, "Windows per teacher batch.", ge=1)
    num_actors: int = Opt(1, "Teacher actors in the pool.", ge=1)
    num_gpus_per_actor: float = Opt(0.0, "GPUs per teacher actor (fractions allowed).", ge=0)
    num_cpus_per_actor: float = Opt(1.0, "CPUs per teacher actor (torch threads on CPU-only actors).", gt=0)
    resources_per_actor: Resources = Opt(
        {}, RESOURCES_HELP.format(unit="teacher actor", example="qadist_label=1"), flag="--resource"
    )
    precision: Precision = Opt("auto", PRECISION_HELP)
    spread_actors: bool = Opt(False, "Place teacher actors on different nodes (Ray's SPREAD strategy).")
    rows_per_shard: int = Opt(10_000, "Input rows per shard: the unit of work and of resume.", ge=1)
    max_context_chars: int = Opt(100_000, "Longer contexts are rejected.", ge=1)
    progress_deadline_s: float = Opt(
        1800.0,
        "Fail the run when no block finishes for this long while blocks are pending (a hung teacher, actors "
        "dying faster than they restart); finished shards are kept. 0: no deadline.",
        ge=0,
    )
    overwrite: bool = Opt(False, "Replace an output made with another config.")
    trust_remote_code: bool = Opt(False, "Run code shipped in a model folder (off: only safetensors/weights are read).")


class OptimizerSettings(StageConfig):
    """Optimiser, schedule, scale and checkpoint settings of every training stage (pretrain too)."""

    out: str = Uri(help="Output URI for checkpoints and the final model (<out>/final).")
    epochs: float = Opt(2.0, "Passes over the training windows (fractions allowed).", gt=0)
    batch_size: int = Opt(32, "Windows per worker per micro-batch.", ge=1)
    grad_accum: int = Opt(1, "Micro-batches per optimizer step.", ge=1)
    learning_rate: float = Opt(5e-5, "Peak learning rate (linear warm-up and decay).", gt=0)
    weight_decay: float = Opt(0.01, "AdamW weight decay (not on biases and norms).", ge=0)
    warmup_ratio: float = Opt(0.1, "Fraction of the steps spent warming up.", ge=0, le=1)
    max_grad_norm: float = Opt(1.0, "Gradient clipping norm.", gt=0)
    num_workers: int = Opt(1, "Ray Train workers (one per GPU with --use-gpu).", ge=1)
    use_gpu: bool = Opt(False, "Train on GPUs (one per worker).")
    resources_per_worker: Resources = Opt(
        {}, RESOURCES_HELP.format(unit="Train worker", example="qadist_train=1"), flag="--resource"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Opt(
        "PACK", "How Ray places the workers: PACK fills a node first; SPREAD / STRICT_SPREAD one per node."
    )
    checkpoint_every: int = Opt(500, "Optimizer steps between checkpoints.", ge=1)
    max_failures: int = Opt(2, "Worker-group restarts from the last checkpoint before the run fails.", ge=0)
    keep_checkpoints: int = Opt(2, "Checkpoints kept.", ge=1)
    shuffle_buffer: int = Opt(2048, "Windows in each worker's local shuffle buffer (0: stream order).", ge=0)
    length_group: int = Opt(
        1, "Micro-batches drawn together and re-cut by window length (less padding; 1: stream order).", ge=1
    )
    precision: Precision = Opt("auto", PRECISION_HELP)
    seed: int = Opt(0, "Seed of initialisation, shuffling and dropout.")
    trust_remote_code: bool = Opt(False, "Run code shipped in a model folder.")


class TrainSettings(WindowSettings, OptimizerSettings):
    """Settings shared by distill and finetune: windows, optimiser and scale, an evaluation file."""

    eval_file: str | None = Uri(None, "SQuAD JSON or pairs with answers, scored after each epoch.")


class PretrainConfig(OptimizerSettings):
    documents: str = Uri(help="Documents URI (JSONL/Parquet: id, text or context, title), as for `pairs`.")
    model: str = Model(help="Encoder to continue training (a Hugging Face name or folder; its MLM head if it has one).")
    # Defaults that keep a QA-ready encoder QA-ready: measured in docs/pretrain.md ("Does it pay?").
    epochs: float = Opt(1.0, "Passes over the documents' token sequences (after the head warm-up).", gt=0)
    learning_rate: float = Opt(5e-6, "Peak learning rate of the whole model (linear warm-up and decay).", gt=0)
    head_warmup_steps: int = Opt(
        200,
        "When the model has no masked-LM head: optimizer steps that train the new head alone (encoder and "
        "embeddings frozen) before the whole model is trained; 0: no warm-up.",
        ge=0,
    )
    head_learning_rate: float = Opt(1e-3, "Peak learning rate of the head warm-up.", gt=0)
    batch_size: int = Opt(16, "Sequences per worker per micro-batch.", ge=1)
    max_seq_len: int = Opt(256, "Tokens per sequence (special tokens included); longer documents are cut.", ge=16)
    doc_stride: int = Opt(0, "Tokens shared by consecutive sequences of a long document.", ge=0)
    mask_prob: float = Opt(0.15, "Share of tokens masked (80% [MASK], 10% random, 10% kept).", gt=0, lt=1)
    whole_word: bool = Opt(False, "Mask whole words (every token of a chosen word) rather than single tokens.")
    masking: Literal["random", "domain"] = Opt(
        "random",
        "random: every token alike; domain: tokens by their idf over the documents (the domain's keywords more often).",
    )
    heldout_share: float = Opt(
        0.05, "Share of the documents held out (by id) to measure masked-LM loss before and after.", gt=0, lt=1
    )
    heldout_sequences: int = Opt(256, "At most this many held-out sequences are scored.", ge=1)

    @model_validator(mode="after")
    def _stride_fits(self):
        if self.doc_stride >= self.max_seq_len - 2:
            raise ValueError(f"doc_stride {self.doc_stride} must be below max_seq_len - 2 ({self.max_seq_len - 2})")
        if self.masking == "domain" and self.whole_word:
            raise ValueError("masking 'domain' chooses single tokens; set whole_word false, or masking 'random'")
        return self


class DistillConfig(TrainSettings):
    labels: str = Uri(help="Soft-label output URI of `qadist label`.")
    student: str = Model(help="Student model name or path (an initialisation).")
    temperature: float = Opt(2.0, "Softmax temperature T of the KD loss.", gt=0)
    alpha_kd: float = Opt(1.0, "Weight of the KD loss.", ge=0)
    alpha_hard: float = Opt(0.0, "Weight of the gold-label loss (windows with gold labels only).", ge=0)
    train_file: str | None = Uri(None, "Gold-labelled pairs mixed into training.")
    generation: int | None = Opt(
        None,
        "Read only this generation of the label table (`qadist label` commits one per new input); default: all.",
        ge=1,
    )


class FinetuneConfig(TrainSettings):
    train_file: str = Uri(help="Labelled pairs or SQuAD JSON.")
    model: str = Model(help="Model to fine-tune (e.g. a distilled student's <out>/final).")
    epochs: float = Opt(3.0, "Passes over the labelled windows.", gt=0)


class AnswerSettings(WindowSettings):
    """How a model answers: batching, post-processing, device (shared by predict and evaluate)."""

    batch_size: int = Opt(64, "Windows per forward pass.", ge=1)
    n_best: int = Opt(20, "Start/end candidates considered per window.", ge=1)
    max_answer_len: int = Opt(30, "Longest answer, in tokens.", ge=1)
    null_threshold: float = Opt(0.0, "Answer '' when the null score minus the best span score exceeds this.")
    use_gpu: bool | None = Opt(None, "GPU or CPU (default: a GPU when there is one).", flag="--use-gpu/--cpu")
    precision: Precision = Opt("auto", PRECISION_HELP)
    trust_remote_code: bool = Opt(False, "Run code shipped in a model folder.")


class PredictConfig(AnswerSettings):
    model: str = Model(help="QA model folder or name.")
    data: str = Uri(help="SQuAD JSON, JSONL or Parquet pairs.")
    out: str = Uri(help="predictions.json to write (id -> answer text).")
    na_probs: str | None = Uri(None, "na_probs.json to write (id -> no-answer probability).")


class EvaluateConfig(AnswerSettings):
    data: str = Uri(help="Gold SQuAD JSON or pairs with answers.")
    model: str | None = Model(
        None, "A model to answer `data` first (predict and score in one); else --predictions is read."
    )
    predictions: str | None = Uri(None, "predictions.json: read, or written when --model is given.")
    na_probs: str | None = Uri(None, "na_probs.json: read, or written when --model is given.")
    na_prob_thresh: float = Opt(1.0, "No-answer probability above which a prediction counts as no answer.")
    out: str | None = Uri(None, "Write the metrics JSON here too.")

    @model_validator(mode="after")
    def _predictions_or_model(self):
        if self.model is None and self.predictions is None:
            raise ValueError("give --predictions (a predictions.json) or --model (to predict first)")
        return self


class ExportConfig(AnswerSettings):
    model: str = Model(help="QA model folder to export (e.g. a distilled student's <out>/final).")
    out: str = Uri(help="Folder for the ONNX graph(s), tokenizer, qadist_config.json and export_report.json.")
    int8: bool = Opt(False, "Also write an ONNX Runtime dynamic-int8 graph and serve it (needs --eval-file).")
    eval_file: str | None = Uri(None, "Gold SQuAD JSON or pairs with answers: exported and PyTorch models scored.")
    max_f1_loss: float = Opt(1.0, "An int8 graph losing more F1 than this against PyTorch is refused.", ge=0)
    speed_questions: int = Opt(256, "Questions of the eval file timed for answers/s (interleaved repeats).", ge=1)
    opset: int = Opt(17, "ONNX opset of the exported graph.", ge=13)
    overwrite: bool = Opt(False, "Replace an existing export in --out.")

    @model_validator(mode="after")
    def _int8_is_checked(self):
        if self.int8 and not self.eval_file:
            raise ValueError("--int8 needs --eval-file: an int8 graph is served only after its F1 is checked")
        return self


class ServeConfig(AnswerSettings):
    model: str | None = Model(None, "QA model folder or exported folder (qadist export) to serve (or --registry).")
    registry: str | None = Uri(
        None, "Model registry (qadist promote): serve its current version and follow it without a restart."
    )
    registry_poll_s: float = Opt(5.0, "How often each replica looks for a new current version (with --registry).", gt=0)
    log_questions: str | None = Uri(
        None, "Question log URI: answered questions as JSONL parts under URI/date=YYYY-MM-DD/ (qadist pairs reads it)."
    )
    log_contexts: bool = Opt(True, "Keep each request's context in the question log (--no-log-contexts: keep it out).")
    log_roll_rows: int = Opt(10_000, "Rows per question-log part file at most.", ge=1)
    log_roll_s: float = Opt(60.0, "Seconds a question-log part stays open at most (what a crash can lose).", gt=0)
    log_buffer_rows: int = Opt(
        10_000, "Rows waiting to be written at most; beyond, rows are dropped and counted.", ge=1
    )
    documents: str | None = Uri(
        None, "Documents URI (JSONL/Parquet: id, text): questions without a context are matched to them."
    )
    encoder: str = Model(
        "packaged:all-MiniLM-L6-v2", "Sentence-embedding model that matches questions to passages (with --documents)."
    )
    top_k: int = Opt(3, "Passages answered per question (with --documents); the best answer wins.", ge=1)
    host: str = Opt("127.0.0.1", "Address the HTTP proxy listens on (0.0.0.0: every interface).")
    port: int = Opt(8000, "HTTP port.", ge=1, le=65535)
    replicas: int = Opt(1, "Model replicas (each a Ray actor holding the model).", ge=1)
    num_cpus_per_replica: float = Opt(1.0, "CPUs reserved per replica (torch threads on CPU).", gt=0)
    num_gpus_per_replica: float = Opt(0.0, "GPUs per replica (fractions allowed).", ge=0)
    resources_per_replica: Resources = Opt(
        {}, RESOURCES_HELP.format(unit="replica", example="qadist_cpu=1"), flag="--resource"
    )
    max_batch_size: int = Opt(16, "Questions batched into one forward pass at most.", ge=1)
    batch_wait_ms: float = Opt(5.0, "How long a batch waits to fill before it runs.", ge=0)
    max_ongoing_requests: int = Opt(32, "Requests a replica works on at once.", ge=1)
    max_queued_requests: int = Opt(64, "Requests waiting for a replica; beyond this the service answers 503.", ge=0)
    max_context_chars: int = Opt(100_000, "Longer contexts get 413.", ge=1)
    max_batch_questions: int = Opt(256, "Questions in one /answer/batch request at most (413 beyond).", ge=1)

    @model_validator(mode="after")
    def _model_or_registry(self):
        if (self.model is None) == (self.registry is None):
            raise ValueError("give --model (a folder to serve) or --registry (serve its current version), one of them")
        return self


class PromoteConfig(AnswerSettings):
    candidate: str | None = Model(None, "The candidate model folder (e.g. the daily job's <out>/final).")
    registry: str = Uri(help="Model registry: a folder or s3:// prefix, or mlflow://HOST:PORT/MODEL_NAME.")
    eval_file: str | None = Uri(None, "Gold SQuAD JSON or pairs with answers: F1 of candidate and current.")
    silver_file: str | None = Uri(
        None, "Held-out logged pairs whose 'answers' are the teacher ensemble's: agreement (F1) with the teachers."
    )
    min_gain: float = Opt(
        0.0, "F1 points the candidate must gain over current on each figure (negative: the loss tolerated)."
    )
    rollback: bool = Opt(False, "Move current back to the version before it (no candidate, no evaluation).")
    day_metrics: str | None = Uri(None, "The day's metrics JSON (e.g. the evaluate stage's) logged with the verdict.")
    out: str | None = Uri(None, "Write the verdict JSON here too.")

    @model_validator(mode="after")
    def _candidate_or_rollback(self):
        if self.rollback and self.candidate:
            raise ValueError("--rollback takes no --candidate")
        if not self.rollback and not (self.candidate and self.eval_file):
            raise ValueError("give --candidate and --eval-file (or --rollback)")
        return self


class SelectConfig(StageConfig):
    labels: str = Uri(help="A finished `qadist label` output (its _manifest.json lists the shards).")
    budget: int = Opt(help="Pairs to pick for labelling.", ge=1)
    generation: int | None = Opt(
        None,
        "Read only this generation of the label table (`qadist label` commits one per new input); default: all.",
        ge=1,
    )
    out: str = Uri(help="Folder for selected.jsonl, the Label Studio tasks and labelling config, and the manifest.")
    strategy: Literal["disagreement", "entropy", "margin", "random"] = Opt(
        "margin",
        "What makes a pair worth a label (disagreement needs labels made with --keep-teacher-logits). The default"
        " ties random in docs/selection.md; entropy and disagreement each lost to it once.",
    )
    diversity: bool = Opt(False, "Skip questions that are near-duplicates of one already picked (sentence embeddings).")
    similarity: float = Opt(
        0.9, "Cosine similarity of two questions above which --diversity calls them duplicates.", gt=0, le=1
    )
    encoder: str = Model(
        "packaged:all-MiniLM-L6-v2", "Sentence-embedding model of --diversity (the pairing stage's default)."
    )
    exclude: str | None = Uri(
        None, "Pairs already labelled: ids one per line, JSONL/JSON rows with 'id', or a Label Studio export."
    )
    seed: int = Opt(0, "Seed of --strategy random.")
    overwrite: bool = Opt(False, "Replace an earlier selection in --out.")


class CompactConfig(StageConfig):
    labels: str = Uri(help="The `qadist label` table to compact (its output URI).")
    target_rows: int = Opt(20_000, "Windows per merged shard; shards under half of it are merged.", ge=2)
    keep_generations: int = Opt(
        30, "The newest generations whose own shards are never removed (--generation N reads them).", ge=0
    )
    retain_hours: float = Opt(
        24.0, "Replaced shards are removed only this long after the compaction that replaced them.", ge=0
    )
    min_rows: int = Opt(
        0,
        "Merge only once the small shards hold this many windows together (0: whenever two can merge); "
        "replaced files past retention then wait for that run. A daily pipeline sets it to target_rows, "
        "so it compacts once per target_rows new windows rather than every day.",
        ge=0,
    )


class DemoConfig(StageConfig):
    out: str = Uri("qadist-demo", "Folder (or s3:// URI) for every stage's artifacts.")
    quick: bool = Opt(False, "Every stage at a reduced size (about 3.5 minutes on 2 cores), as CI runs it.")
    seed: int = Opt(0, "Seed of the generated domain and of every model.")
    teacher_cache: str = Opt(
        "~/.cache/qadist/demo-models",
        "Folder where the trained teachers (and the pre-trained encoder, the self-distilled teacher) are kept "
        "by what made them (start, data, settings, version) and reused by later runs; '' to always train them.",
    )


Config = TypeVar("Config", bound=StageConfig)


def read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(storage.read_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({first_line(str(e))}); fix the file") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a YAML mapping of keys to values")
    return data


def stage_section(data: dict[str, Any], stage: str, path: str, sections: Collection[str] = ()) -> dict[str, Any]:
    """The stage's own keys: its section in a sectioned file, or the whole flat file. A file is
    sectioned when it maps `stage` or one of `sections` (every stage's name: `qadist.stages`) to keys."""
    if not any(isinstance(data.get(s), dict) for s in (stage, *sections)):
        return data
    section = data.get(stage) or {}
    if not isinstance(section, dict):
        raise UserError(f"{path}: section '{stage}' must be a mapping")
    return section


def flag_for(cls: type[StageConfig], name: str) -> str:
    """The command-line flag of a config key: `--<key with dashes>` unless the field names another
    (`teachers` -> `--teacher`, repeated); a `--x/--y` pair is given as its first spelling."""
    field = cls.model_fields.get(name)
    extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flag") or f"--{name.replace('_', '-')}").split("/")[0]


def describe_error(e: ValidationError, cls: type[StageConfig], source: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(config)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; valid keys are: {', '.join(cls.model_fields)}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'; set it in the config or with {flag_for(cls, key)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: key '{key}': {msg} (got {err.get('input')!r})" if err["loc"] else f"{source}: {msg}"


def load_config(
    cls: type[Config],
    stage: str,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    source: str | None = None,
    sections: Collection[str] = (),
) -> Config:
    """YAML (optional) + flags that were given (not None) -> a validated stage config (`source`
    names where the values came from in errors, when not the YAML file or the command line;
    `sections`: the names of a sectioned file's sections, `stage_section`)."""
    values: dict[str, Any] = {}
    if config_path:
        values.update(stage_section(read_yaml(config_path), stage, config_path, sections))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    source = source or config_path or "command line"
    try:
        return cls(**values)
    except ValidationError as e:
        raise UserError(describe_error(e, cls, source)) from e


def to_dict(cfg: StageConfig) -> dict[str, Any]:
    """The resolved config, for manifests and checkpoints (never holds credentials: URIs only)."""
    return cfg.model_dump(mode="json")
