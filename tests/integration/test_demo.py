"""`qadist demo` end to end through the real CLI (a subprocess with its own embedded Ray).

The quick size (in the default run, about 3.5 minutes on 2 cores) runs every stage at a reduced
size: its teachers train for 40 steps on 320 of the other shops' labels, enough to learn when a
page does not answer but not yet where answers are (the full size trains each teacher on 2,000,
250 steps of 16). It checks the table's shape, the artifacts, the progress output and that the
student distilled without labels beats the same student trained on the 200 store labels alone
(which has not learned to abstain). The full-size demo (slow) checks every claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROW_KEYS = ["teacher_a", "teacher_b", "ensemble", "ood_student", "distilled", "labels_only_200", "distilled_ft_200"]
COLUMNS = [
    "model",
    "trained with",
    "layers",
    "store labels used",
    "EM",
    "F1",
    "F1 other shops",
    "HasAns F1",
    "NoAns F1",
    "params (M)",
    "size (MB)",
    "ms/question (batch 1)",
    "answers/s (batch 64)",
    "speed vs teacher",
    "FLOPs vs teacher",
]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "QADIST_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qadist.cli",
            "demo",
            "--quick",
            "--out",
            str(out),
            "--teacher-cache",
            str(out.parent / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_quick_demo_writes_the_table_plot_and_artifacts(quick_demo):
    out, proc = quick_demo
    result = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in result["rows"]] == ROW_KEYS
    for row in result["rows"]:
        for key in ("exact", "f1", "HasAns_f1", "NoAns_f1"):
            assert 0.0 <= row[key] <= 100.0, (row["key"], key)
        assert row["params"] > 0 and row["megabytes"] > 0 and row["answers_per_s"] > 0 and row["latency_ms"] > 0
    by_arch: dict[str, set] = {}
    for row in result["rows"]:  # speed is per architecture: one figure for every row of one
        by_arch.setdefault(row["architecture"], set()).add((row["answers_per_s"], row["latency_ms"]))
    assert set(by_arch) == {"MiniLM-L6", "2xMiniLM-L6", "MiniLM-L2"} and all(len(v) == 1 for v in by_arch.values())
    assert (
        result["speed_by_architecture"]["MiniLM-L2"]["flops_per_window"]
        < result["speed_by_architecture"]["MiniLM-L6"]["flops_per_window"]
    )
    md = (out / "results.md").read_text()
    header = md.splitlines()[2]
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) >= 1 + len(ROW_KEYS)
    assert (out / "f1_vs_labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["curve"]) == {"store labels only", "distilled on the store's logs, then fine-tuned"}
    # The teachers (and the student on their labels) are also scored where they learned.
    home = {r["key"]: r["other_shops_f1"] for r in result["rows"]}
    assert all(home[k] is not None for k in ("teacher_a", "teacher_b", "ensemble", "ood_student"))
    assert home["distilled"] is None
    # Each stage's artifacts stay for the user to inspect.
    assert (out / "pairs" / "_manifest.json").exists() and (out / "labels" / "_manifest.json").exists()
    assert (out / "models" / "student-distilled" / "final" / "config.json").exists()
    # Both teachers kept for later runs, each under the key of what made it.
    assert len([p for p in (out.parent / "cache").iterdir() if (p / "config.json").exists()]) == 2
    assert proc.stdout.count("not in the teacher cache: trained now, then kept for later runs") == 2
    # Progress: every stage's time and the total on the console.
    for stage in ("teacher A", "pairs:", "label:", "distill:", "evaluate"):
        assert f"=== demo: {stage}" in proc.stdout
    assert "total" in proc.stdout and result["total_seconds"] > 0
    # Worker lines reach the log file once each (Ray Train's print patch, off, would write them twice):
    # one timings line per training run (2 teachers, distilled, the baseline, 200 labels twice).
    assert (out.parent / f"{out.name}.log").read_text().count("worker timings: setup") == 6
    # The student is smaller and answers faster than a teacher (model size is exact; speed on 200
    # answers is measured, but a 2-layer student computes a third of a 6-layer teacher).
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["distilled"]["params"] < rows["teacher_a"]["params"]
    print(
        "\n"
        + "\n".join(
            f"{r['key']}: F1 {r['f1']:.1f} (HasAns {r['HasAns_f1']:.1f}, NoAns {r['NoAns_f1']:.1f})"
            for r in result["rows"]
        )
    )
    # Distillation moved what the teachers know into the student, with no labels.
    assert rows["distilled"]["f1"] > rows["labels_only_200"]["f1"], (
        rows["distilled"]["f1"],
        rows["labels_only_200"]["f1"],
    )


@pytest.mark.slow
def test_full_demo_shows_the_claims(tmp_path):
    """The full-size demo (14.8 minutes on 2 quiet cores with the teacher-side models cached; this
    test starts with an empty cache: 34 to 40 minutes): every claim the 3-seed tuning shows holds."""
    out = tmp_path / "full"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "QADIST_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "qadist.cli", "demo", "--out", str(out), "--teacher-cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=3600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "results.json").read_text())
    # Every check that benchmarks/demo_tuning.py's 3 seeds show beyond their spread (docs/demo.md,
    # "Tuning"); the pre-trained teachers tie the plain ones there, so one run may go either way.
    ties = ("pre-training the teachers",)
    failed = [c["claim"] for c in result["checks"] if not c["holds"] and not c["claim"].startswith(ties)]
    assert not failed, failed
    assert any(c["claim"].startswith(ties) for c in result["checks"])  # shown, not asserted


ALL_ROWS = """
import dataclasses, sys
from qadist.config import DemoConfig
from qadist.demo import plan, run
from qadist.demo.plan import QUICK, Train

every_row = dataclasses.replace(
    QUICK,
    labels_only={50: Train(1.0, 1e-4, min_steps=4), 200: QUICK.labels_only[200]},
    finetune={50: Train(1.0, 3e-5, min_steps=4), 200: QUICK.finetune[200]},
    ood_finetune={50: Train(1.0, 3e-5, min_steps=4), 200: Train(1.0, 3e-5, min_steps=4)},
    self_distill=Train(0.2, 1e-4),
    pretrain={"epochs": 0.2, "head_warmup_steps": 4, "max_seq_len": 64},
)
run.demo_plan = lambda cfg: every_row
run.run_demo(DemoConfig(out=sys.argv[1], quick=True, teacher_cache=sys.argv[2]))
"""


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_every_row_of_the_full_plan_runs_at_the_quick_size(tmp_path):
    """The full demo's rows the quick one leaves out (the 50-label point, the student on the teachers'
    labels fine-tuned, self-distillation, the teachers pre-trained on the pages) through the same
    code, at the quick size; every teacher-side model (teachers, pre-trained encoder, self-distilled)
    kept in the cache."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "QADIST_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", ALL_ROWS, str(tmp_path / "run"), str(cache)],
        capture_output=True, text=True, timeout=2400, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    keys = [r["key"] for r in result["rows"]]
    for key in ("pretrained_a", "pretrained_b", "pretrained_ensemble", "self_distilled", "ood_ft_200"):
        assert key in keys, keys
    assert set(result["curve"]["trained on the other shops' labels, then fine-tuned"]) == {"0", "50", "200"}
    claims = " ".join(c["claim"] for c in result["checks"])
    assert "self-distillation beats its teacher" in claims and "pre-training the teachers" in claims
    # teachers A and B, the pre-trained encoder, its teachers A and B, the self-distilled teacher
    assert len(list(cache.iterdir())) == 6
