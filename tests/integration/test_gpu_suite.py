"""`benchmarks/gpu_suite.py` at tiny sizes on the CPU: the command a GPU machine will run once.

It runs as a user runs it (a subprocess with its own embedded Ray and Ray Serve, in its own
session so that everything it started ends with it) and must print a table with every row and a
number in each; no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_label import _kill_group

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_suite.py"


def load_suite():
    if str(SCRIPT.parent) not in sys.path:  # as when run as a script: its helpers beside it
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 20 s or more on the 2-core CI machine: run before resolving (pytest -m slow)
def test_gpu_suite_tiny_prints_every_row_with_a_number(tmp_path):
    suite = load_suite()
    out, figures = tmp_path / "suite.md", tmp_path / "suite.json"
    env = dict(os.environ, RAY_ADDRESS="", RAY_TMPDIR=tempfile.mkdtemp(prefix="qg-"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--peak-tflops", "1", "--out", str(out), "--json", str(figures)]
    cmd += ["--max-total-s", "240"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 0, stderr[-3000:]
    text = out.read_text()
    assert text in stdout
    assert "torch " in text and "transformers " in text and "TINY" in text and "device **CPU" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    table = {(p.strip(), m.strip()): (v.strip(), how.strip()) for p, m, v, how in rows[1:]}
    assert list(table) == suite.ROWS
    for (part, measure), (value, how) in table.items():
        assert re.fullmatch(r"[0-9][0-9,]*(\.[0-9]+)?(e-?[0-9]+)?%?", value), (part, measure, value)
        assert how, (part, measure)
    assert table[("serve", "errors")][0] == "0"
    assert "of 1 TFLOP/s (--peak-tflops)" in table[("label", "MFU")][1]
    for part in ("label", "distill", "serve"):  # each part's settings line
        assert f"- {part}: " in text
    assert '"label/windows/s"' in figures.read_text()


def test_gpu_suite_require_gpu_fails_at_once_without_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_suite().main(["--require-gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--require-gpu" in err[0] and "no CUDA device" in err[0]


def test_peak_table_matches_device_names():
    suite = load_suite()

    def peak(name: str) -> float | None:
        return next((t for pattern, _, t in suite.PEAKS if re.search(pattern, name)), None)

    assert peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H200") == 989.0
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA A10") == 125.0
    assert peak("NVIDIA A10G") is None  # no datasheet figure: --peak-tflops
    assert peak("NVIDIA L4") == 121.0 and peak("NVIDIA L40S") == 362.0
