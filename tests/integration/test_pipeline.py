"""`jobs/pipeline.py`: every stage in order; a second run on the same output does no work."""

from __future__ import annotations

import json

import pytest
import yaml

from qadist.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("ray_local")


def test_pipeline_twice_second_run_does_nothing(tmp_path, squad_pairs, tiny_models, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in squad_pairs[:120]) + "\n")
    out = tmp_path / "run"
    windows = {"max_seq_len": 128, "doc_stride": 32}
    config = {
        "label": {
            "pairs": str(pairs),
            "out": f"{out}/labels",
            "teachers": [tiny_models["teacher_a"], tiny_models["teacher_b"]],
            "rows_per_shard": 60,
            "batch_size": 32,
            **windows,
        },
        "distill": {
            "labels": f"{out}/labels",
            "student": tiny_models["student"],
            "out": f"{out}/student",
            "epochs": 1,
            "batch_size": 16,
            "checkpoint_every": 50,
            **windows,
        },
        "predict": {
            "model": f"{out}/student/final",
            "data": str(pairs),
            "out": f"{out}/predictions.json",
            "na_probs": f"{out}/na_probs.json",
            **windows,
        },
        "evaluate": {
            "data": str(pairs),
            "predictions": f"{out}/predictions.json",
            "na_probs": f"{out}/na_probs.json",
            "out": f"{out}/metrics.json",
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))

    first = run_pipeline(str(path))
    assert first == {"label": "ran", "distill": "ran", "predict": "ran", "evaluate": "ran"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["total"] == 120
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    capsys.readouterr()
    second = run_pipeline(str(path))
    assert set(second.values()) == {"skipped"}
    said = capsys.readouterr().out
    assert "nothing to do" in said and said.count("skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps, "the second run wrote nothing"


def test_pipeline_config_errors_name_the_section(tmp_path):
    from qadist.errors import UserError

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"lable": {"pairs": "x"}}))
    with pytest.raises(UserError, match="unknown section 'lable'"):
        run_pipeline(str(path))
    path.write_text(yaml.safe_dump({"label": {"pairs": "x", "out": "y", "teachers": ["t"], "bogus": 1}}))
    with pytest.raises(UserError, match="unknown key 'bogus'"):
        run_pipeline(str(path))
