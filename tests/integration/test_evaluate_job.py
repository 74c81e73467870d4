"""`jobs/evaluate.py` (= `qadist evaluate --model`): a model answers a labelled set, then the official metric."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qadist.cli import main

JOB = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_evaluate_with_a_model_predicts_and_scores(tmp_path, squad_pairs, tiny_models, ray_local, capsys):
    data = tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in squad_pairs[:40]))
    config = tmp_path / "eval.yaml"
    config.write_text("evaluate:\n  max_seq_len: 128\n  doc_stride: 32\n  batch_size: 16\n")
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(
        [
            "evaluate",
            "--config",
            str(config),
            "--model",
            tiny_models["student"],
            "--data",
            str(data),
            "--predictions",
            str(out / "predictions.json"),
            "--na-probs",
            str(out / "na_probs.json"),
            "--out",
            str(out / "metrics.json"),
        ],
        capsys,
    )
    assert code == 0
    predictions = json.loads((out / "predictions.json").read_text())
    na_probs = json.loads((out / "na_probs.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(predictions) == set(na_probs) == {p["id"] for p in squad_pairs[:40]}
    assert metrics["total"] == 40 and {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1"} <= set(metrics)
    assert json.loads(stdout) == metrics  # stdout is the metrics JSON alone


def test_the_job_is_the_cli_with_its_exit_code_and_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(JOB), "--data", str(tmp_path / "gold.jsonl")], capture_output=True, text=True, timeout=120
    )
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err
    assert "give --predictions (a predictions.json) or --model" in err
