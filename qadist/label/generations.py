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
from qadist.label.blocks import in_sorted
from qadist.outputs import DETAILS, LATEST, StaleView, snapshot_uri, with_details

log = logging.getLogger(__name__)
IDS = "ids"  # the id-hash summaries' folder
SNAPSHOT_EVERY = 10  # generations between two snapshots written by `qadist label`
DETAILS_FOLDER = "snapshots"  # a snapshot's per-generation lists (`qadist.outputs.DETAILS`)


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
    return merge_sorted([sorted_unique(h) for h in ray.get([task.remote(storage.join(out, p)) for p in paths])])


def write_ids(out: str, rel: str, hashes: np.ndarray) -> dict[str, Any]:
    """A summary file: sorted unique hashes, little-endian uint64, nothing else. Its manifest entry."""
    hashes = sorted_unique(hashes).astype("<u8")
    storage.write_bytes(storage.join(out, rel), hashes.tobytes())
    return {"path": rel, "pairs": int(len(hashes))}


def read_ids(out: str, rel: str) -> np.ndarray:
    return np.frombuffer(storage.read_bytes(storage.join(out, rel)), dtype="<u8").astype(np.uint64, copy=False)


def sorted_unique(hashes: np.ndarray) -> np.ndarray:
    hashes = np.sort(np.asarray(hashes, np.uint64))
    return hashes[np.r_[True, hashes[1:] != hashes[:-1]]] if len(hashes) else hashes


def merge_sorted(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted unique uint64 arrays as one, sorted and unique: the small ones sorted together and
    inserted into the largest by binary search, so a day costs about one copy of the history's ids.
    (Not `np.unique` of everything: it hashes every element, and took most of a day's bookkeeping at
    400,000 ids: docs/benchmarks.md.)"""
    parts = [np.asarray(p, np.uint64) for p in parts if len(p)]
    if not parts:
        return np.zeros(0, np.uint64)
    big = max(parts, key=len)
    rest = sorted_unique(np.concatenate([p for p in parts if p is not big] or [np.zeros(0, np.uint64)]))
    rest = rest[~in_sorted(rest, big)]
    return np.insert(big, np.searchsorted(big, rest), rest)


def labelled_id_parts(ray: Any, out: str, view: dict[str, Any] | None) -> list[np.ndarray]:
    """Hashes of every pair id the committed generations labelled, as the view's summary files hold
    them (the newest snapshot's and one per generation after it; shards only for generations older
    than summaries): sorted and unique each, disjoint (a pair is in one generation), not merged.
    A label run tests its new ids against each by binary search (`qadist.label.blocks.in_parts`),
    so a day costs one read of the history's ids, not a copy of them; they are merged only when a
    snapshot is written (`labelled_id_hashes`)."""
    if view is None:
        return []
    parts = [read_ids(out, s["path"]) for s in view["id_sources"] if "path" in s]
    parts.append(shards_id_hashes(ray, out, [p for s in view["id_sources"] for p in s.get("shards", [])]))
    return [p for p in parts if len(p)]


def labelled_id_hashes(ray: Any, out: str, view: dict[str, Any] | None) -> np.ndarray:
    """`labelled_id_parts` as one sorted unique array (what a snapshot's id summary holds)."""
    return merge_sorted(labelled_id_parts(ray, out, view))


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
    replaces stay (their manifests list them): `kept`, never swept.

    Three files: the id summary, the details file (`DETAILS`, the per-generation lists, named by its
    content's hash: two runs never write one name with different content), then the snapshot itself
    with a conditional put, the commit point; then the `LATEST` hint (a plain put, only a hint)."""
    try:
        view = with_details(out, view)
    except StaleView:  # two newer snapshots were committed meanwhile: this one would be older still
        log.info("%s: newer snapshots were committed while this run worked; not writing one", out)
        return None
    number = view.get("snapshot", 0) + 1
    digest = hashlib.sha256(json.dumps([view["generation"], len(view["shards"])]).encode()).hexdigest()[:12]
    covered = [
        {"path": s["path"], "generation": None, "since": None}
        for s in view["id_sources"]
        if "path" in s and not storage.basename(s["path"]).startswith("s")
    ]
    ids = write_ids(out, f"{IDS}/s{number:06d}-{digest}.u64", hashes)
    details = json.dumps({**{k: view[k] for k in DETAILS}, "kept": [*view.get("kept", []), *covered]}).encode()
    rel = f"{DETAILS_FOLDER}/d{number:06d}-{hashlib.sha256(details).hexdigest()[:16]}.json"
    storage.write_bytes(storage.join(out, rel), details)
    snapshot = {
        **{k: v for k, v in view.items() if k not in (*DETAILS, "complete")},
        "snapshot": number,
        "covers": view["generation"],
        "snapshot_at": time.time(),
        "id_sources": [{"path": ids["path"]}],
        "details": rel,
        # The previous snapshot's details stay listed (the sweep keeps them) until the next snapshot: a
        # reader that read that snapshot just before this one committed can still read its details.
        "previous_details": view.get("details"),
        **extra,
    }
    if not storage.write_if_absent(snapshot_uri(out, number), json.dumps(snapshot).encode("utf-8")):
        log.info("%s: snapshot %d was committed by another run meanwhile; kept that one", out, number)
        return None
    storage.write_bytes(storage.join(out, LATEST), json.dumps({"snapshot": number}).encode())
    return number
