"""The label output as a table of generations: every `qadist label` run that finds new input commits one.

Generations are committed as `qadist.outputs` says (`_manifest.json`, then `_manifest-<n:06d>.json`,
each a conditional put: a run that finds its number taken plans again against the newcomer and
tries the next one). A generation lists its own shards, rejects, inputs and counts; readers see the
union of every committed generation (`qadist.outputs.read_view`), or one (`--generation N`).

Each pair is in at most one generation: a run labels only the input files no generation holds, and
rejects a row whose id a committed generation already labelled. Those ids are kept as 64-bit hashes
in small summary files (`ids/`), never read back from the shards: one per generation, written before
its manifest commits and listed by it (`ids`), and one per snapshot for generations 1..b together.
A snapshot (`_snapshot-<k:06d>.json`, a conditional put) is the reader's view of generations 1..b
as one document: `qadist label` writes one when SNAPSHOT_EVERY generations have been committed
since the last, so a run reads one listing, a snapshot and at most a few manifests and summaries,
however long the history. A generation committed before summaries existed is read from its shards'
`id` column (Ray tasks), once: the next snapshot covers it. Why a commit log of our own and not
Delta Lake or Iceberg: docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from qadist import storage
from qadist.outputs import snapshot_uri

log = logging.getLogger(__name__)
IDS = "ids"  # the id-hash summaries' folder
SNAPSHOT_EVERY = 10  # generations between two snapshots written by `qadist label`


def shard_id_hashes(uri: str) -> np.ndarray:
    """The 64-bit id hashes of the pairs a committed shard labelled (one per pair, not per window)."""
    from qadist.label.blocks import id_hash

    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        ids = pq.read_table(f, columns=["id"])["id"].unique().to_pylist()
    return np.asarray([id_hash(i) for i in ids], dtype=np.uint64)


def shards_id_hashes(ray: Any, out: str, paths: list[str]) -> np.ndarray:
    """The id hashes of the pairs in these shards (Ray tasks, one per shard)."""
    if not paths:
        return np.zeros(0, np.uint64)
    task = ray.remote(num_cpus=1)(shard_id_hashes)
    return np.unique(np.concatenate(ray.get([task.remote(storage.join(out, p)) for p in paths])))


def write_ids(out: str, rel: str, hashes: np.ndarray) -> dict[str, Any]:
    """A summary file: sorted unique hashes, little-endian uint64, nothing else. Its manifest entry."""
    hashes = np.unique(hashes).astype("<u8")
    storage.write_bytes(storage.join(out, rel), hashes.tobytes())
    return {"path": rel, "pairs": int(len(hashes))}


def read_ids(out: str, rel: str) -> np.ndarray:
    return np.frombuffer(storage.read_bytes(storage.join(out, rel)), dtype="<u8").astype(np.uint64)


def labelled_id_hashes(ray: Any, out: str, view: dict[str, Any] | None) -> np.ndarray:
    """Hashes of every pair id the committed generations labelled: the view's summary files (the
    newest snapshot's and those of the generations after it); shards only for generations older
    than summaries."""
    if view is None:
        return np.zeros(0, np.uint64)
    parts = [read_ids(out, s["path"]) for s in view["id_sources"] if "path" in s]
    parts.append(shards_id_hashes(ray, out, [p for s in view["id_sources"] for p in s.get("shards", [])]))
    return np.unique(np.concatenate(parts))


def generation_ids(ray: Any, out: str, number: int, plan: str, shards: list[dict]) -> dict[str, Any]:
    """Generation `number`'s summary: the ids its shards hold, written before its manifest commits
    (named by its plan, so two runs that planned differently never write one name)."""
    hashes = shards_id_hashes(ray, out, [s["path"] for s in shards if s["pairs"] > 0])
    return write_ids(out, f"{IDS}/g{number:06d}-{plan}.u64", hashes)


def snapshot_due(view: dict[str, Any]) -> bool:
    return view["generation"] - view.get("covers", 0) >= SNAPSHOT_EVERY


def commit_snapshot(out: str, view: dict[str, Any], hashes: np.ndarray, **extra: Any) -> int | None:
    """Commit `view` (every generation up to view["generation"], and `hashes`: all their ids) as the
    next snapshot; its number, or None when another run committed that number first (then it is the
    newer one; nothing is lost: a snapshot only saves reading). The per-generation summaries it
    replaces stay (their manifests list them): `kept`, never swept."""
    number = view.get("snapshot", 0) + 1
    digest = hashlib.sha256(json.dumps([view["generation"], len(view["shards"])]).encode()).hexdigest()[:12]
    covered = [
        {"path": s["path"], "generation": None, "since": None}
        for s in view["id_sources"]
        if "path" in s and not storage.basename(s["path"]).startswith("s")
    ]
    ids = write_ids(out, f"{IDS}/s{number:06d}-{digest}.u64", hashes)
    snapshot = {
        **view,
        "snapshot": number,
        "covers": view["generation"],
        "snapshot_at": time.time(),
        "id_sources": [{"path": ids["path"]}],
        "kept": [*view.get("kept", []), *covered],
        **extra,
    }
    if not storage.write_if_absent(snapshot_uri(out, number), json.dumps(snapshot).encode("utf-8")):
        log.info("%s: snapshot %d was committed by another run meanwhile; kept that one", out, number)
        return None
    return number


def listed_paths(view: dict[str, Any]) -> set[str]:
    """Every file (relative to the output) that the table's view references or keeps: what the sweep
    never removes."""
    return (
        {s["path"] for s in view["shards"]}
        | set(view.get("rejects") or [])
        | {s["path"] for s in view["id_sources"] if "path" in s}
        | {k["path"] for k in view.get("kept") or []}
    )
