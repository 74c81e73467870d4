"""A node removed mid-run (`ray.cluster_utils.Cluster`, three raylets on 127.0.0.1), with and without
a replacement: the label run completes with every pair exactly once, or fails within the limit with
a clear error; it never hangs. The cluster runs in a child process (label_node_loss_run.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from qadist.shards import read_manifest, read_shard

HERE = Path(__file__).resolve().parent
DEADLINE_S = 360  # the child's own limit for the run
LIMIT_S = 480  # the child process's wall-clock limit (then its whole process group is killed)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replace", "no-replace"])
def test_label_survives_losing_a_node(tmp_path, squad_pairs, tiny_models, mode):
    from test_label import _kill_group

    pairs = [{"id": p["id"], "question": p["question"], "context": p["context"]} for p in squad_pairs[:300]]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="qr-"), RAY_ADDRESS="")
    logs = (tmp_path / "stdout.txt", tmp_path / "stderr.txt")
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "label_node_loss_run.py"),
                str(tmp_path),
                str(tmp_path / "pairs.jsonl"),
                tiny_models["teacher_a"],
                mode,
                str(DEADLINE_S),
            ],
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(proc.pid)
    out, err = logs[0].read_text(), logs[1].read_text()
    print("\n" + "\n".join(line for line in err.splitlines() if line.startswith("[")))
    lines = [line for line in out.splitlines() if line.startswith("NODELOSS ")]
    assert lines, f"no report (exit {proc.returncode}): {out[-2000:]} {err[-4000:]}"
    seen = json.loads(lines[-1].removeprefix("NODELOSS "))
    print(f"\n{mode}: " + json.dumps({k: v for k, v in seen.items() if k != "traceback"}))
    assert proc.returncode != 4, f"still running at the {DEADLINE_S}s deadline (a hang): {err[-3000:]}"
    assert set(seen["node_ips"]) == {"127.0.0.1"} and seen["gcs_address"].startswith("127.0.0.1:")
    assert seen["nodes_before"] == 3 and "removed_at_s" in seen, "the node was removed while the run was going"
    if proc.returncode == 3:  # a clean failure: the error is named and nothing was committed
        assert seen["error"] and not (tmp_path / "labels" / "_manifest.json").exists()
        pytest.fail(f"the run failed cleanly within the limit but did not complete: {seen['error']}")
    assert proc.returncode == 0, err[-3000:]
    manifest = read_manifest(str(tmp_path / "labels"))
    table = pa.concat_tables(
        [read_shard(str(tmp_path / "labels" / s["path"]), ["id", "window"]) for s in manifest["shards"]]
    )
    keys = list(zip(table.column("id").to_pylist(), table.column("window").to_pylist()))
    assert len(keys) == len(set(keys)) == manifest["counts"]["windows"]
    assert {i for i, w in keys if w == 0} == {p["id"] for p in pairs} and manifest["counts"]["pairs_labeled"] == len(
        pairs
    )
    assert sorted(p.name for p in (tmp_path / "labels" / "shards").glob("*.parquet")) == sorted(
        s["path"].split("/")[1] for s in manifest["shards"]
    )
