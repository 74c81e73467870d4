"""All stages in order from one sectioned config, each skipped when its output is already complete.

A stage runs when its section is present in the config. "Complete" is what each stage commits
last: `_manifest.json` for pairs and label, `<out>/final/config.json` for pretrain, distill and finetune, the
metrics file for evaluate, `export_report.json` for export. So a second run of the same pipeline
does no work, and a run that stopped half way picks up at the first incomplete stage (which
resumes by itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from qadist import storage
from qadist.config import STAGE_CONFIGS, StageConfig, load_config, read_yaml
from qadist.errors import UserError
from qadist.outputs import manifest_uri

log = logging.getLogger(__name__)

ORDER = ("pretrain", "pairs", "label", "distill", "finetune", "predict", "evaluate", "export")


def completion_marker(stage: str, cfg: StageConfig) -> str:
    """The object whose existence means the stage finished."""
    if stage in ("pairs", "label"):
        return manifest_uri(cfg.out)
    if stage in ("pretrain", "distill", "finetune"):
        return storage.join(cfg.out, "final", "config.json")
    if stage == "predict":
        return cfg.out
    if stage == "evaluate":
        if not cfg.out:
            raise UserError("evaluate section: set 'out' (a metrics file) so the pipeline can tell when it is done")
        return cfg.out
    if stage == "export":
        return storage.join(cfg.out, "export_report.json")
    raise UserError(f"stage {stage!r} cannot run in a pipeline; use one of {', '.join(ORDER)}")


# Each stage's entry function, imported when the stage runs (a command loads only what it uses).
RUNNERS = {
    "pretrain": "qadist.train.pretrain:run_pretrain",
    "pairs": "qadist.pairs.stage:run_pairs",
    "label": "qadist.label.stage:run_label",
    "distill": "qadist.train.stage:run_distill",
    "finetune": "qadist.train.stage:run_finetune",
    "predict": "qadist.answer.predict:run_predict",
    "evaluate": "qadist.answer.evaluate:run_evaluate",
    "export": "qadist.answer.export:run_export",
    "serve": "qadist.answer.serve:run_serve",
    "select": "qadist.select.stage:run_select",
    "demo": "qadist.demo.run:run_demo",
}


def runner(stage: str) -> Callable[[StageConfig], object]:
    """The entry function of `stage`."""
    import importlib

    module, name = RUNNERS[stage].split(":")
    return getattr(importlib.import_module(module), name)


def run_pipeline(config_path: str) -> dict[str, str]:
    """Run every stage section of `config_path` in order; returns {stage: 'ran' | 'skipped'}."""
    data = read_yaml(config_path)
    unknown = [k for k in data if k not in ORDER]
    if unknown:
        raise UserError(
            f"{config_path}: unknown section '{unknown[0]}'; a pipeline config has sections {', '.join(ORDER)}"
        )
    stages = [s for s in ORDER if isinstance(data.get(s), dict)]
    if not stages:
        raise UserError(f"{config_path}: no stage sections; add at least one of {', '.join(ORDER)}")
    # Validate every section before any work starts.
    configs = {s: load_config(STAGE_CONFIGS[s], s, config_path) for s in stages}
    outcome: dict[str, str] = {}
    for stage in stages:
        marker = completion_marker(stage, configs[stage])
        if storage.exists(marker):
            print(f"qadist pipeline: {stage}: complete ({marker} exists), skipped", flush=True)
            outcome[stage] = "skipped"
            continue
        started = time.perf_counter()
        print(f"qadist pipeline: {stage}: running", flush=True)
        runner(stage)(configs[stage])
        print(f"qadist pipeline: {stage}: done in {time.perf_counter() - started:.1f}s", flush=True)
        outcome[stage] = "ran"
    if all(v == "skipped" for v in outcome.values()):
        print("qadist pipeline: nothing to do; every stage's output is complete", flush=True)
    return outcome
