"""The stage registry: every stage once, and everything that lists stages derives from it.

A stage is its name (the sub-command and the config section), its config model, its runner (a
"module:function" string, imported when the stage runs, so a command loads only what it uses), its
help text, and, for the stages `qadist pipeline` runs (in the order of `STAGES`), how a finished
output is recognised (a function here, or a "module:function" string for a rule that lives in the
stage's package: `compact`'s plans the compaction to tell). The CLI's commands, the config file's
sections, `pipeline.ORDER` and the completion checks come from here. Adding a stage: an entry here, its config model in
`qadist.config`, its own folder.

This module sits with the CLI and the pipeline, above the stages: it names their runners (and such
rules) as strings and never imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from qadist import storage
from qadist.config import (
    CompactConfig,
    DemoConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneConfig,
    LabelConfig,
    PairsConfig,
    PredictConfig,
    PretrainConfig,
    PromoteConfig,
    SelectConfig,
    ServeConfig,
    StageConfig,
)
from qadist.errors import UserError
from qadist.outputs import (
    claim_file,
    committed_generations,
    committed_inputs,
    committed_pair_files,
    pairs_output_of,
    read_view,
)
from qadist.rows import input_files

Finished = Callable[[StageConfig], str | None]


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[StageConfig]
    runner: str  # "module:function", imported when the stage runs
    help: str
    # Why its output is complete (it returns None: the stage must run); unset: not in a pipeline. A
    # "module:function" string when the rule lives in the stage's own package (imported when it is asked).
    finished: Finished | str | None = None
    claims: bool = False  # claims its output folder with `claim_file(name)`
    console: bool = True  # False: stdout is the command's result (evaluate's metrics JSON)

    @property
    def claim_file(self) -> str | None:
        return claim_file(self.name) if self.claims else None

    def entry(self) -> Callable[[StageConfig], object]:
        """The runner, imported now."""
        return imported(self.runner)

    def done(self, cfg: StageConfig) -> str | None:
        """Why this stage's output is complete for `cfg`, or None when it must run."""
        assert self.finished is not None, f"{self.name} is not a pipeline stage"
        rule = imported(self.finished) if isinstance(self.finished, str) else self.finished
        return rule(cfg)


def imported(name: str) -> Callable:
    """The function a "module:function" string names, imported now."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


# ---- how a finished output is recognised ------------------------------------------------------------


def written(*parts: str) -> Finished:
    """Complete when `<out>/<parts...>` exists (the file the stage writes last)."""

    def finished(cfg: StageConfig) -> str | None:
        marker = storage.join(cfg.out, *parts)
        return f"{marker} exists" if storage.exists(marker) else None

    return finished


def metrics_written(cfg: StageConfig) -> str | None:
    if not cfg.out:
        raise UserError("evaluate section: set 'out' (a metrics file) so the pipeline can tell when it is done")
    return written()(cfg)


def verdict_written(cfg: StageConfig) -> str | None:
    """promote's verdict file, written whether the candidate was promoted or refused."""
    if not cfg.out:
        raise UserError("promote section: set 'out' (the verdict file) so the pipeline can tell when it is done")
    return written()(cfg)


def generations_hold(key: str, flag: str) -> Finished:
    """For a stage that grows by generations: complete when a generation is committed and every
    input file under `cfg.<key>` is in one."""

    def finished(cfg: StageConfig) -> str | None:
        return None if new_input(cfg, getattr(cfg, key), flag) else "every input file is in a committed generation"

    return finished


def label_holds(cfg: StageConfig) -> str | None:
    """The label table is complete when a generation is committed and it holds every input file: from
    a `qadist pairs` output, every file its committed generations list (one listing and the pairs
    manifests after the newest one the table has seen); otherwise every file under --pairs."""
    view = read_view(cfg.out, details=False)  # inputs and pairs_through: no shard list
    if view is None:
        return None
    held = {i["uri"]: i["size"] for i in view.get("inputs") or []}
    root = pairs_output_of(cfg.pairs)
    if root is None:
        fresh = [f["uri"] for f in input_files(cfg.pairs, "--pairs") if held.get(f["uri"]) != f["size"]]
    else:
        files, _ = committed_pair_files(root, cfg.pairs, view.get("pairs_through") or 0)
        fresh = [f for f in files if f not in held]
    return None if fresh else "every input file is in a committed generation"


def new_input(cfg: StageConfig, source: str, flag: str) -> str | None:
    """Why a stage that grows by generations must run ('no generation yet', 'N new input file(s)'),
    or None when the committed generations hold every input file."""
    committed = committed_generations(cfg.out)
    if not committed:
        return "no generation committed yet"
    held = committed_inputs(committed)
    fresh = [f for f in input_files(source, flag) if held.get(f["uri"], (None,))[0] != f["size"]]
    return f"{len(fresh)} new or changed input file(s) under {source}" if fresh else None


# ---- the stages, in the pipeline's order ----------------------------------------------------------------

STAGES: tuple[Stage, ...] = (
    Stage(
        "pretrain",
        PretrainConfig,
        "qadist.train.pretrain:run_pretrain",
        "Continue an encoder's masked-LM training on the domain's documents (Ray Train) -> an initialisation "
        "for teachers and students.",
        finished=written("final", "config.json"),
        claims=True,
    ),
    Stage(
        "pairs",
        PairsConfig,
        "qadist.pairs.stage:run_pairs",
        "Match logged questions to documents with a bi-encoder -> question-document pairs.",
        finished=generations_hold("questions", "--questions"),
        claims=True,
    ),
    Stage(
        "label",
        LabelConfig,
        "qadist.label.stage:run_label",
        "Stream pairs through the teacher ensemble on Ray Data actors -> soft-label Parquet shards.",
        finished=label_holds,
        claims=True,
    ),
    Stage(
        "compact",
        CompactConfig,
        "qadist.label.compact:run_compact",
        "Rewrite a label table's many small generations into fewer, larger shards as one committed snapshot; "
        "remove replaced shards past retention (--keep-generations, --retain-hours).",
        # complete while nothing is due: no merge (under --min-rows windows in small shards), no file past retention
        finished="qadist.label.compact:compaction_done",
    ),
    Stage(
        "distill",
        DistillConfig,
        "qadist.train.stage:run_distill",
        "Train the student on the soft labels with Ray Train.",
        finished=written("final", "config.json"),
        claims=True,
    ),
    Stage(
        "finetune",
        FinetuneConfig,
        "qadist.train.stage:run_finetune",
        "Fine-tune on gold labels (the distill loop with a_kd = 0).",
        finished=written("final", "config.json"),
        claims=True,
    ),
    Stage(
        "predict",
        PredictConfig,
        "qadist.answer.predict:run_predict",
        "Answer questions with a QA model (batched; CPU or GPU).",
        finished=written(),
    ),
    Stage(
        "evaluate",
        EvaluateConfig,
        "qadist.answer.evaluate:run_evaluate",
        "Score predictions with the official SQuAD 2.0 metric; with --model, predict first "
        "(on a GPU worker with --use-gpu).",
        finished=metrics_written,
        console=False,
    ),
    Stage(
        "export",
        ExportConfig,
        "qadist.answer.export:run_export",
        "A QA model as ONNX (and ONNX Runtime int8 with --int8), scored against PyTorch on --eval-file.",
        finished=written("export_report.json"),
        claims=True,
    ),
    Stage(
        "promote",
        PromoteConfig,
        "qadist.loop.promote:run_promote",
        "Compare a candidate with the registry's current model on gold (and silver) answers; promote it only when "
        "it is not worse (exit 4 when refused); --rollback moves current back.",
        finished=verdict_written,
    ),
    Stage(
        "serve",
        ServeConfig,
        "qadist.answer.serve:run_serve",
        "Serve a QA model over HTTP (Ray Serve, FastAPI, dynamic batching).",
    ),
    Stage(
        "select",
        SelectConfig,
        "qadist.select.stage:run_select",
        "Rank labelled pairs by what a human label would teach (teacher disagreement, uncertainty) -> "
        "a ranked JSONL and Label Studio tasks with the ensemble's answer pre-filled.",
        claims=True,
    ),
    Stage(
        "demo",
        DemoConfig,
        "qadist.demo.run:run_demo",
        "The whole pipeline, embedded and offline on a CPU, with a results table.",
        claims=True,
    ),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
SECTIONS: tuple[str, ...] = tuple(BY_NAME)  # the sections a config file may have
STAGE_CONFIGS: dict[str, type[StageConfig]] = {s.name: s.config for s in STAGES}
PIPELINE: tuple[Stage, ...] = tuple(s for s in STAGES if s.finished is not None)
