"""`qadist.label.commit.sweep`: removes what the committed manifest does not list, never a listed file, and
nothing a concurrent writer may still own (temporary files and multipart uploads younger than the run)."""

from __future__ import annotations

import os
import time

from qadist import storage
from qadist.label.commit import abort_multipart_uploads, sweep, unlisted_files
from qadist.leases import Lease

MANIFEST = {
    "shards": [{"path": "shards/a.r0-10.parquet"}, {"path": "shards/a.r10-20.parquet"}],
    "rejects": ["rejects/a.r0-10.jsonl"],
}


def test_sweep_local_keeps_listed_and_young_temporary_files(tmp_path):
    out = tmp_path / "labels"
    listed = [
        "shards/a.r0-10.parquet",
        "shards/a.r10-20.parquet",
        "rejects/a.r0-10.jsonl",
        "_manifest.json",
        "_qadist_label.json",
    ]
    stray = [
        "shards/a.r20-30.parquet",
        "shards/sub/b.parquet",
        "rejects/old.jsonl",
        "shards/.tmp-1-a.parquet",
        ".tmp-2",
    ]
    for rel in listed + stray + ["shards/.tmp-3-young.parquet"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(rel.encode())
    started = time.time()
    for rel in stray:  # written by an earlier run (a file of this run's own second is left alone: below)
        os.utime(out / rel, (started - 60, started - 60))
    os.utime(out / "shards/.tmp-3-young.parquet", (started + 60, started + 60))

    assert unlisted_files(str(out), MANIFEST, started) == sorted(str(out / rel) for rel in stray)
    result = sweep(str(out), MANIFEST, started)
    assert sorted(result["removed"]) == sorted(str(out / rel) for rel in stray) and result["aborted_uploads"] == 0
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted(listed + ["shards/.tmp-3-young.parquet"])
    assert sweep(str(out), MANIFEST, started)["removed"] == []  # idempotent


def test_sweep_s3_removes_unlisted_objects_and_aborts_old_uploads(s3_bucket):
    out = f"{s3_bucket}/labels"
    for rel in (
        "shards/a.r0-10.parquet",
        "shards/a.r10-20.parquet",
        "rejects/a.r0-10.jsonl",
        "_manifest.json",
        "shards/x.parquet",
    ):
        storage.write_bytes(f"{out}/{rel}", b"x")
    client = storage.s3_client()
    bucket, key = storage.split_s3(out)
    killed = client.create_multipart_upload(Bucket=bucket, Key=f"{key}/shards/killed.parquet")["UploadId"]
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin")  # outside the output: not ours
    initiated = client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"].timestamp()

    # moto stamps every upload with one fixed date: a run that started before it leaves the upload alone
    # (as it would a live writer's), one that started after it aborts it.
    assert abort_multipart_uploads(out, initiated - 1) == 0
    result = sweep(out, MANIFEST, time.time() + 1)  # a run that began in a later second than these writes
    assert result == {"removed": [f"{out}/shards/x.parquet"], "aborted_uploads": 1}
    uploads = {u["UploadId"]: u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert killed not in uploads and list(uploads.values()) == ["elsewhere/big.bin"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"])
    assert keys == sorted(
        f"{key}/{r}"
        for r in ("shards/a.r0-10.parquet", "shards/a.r10-20.parquet", "rejects/a.r0-10.jsonl", "_manifest.json")
    )  # no "folder/" marker objects either


def test_same_second_as_the_run_is_never_swept_on_s3(s3_bucket):
    """S3 stamps objects with whole seconds. A stray shard written 0.2 s after a run's lease, in the
    same second, carries a LastModified *before* the run's start time as the run's clock reads it: the
    old rule (`mtime < time.time() at start`) removed it, although a run that began after this one may
    own it. The sweep compares with the store's own time of the lease, in whole seconds: kept."""
    out = f"{s3_bucket}/labels"
    for rel in ("shards/a.r0-10.parquet", "shards/a.r10-20.parquet", "rejects/a.r0-10.jsonl", "_manifest.json"):
        storage.write_bytes(f"{out}/{rel}", b"x")
    storage.write_bytes(f"{out}/shards/old.parquet", b"x")  # an earlier run's leftover...
    time.sleep(1.1)  # ...from an earlier second
    while time.time() % 1 > 0.5:  # start early in a second, so the lease and the stray share it
        time.sleep(0.05)
    with Lease(out, "label") as lease:
        started = time.time()  # this run's start on its own clock (what the old rule compared with)
        storage.write_bytes(f"{out}/shards/young.parquet", b"x")  # a later run's uncommitted shard
        young = storage.modified(f"{out}/shards/young.parquet")
        assert int(young) == int(lease.stored_at)  # the same-second case, provoked
        print(f"\nrun started {started:.3f}; lease stored {lease.stored_at:.3f}; young shard stamped {young:.3f}")
        assert young < started  # one-second truncation: the old rule took it for older than the run
        removed = sweep(out, MANIFEST, lease.stored_at)["removed"]
    assert removed == [f"{out}/shards/old.parquet"]  # the earlier second's leftover goes; the young one stays
    assert storage.exists(f"{out}/shards/young.parquet")
