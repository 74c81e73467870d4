"""Real model sizes on the CPU (slow): no code path may assume a tiny model.

An ALBERT-xxlarge-shaped teacher (the real configuration, random weights, vocabulary 30000, the
sample's Unigram tokenizer) labels a few SQuAD-sample pairs at --max-seq-len 384 through the real
`qadist label` CLI; an albert-base-v2-shaped student distils a few steps from those labels through
`qadist distill` and is exported to ONNX by `qadist export`. Each command runs as a user runs it,
in a subprocess with its own embedded Ray, in its own session.

Memory: the peak, over the run, of the summed RSS of every process of the command's session (the
CLI's driver, its raylet and Ray workers, the teacher actor included), sampled every 0.2 s from
/proc; shared pages (Ray's object store) count once per process that maps them, so the sum is an
upper bound. Beside it, the manifest's own figures: the teacher actor's and the driver's peak RSS
(VmHWM, read inside those processes). Printed (pytest -s) and written to `real_sizes.json` in the
test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_label import _kill_group

pytestmark = pytest.mark.slow
N_PAIRS = 6


def session_rss_mb(sid: int) -> float:
    """Summed RSS (MiB) of the live processes of session `sid`."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != sid:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total / 1024


def run_measured(argv: list[str], timeout: float = 1500) -> dict:
    """`qadist ARGV` in its own session: exit code, output, wall seconds, peak summed RSS of the session."""
    env = dict(os.environ, RAY_ADDRESS="", RAY_TMPDIR=tempfile.mkdtemp(prefix="qz-"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "qadist.cli", *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], session_rss_mb(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
        _kill_group(proc.pid)
    return {
        "code": proc.returncode,
        "out": out,
        "err": err,
        "seconds": time.perf_counter() - started,
        "peak_session_rss_mb": peak[0],
    }


def test_xxlarge_teacher_labels_and_base_student_distils_and_exports(tmp_path, squad_pairs, albert_tokenizer):
    from qadist.models import albert_config, build_model_from_config
    from qadist.shards import read_manifest

    figures: dict = {}
    tokenizer = albert_tokenizer
    started = time.perf_counter()
    teacher = build_model_from_config(albert_config("albert-xxlarge-v2"), tmp_path / "teacher", tokenizer, seed=1)
    student = build_model_from_config(albert_config("albert-base-v2"), tmp_path / "student", tokenizer, seed=2)
    figures["build_and_save_s"] = round(time.perf_counter() - started, 1)
    weights = sum(f.stat().st_size for f in Path(teacher).glob("*.safetensors"))
    figures["teacher_weights_mb"] = round(weights / 2**20)
    assert weights > 700 * 2**20  # ~206M fp32 parameters (785 MiB): the real size, not a tiny model

    pairs = tmp_path / "pairs.jsonl"
    picked = squad_pairs[:N_PAIRS]
    pairs.write_text("".join(json.dumps(p) + "\n" for p in picked))
    labels = tmp_path / "labels"
    run = run_measured(
        ["label", "--pairs", str(pairs), "--out", str(labels), "--teacher", teacher, "--max-seq-len", "384",
         "--doc-stride", "128", "--batch-size", "4"]
    )  # fmt: skip
    assert run["code"] == 0, run["err"][-3000:]
    manifest = read_manifest(str(labels))
    counts, stats = manifest["counts"], manifest["run"]
    assert counts["pairs_in"] == counts["pairs_labeled"] == N_PAIRS and counts["windows"] >= N_PAIRS
    windows = counts["windows"]
    figures["label"] = {
        "pairs": N_PAIRS,
        "windows": windows,
        "wall_s": round(run["seconds"], 1),
        "teacher_s_per_window": round(stats["teacher_seconds"] / windows, 2),
        "wall_s_per_window": round(run["seconds"] / windows, 2),
        "peak_session_rss_mb": round(run["peak_session_rss_mb"]),
        "teacher_actor_peak_rss_mb": round(stats["teacher_rss_mb"]),
        "driver_peak_rss_mb": round(stats["driver_rss_mb"]),
        "real_tokens_per_window": round(stats["real_tokens"] / windows, 1),
    }
    assert stats["teacher_rss_mb"] > weights / 2**20  # the actor held the real model

    distilled = tmp_path / "student-distilled"
    run = run_measured(
        ["distill", "--labels", str(labels), "--student", student, "--out", str(distilled), "--epochs", "1",
         "--batch-size", "2", "--grad-accum", "2", "--max-seq-len", "384", "--doc-stride", "128"]
    )  # fmt: skip
    assert run["code"] == 0, run["err"][-3000:]
    log = Path(f"{distilled}.log").read_text() if Path(f"{distilled}.log").exists() else run["out"] + run["err"]
    timing = re.search(r"worker timings: setup ([\d.]+)s, (\d+) steps ([\d.]+)s", log)
    assert timing, log[-3000:]
    steps, steps_s = int(timing.group(2)), float(timing.group(3))
    assert steps >= 1
    figures["distill"] = {
        "steps": steps,
        "windows_per_step": 4,
        "s_per_step": round(steps_s / steps, 2),
        "worker_setup_s": float(timing.group(1)),
        "wall_s": round(run["seconds"], 1),
        "peak_session_rss_mb": round(run["peak_session_rss_mb"]),
    }
    final = distilled / "final"
    assert (final / "config.json").exists()
    assert json.loads((final / "config.json").read_text())["hidden_size"] == 768

    exported = tmp_path / "student-onnx"
    run = run_measured(["export", "--model", str(final), "--out", str(exported), "--max-seq-len", "384"])
    assert run["code"] == 0, run["err"][-3000:]
    assert (exported / "model.onnx").exists() and (exported / "export_report.json").exists()
    figures["export"] = {
        "wall_s": round(run["seconds"], 1),
        "onnx_mb": round((exported / "model.onnx").stat().st_size / 2**20),
        "peak_session_rss_mb": round(run["peak_session_rss_mb"]),
    }

    (tmp_path / "real_sizes.json").write_text(json.dumps(figures, indent=2))
    print(f"\n[real sizes, CPU, {os.cpu_count()} cores] {json.dumps(figures, indent=2)}")
