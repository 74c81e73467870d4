"""The label output as a table of generations: every `qadist label` run that finds new input commits one.

Generations are committed as `qadist.outputs` says (`_manifest.json`, then `_manifest-<n:06d>.json`,
each a conditional put: a run that finds its number taken plans again against the newcomer and
tries the next one). A generation lists its own shards, rejects, inputs and counts; readers see the
union of every committed generation (`union`), or one (`--generation N`).

Each pair is in at most one generation: a run labels only the input files no generation holds, and
rejects a row whose id a committed generation already labelled (read back from the committed
shards' `id` column, so rotated-away log files still count). Why a commit log of our own and not
Delta Lake or Iceberg: docs/formats.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq

from qadist import storage
from qadist.errors import UserError
from qadist.outputs import MANIFEST

SUMMED = ("pairs_in", "pairs_labeled", "pairs_rejected", "windows")


def union(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """What readers see: generation 1's header, every generation's shards and rejects, summed counts,
    and one entry per generation (its number, inputs, counts, run summary)."""
    if len(generations) == 1:
        return {**generations[0], "generations": [summary_of(generations[0])]}
    first, last = generations[0], generations[-1]
    return {
        **first,
        "config": last["config"],
        "counts": {k: sum(g["counts"][k] for g in generations) for k in SUMMED},
        "shards": [s for g in generations for s in g["shards"]],
        "rejects": [r for g in generations for r in g.get("rejects") or []],
        "inputs": [i for g in generations for i in g.get("inputs") or []],
        "run": last["run"],
        "generation": last["generation"],
        "generations": [summary_of(g) for g in generations],
    }


def summary_of(generation: dict[str, Any]) -> dict[str, Any]:
    return {
        "generation": generation.get("generation", 1),
        "inputs": generation.get("inputs"),
        "counts": generation["counts"],
        "teacher_seconds": (generation.get("run") or {}).get("teacher_seconds"),
        "committed_at": generation.get("committed_at"),
    }


def select_generation(generations: list[dict[str, Any]], number: int | None, out: str) -> dict[str, Any]:
    """The union (number None) or generation `number` alone, as a reader's manifest."""
    if not generations:
        raise UserError(f"{out}: no {MANIFEST}; the label run has not finished (re-run `qadist label` to resume it)")
    if number is None:
        return union(generations)
    if not 1 <= number <= len(generations):
        raise UserError(
            f"{out}: has generations 1..{len(generations)}, not {number}; pass --generation between them, or omit it"
        )
    return {**generations[number - 1], "generations": [summary_of(generations[number - 1])]}


def shard_id_hashes(uri: str) -> np.ndarray:
    """The 64-bit id hashes of the pairs a committed shard labelled (one per pair, not per window)."""
    from qadist.label.blocks import id_hash

    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        ids = pq.read_table(f, columns=["id"])["id"].unique().to_pylist()
    return np.asarray([id_hash(i) for i in ids], dtype=np.uint64)


def labelled_id_hashes(ray: Any, out: str, generations: list[dict[str, Any]]) -> np.ndarray:
    """Hashes of every pair id the committed generations labelled (Ray tasks, one per shard)."""
    uris = [storage.join(out, s["path"]) for g in generations for s in g["shards"] if s["pairs"] > 0]
    if not uris:
        return np.zeros(0, np.uint64)
    task = ray.remote(num_cpus=1)(shard_id_hashes)
    return np.unique(np.concatenate(ray.get([task.remote(u) for u in uris])))
