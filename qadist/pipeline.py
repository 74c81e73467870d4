"""All stages in order from one sectioned config, each skipped when its output is already complete.

A stage runs when its section is present in the config. "Complete" is what each stage commits last
(`finished` in `qadist.stages`): `<out>/final/config.json` for pretrain, distill and finetune, the
metrics file for evaluate, `export_report.json` for export; pairs and label grow by generations, so
they are complete when a generation is committed and no input file is new; compact is complete while
a compaction would merge or remove nothing (`qadist.label.compact.compaction_done`). So a second run
of the same pipeline does no work, and a run that stopped half way picks up at the first incomplete
stage (which resumes by itself).

A daily job (jobs/configs/daily.yaml): new logged questions -> a new pairs generation -> a new label
generation -> a student distilled on it, continuing from the previous one. Two things make that one
config: `{generation}` and `{previous_generation}` in any string of any section are the label
output's newest committed generation number and the one before (resolved when the stage runs, so
after `label` they count its new generation), and a distill section's `continue_from` (a student
folder, usually with `{previous_generation}` in it) replaces `student` when that folder holds a
finished model; from generation 2 on, a missing one is an error rather than a fresh start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from qadist import storage
from qadist.config import StageConfig, load_config, read_yaml
from qadist.errors import UserError
from qadist.outputs import read_view
from qadist.stages import BY_NAME, PIPELINE, STAGES

log = logging.getLogger(__name__)

ORDER = tuple(s.name for s in PIPELINE)  # the stages a pipeline runs, in order (`qadist.stages`)
RUNNERS = {s.name: s.runner for s in STAGES}  # each stage's entry function, "module:function"


def runner(stage: str) -> Callable[[StageConfig], object]:
    """The entry function of `stage`, imported now (a command loads only what it uses)."""
    return BY_NAME[stage].entry()


def newest_generation(data: dict) -> int:
    """The label output's newest committed generation (0 before the first)."""
    out = (data.get("label") or {}).get("out") or (data.get("distill") or {}).get("labels")
    view = read_view(out, details=False) if out else None  # its newest snapshot and the manifests after it
    return view["generation"] if view else 0


def resolve_section(stage: str, section: dict, generation: int, look: bool = True) -> dict:
    """`{generation}` / `{previous_generation}` filled in; a distill `continue_from` that holds a
    finished model becomes its `student` (`look` False: only taken out, nothing read)."""

    def fill(value):
        if isinstance(value, str):
            return value.replace("{generation}", str(generation)).replace("{previous_generation}", str(generation - 1))
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    resolved = {k: fill(v) for k, v in section.items()}
    start = resolved.pop("continue_from", None)
    if start is not None and stage != "distill":
        raise UserError(f"{stage} section: 'continue_from' is a distill key (the student to continue from)")
    if start is not None and look:
        if storage.exists(storage.join(start, "config.json")):
            resolved["student"] = start
        elif generation > 1:  # yesterday's student never finished: do not quietly start from scratch
            raise UserError(
                f"distill section: continue_from {start} holds no finished model, so generation {generation - 1}'s "
                "student never finished; finish it (re-run with generation and out set to it) or remove continue_from"
            )
    return resolved


def stage_config(stage: str, data: dict, config_path: str, look: bool = True) -> StageConfig:
    generation = max(newest_generation(data), 1) if look else 1  # 1 until label commits one
    section = resolve_section(stage, data[stage], generation, look)
    return load_config(BY_NAME[stage].config, stage, overrides=section, source=f"{config_path} ({stage} section)")


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
    for s in stages:  # validate every section before any work starts
        stage_config(s, data, config_path, look=False)
    outcome: dict[str, str] = {}
    for stage in stages:
        cfg = stage_config(stage, data, config_path)  # after the stages before it: their generation
        done = BY_NAME[stage].done(cfg)
        if done is not None:
            print(f"qadist pipeline: {stage}: complete ({done}), skipped", flush=True)
            outcome[stage] = "skipped"
            continue
        started = time.perf_counter()
        print(f"qadist pipeline: {stage}: running", flush=True)
        runner(stage)(cfg)
        print(f"qadist pipeline: {stage}: done in {time.perf_counter() - started:.1f}s", flush=True)
        outcome[stage] = "ran"
    if all(v == "skipped" for v in outcome.values()):
        print("qadist pipeline: nothing to do; every stage's output is complete", flush=True)
    return outcome
