"""The last step of an output's commit protocol: once its manifest is committed, remove what it does not list.

A label output is committed by its manifest (`_manifest.json`, written once with a conditional put);
readers read only the shards it lists, so leftovers are never *read*, but they cost storage and
confuse people browsing the bucket. What can be left behind:
- shards and rejects files under names this output's manifest does not list (a file copied in by
  hand, or a name from an older layout);
- local temporary files (`.tmp-*`) of writes a killed process never renamed into place;
- S3 multipart uploads that a killed writer never completed or aborted (invisible to listings and
  readers, billed until aborted).

`sweep` runs only after the manifest is committed (by this run or, for a run that finds the output
complete, an earlier one). It never deletes a listed file. A concurrent run of the same job writes
only listed names (names are derived from the input), so the only things it could own that the sweep
might touch are its in-flight temporary files and uploads: the sweep leaves alone any that started
after this run did. "After" is judged in whole seconds against the store's own time of this run's
lease (S3's timestamps have one-second resolution): what shares the lease's second is left alone.
"""

from __future__ import annotations

import contextlib
import logging

import pyarrow.fs as pafs

from qadist import storage

log = logging.getLogger(__name__)
SWEPT_FOLDERS = ("shards", "rejects", "ids", "compacted", "snapshots")


def listed_paths(manifest: dict) -> set[str]:
    """Paths (relative to the output) that the table's complete view references or keeps (id summaries,
    the shards a compaction replaced while they are retained, the newest snapshot's details file and
    the one before it: a reader may have read that snapshot just before the newest committed)."""
    assert manifest.get("complete", True), "the sweep needs the complete view (qadist.outputs.with_details)"
    return (
        {s["path"] for s in manifest["shards"]}
        | set(manifest.get("rejects") or [])
        | {s["path"] for s in manifest.get("id_sources") or [] if "path" in s}
        | {k["path"] for k in manifest.get("kept") or []}
        | {manifest[k] for k in ("details", "previous_details") if manifest.get(k)}
    )


def before(mtime: float, started: float) -> bool:
    """Written in a whole second before the one `started` falls in. S3 stamps objects (and uploads)
    with whole seconds, so an object written 0.3 s after a run began can carry a time before its start;
    only an earlier second is surely earlier. `started` is best the store's own time of the run's lease
    (`Lease.stored_at`): the same clock as the objects', no skew between machines."""
    return int(mtime) < int(started)


def _files(uri: str) -> list[pafs.FileInfo]:
    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File]


def unlisted_files(out: str, manifest: dict, started: float, keep_unlisted: bool = False) -> list[str]:
    """URIs under `out` that the sweep removes: unlisted files in shards/, rejects/, ids/, compacted/, snapshots/
    (not with `keep_unlisted`) and temporary files (`.tmp-*`, local outputs), both only when written
    in a second before the one `started` (seconds since the epoch) falls in (`before`)."""
    listed = listed_paths(manifest)
    _, root = storage.resolve(out)
    found = []
    candidates = [(folder, f) for folder in SWEPT_FOLDERS for f in _files(storage.join(out, folder))]
    if not storage.is_s3(out):  # write_if_absent's temporary files sit in the output folder itself
        fs, path = storage.resolve(out)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            candidates += [("", f) for f in fs.get_file_info(pafs.FileSelector(path)) if f.type == pafs.FileType.File]
    for folder, f in candidates:
        rel = f.path[len(root) :].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        leftover = name.startswith(".tmp-") or (folder and rel not in listed and not keep_unlisted)
        # Only what existed before this run started: a concurrent writer's temporary file lives for
        # milliseconds, and a run that began later (its lease not seen yet) may be writing its generation.
        if leftover and f.mtime is not None and before(f.mtime.timestamp(), started):
            found.append(storage.join(out, rel))
    return sorted(found)


def abort_multipart_uploads(out: str, started: float) -> int:
    """Abort S3 multipart uploads under `out/` initiated before `started`; returns how many."""
    if not storage.is_s3(out):
        return 0
    bucket, key = storage.split_s3(out)
    client = storage.s3_client()
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
        for upload in page.get("Uploads", []):
            if not before(upload["Initiated"].timestamp(), started):
                continue  # a live writer that started after this run; not ours to end
            with contextlib.suppress(client.exceptions.NoSuchUpload):  # completed or aborted meanwhile
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
                log.info(
                    "aborted an orphaned multipart upload of s3://%s/%s (initiated %s)",
                    bucket,
                    upload["Key"],
                    upload["Initiated"],
                )
    return aborted


def sweep(out: str, manifest: dict, started: float, others_writing: bool = False) -> dict:
    """Remove what the committed `manifest` of `out` (every generation) does not reference; never a
    listed file. With `others_writing` (another run holds a lease: `qadist.leases`) unlisted shards,
    rejects and multipart uploads stay, since they may be that run's uncommitted generation.

    Call only after the manifest is committed. Returns {"removed": [uris], "aborted_uploads": n}.
    """
    listed = {storage.join(out, p) for p in listed_paths(manifest)}
    removed = []
    for uri in unlisted_files(out, manifest, started, keep_unlisted=others_writing):
        assert uri not in listed, uri
        storage.delete(uri)
        removed.append(uri)
    aborted = 0 if others_writing else abort_multipart_uploads(out, started)
    if removed or aborted:
        log.info(
            "%s: swept %d file(s) the manifest does not list%s; aborted %d orphaned multipart upload(s)",
            out,
            len(removed),
            f" ({', '.join(storage.basename(u) for u in removed[:3])}{', ...' if len(removed) > 3 else ''})"
            if removed
            else "",
            aborted,
        )
    return {"removed": removed, "aborted_uploads": aborted}
