"""`jobs/evaluate.py`: a model answers a labelled set as a Ray task, then the official metric."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

JOB = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"


def load_job():
    spec = importlib.util.spec_from_file_location("jobs_evaluate", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_job_predicts_on_ray_and_scores(tmp_path, squad_pairs, tiny_models, ray_local, capsys):
    data = tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in squad_pairs[:40]))
    config = tmp_path / "eval.yaml"
    config.write_text("predict:\n  max_seq_len: 128\n  doc_stride: 32\n  batch_size: 16\n")
    out = tmp_path / "eval"
    rc = load_job().main(["--config", str(config), "--model", tiny_models["student"], "--data", str(data), "--out", str(out)])
    assert rc == 0
    predictions = json.loads((out / "predictions.json").read_text())
    na_probs = json.loads((out / "na_probs.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(predictions) == set(na_probs) == {p["id"] for p in squad_pairs[:40]}
    assert metrics["total"] == 40 and {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1"} <= set(metrics)
    assert '"total": 40' in capsys.readouterr().out


def test_evaluate_job_without_a_model_is_a_one_line_error(tmp_path, capsys):
    rc = load_job().main(["--data", str(tmp_path / "gold.jsonl"), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "missing required key 'model'" in err
