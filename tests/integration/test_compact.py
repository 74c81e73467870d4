"""`qadist compact` under a SIGKILL: the CLI killed while its snapshot's PUT (the commit) is half sent
leaves a table that reads exactly as before; the same command run again completes, exactly once.

No teacher and no Ray: the table is synthetic (tests/table_factory.py), on moto's S3 server, with
the fault injected by tests/s3_faults.py. Bounded in time (a subprocess timeout per CLI call).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import s3_faults
from table_factory import all_ids, make_table

from qadist import storage
from qadist.outputs import read_view
from qadist.shards import read_shard, snapshot_paths

LIMIT_S = 120


def ids_read(out: str, generation: int | None = None) -> list[str]:
    return pa.concat_tables([read_shard(u, ["id"]) for u in snapshot_paths(out, generation)])["id"].to_pylist()


def compact(out: str) -> subprocess.Popen:
    args = ["compact", "--labels", out, "--target-rows", "400"]
    return subprocess.Popen([sys.executable, "-m", "qadist.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def test_a_compaction_killed_mid_commit_leaves_the_table_as_it_was_and_its_rerun_completes(s3_bucket, s3_server):
    out = f"{s3_bucket}/labels"
    make_table(out, 30, 40)  # snapshots 1..3 (every 10 generations), 30 shards of 40 windows
    before_view = read_view(out)
    before = ids_read(out)
    faults = s3_faults.install(s3_server)
    try:
        stall = faults.add("stall", method="PUT", path=r"/labels/_snapshot-000004\.json", seconds=LIMIT_S)
        proc = compact(out)
        assert stall.entered.wait(LIMIT_S), "the snapshot PUT never started"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI's own session: only this test's process
        proc.communicate(timeout=LIMIT_S)
    finally:
        faults.clear()
    merged = [k for k in storage.list_files(out) if "/compacted/" in k]
    view = read_view(out)
    print(f"\nkilled mid-commit: {len(merged)} merged shard(s) written, unlisted; snapshot {view['snapshot']}")
    assert merged and view["snapshot"] == before_view["snapshot"] == 3
    assert [s["path"] for s in view["shards"]] == [s["path"] for s in before_view["shards"]]
    assert ids_read(out) == before  # reads exactly as before: the same shards, in the same order

    proc = compact(out)
    _, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 0, err
    view = read_view(out)
    after = ids_read(out)
    print(f"re-run: snapshot {view['snapshot']}, {len(view['shards'])} shards (were {len(before_view['shards'])})")
    assert view["snapshot"] == 4 and all(s["path"].startswith("compacted/") for s in view["shards"])
    assert len(after) == len(set(after)) and set(after) == all_ids(30, 40)  # every pair exactly once
    assert sorted(ids_read(out, 7)) == sorted(f"d00007-{i:06d}" for i in range(40))  # still addressable
    assert {s["path"] for s in view["shards"]} <= {k[len(out) + 1 :] for k in storage.list_files(out)}
