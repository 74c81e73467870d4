"""`qadist.label.commit.sweep`: removes what the committed manifest does not list, never a listed file, and
nothing a concurrent writer may still own (temporary files and multipart uploads younger than the run)."""

from __future__ import annotations

import os
import time

from qadist import storage
from qadist.label.commit import abort_multipart_uploads, sweep, unlisted_files

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
    for rel in ("shards/.tmp-1-a.parquet", ".tmp-2"):
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
    result = sweep(out, MANIFEST, time.time())
    assert result == {"removed": [f"{out}/shards/x.parquet"], "aborted_uploads": 1}
    uploads = {u["UploadId"]: u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert killed not in uploads and list(uploads.values()) == ["elsewhere/big.bin"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"])
    assert keys == sorted(
        f"{key}/{r}"
        for r in ("shards/a.r0-10.parquet", "shards/a.r10-20.parquet", "rejects/a.r0-10.jsonl", "_manifest.json")
    )  # no "folder/" marker objects either
