"""The label output as a table of generations: every `qadist label` run that finds new input commits one.

Generations are committed as `qadist.outputs` says (`_manifest.json`, then `_manifest-<n:06d>.json`,
each a conditional put: a run that finds its number taken plans again against the newcomer and
tries the next one). A generation lists its own shards, rejects, inputs and counts; readers see the
union of every committed generation (`qadist.outputs.union`), or one (`--generation N`).

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
