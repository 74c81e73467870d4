"""Several nodes: label actors spread over three raylets, and a two-worker distill, one per node.

The cluster runs in a child process (it cannot share this process with the session's Ray).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
LIMIT_S = 540


@pytest.mark.slow
def test_label_and_distill_spread_over_three_nodes(tmp_path, squad_pairs, tiny_models):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in squad_pairs[:240]) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "multinode_run.py"),
            str(tmp_path / "run"),
            str(pairs),
            tiny_models["teacher_a"],
            tiny_models["teacher_b"],
            tiny_models["student"],
        ],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MULTINODE ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(lines[-1].removeprefix("MULTINODE "))
    print(json.dumps(seen, indent=1))
    assert len(seen["nodes"]) == 3
    assert seen["counts"]["pairs_in"] == 240 == seen["counts"]["pairs_labeled"]
    assert set(seen["label_shard_nodes"]) <= set(seen["nodes"])
    assert len(set(seen["label_shard_nodes"])) == 3, "teacher actors on every node"
    assert len(seen["train_worker_nodes"]) == 2 and len(set(seen["train_worker_nodes"])) == 2, (
        "one train worker per node"
    )
    assert Path(seen["final"], "config.json").exists()
