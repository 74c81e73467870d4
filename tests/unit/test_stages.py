"""The stage registry (`qadist.stages`): the CLI, the config sections and the pipeline all come from it."""

from __future__ import annotations

import importlib.util

from qadist import pipeline, stages
from qadist.config import load_config


def test_every_stage_is_a_command_a_config_section_and_a_runner():
    from qadist.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for stage in stages.STAGES:
        assert stage.name in commands and stage.name in stages.SECTIONS
        module, function = stage.runner.split(":")
        assert importlib.util.find_spec(module) is not None and function.startswith("run_")
    assert commands - set(stages.BY_NAME) == {"pipeline", "tiny-model"}


def test_the_pipeline_order_and_runners_come_from_the_registry():
    assert pipeline.ORDER == (
        "pretrain", "pairs", "label", "compact", "distill", "finetune", "predict", "evaluate", "export", "promote"
    )  # fmt: skip
    assert pipeline.RUNNERS["select"] == "qadist.select.stage:run_select"
    assert all(stages.BY_NAME[s].finished is not None for s in pipeline.ORDER)


def test_claim_files_follow_one_scheme():
    claimed = {s.name: s.claim_file for s in stages.STAGES if s.claims}
    assert claimed["label"] == "_qadist_label.json" and claimed["distill"] == "_qadist_distill.json"
    assert stages.BY_NAME["predict"].claim_file is None


def test_a_select_section_is_a_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("select:\n  labels: l\n  out: o\n  budget: 3\npredict:\n  model: m\n  data: d\n  out: p\n")
    cfg = load_config(stages.STAGE_CONFIGS["predict"], "predict", str(path), sections=stages.SECTIONS)
    assert cfg.model == "m"


def test_the_daily_config_compacts_right_after_label_and_validates_as_the_pipeline_reads_it():
    from pathlib import Path

    from qadist.config import read_yaml

    path = str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "daily.yaml")
    data = read_yaml(path)
    assert [s for s in pipeline.ORDER if isinstance(data.get(s), dict)] == [
        "pairs", "label", "compact", "distill", "predict", "evaluate", "promote"
    ]  # fmt: skip
    configs = {s: pipeline.stage_config(s, data, path, look=False) for s in pipeline.ORDER if s in data}
    assert configs["compact"].labels == configs["label"].out == configs["distill"].labels
    assert configs["compact"].min_rows == configs["compact"].target_rows  # not every day
