"""A label table of many generations without a teacher: shards of the real schema, random logits.

Each generation is committed the way `qadist label` commits one: its shards, its id summary
(`ids/`), its manifest with a conditional put, and a snapshot every SNAPSHOT_EVERY generations.
For compaction tests and `benchmarks/history_cost.py`, where what matters is the table's
bookkeeping and reading, not the labels' values.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa

from qadist import storage
from qadist.label.blocks import id_hash
from qadist.label.generations import commit_snapshot, read_ids, snapshot_due, write_ids
from qadist.outputs import extend, generation_uri, read_view, start
from qadist.shards import SCHEMA_VERSION, list_array, shard_bytes, shard_schema, with_metadata

HEADER = {
    "schema_version": SCHEMA_VERSION,
    "teachers": [{"name": "synthetic", "revision": "local"}],
    "tokenizer": {"name": "synthetic", "hash": "0123456789abcdef"},
    "max_seq_len": 64,
    "doc_stride": 16,
    "max_query_len": 16,
    "combine": "mean_logits",
}


def shard_table(ids: list[str], tokens: int = 24, seed: int = 0) -> pa.Table:
    """One window per pair, `tokens` tokens each, of the shard schema (no token types, no answers)."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    ints = [np.arange(tokens, dtype=np.int32) + i % 100 for i in range(n)]
    logits = [rng.standard_normal(tokens).astype(np.float16) for _ in range(n)]
    offsets = pa.array([[[j, j + 1] for j in range(tokens)] for _ in range(n)], pa.list_(pa.list_(pa.int32())))
    schema = shard_schema(False, False, False)
    columns = {
        "id": pa.array(ids),
        "window": pa.array(np.zeros(n, np.int32)),
        "input_ids": list_array(ints, pa.int32()),
        "offsets": offsets,
        "start_logits": list_array(logits),
        "end_logits": list_array(logits[::-1]),
        "start_position": pa.array(np.full(n, -1, np.int32)),
        "end_position": pa.array(np.full(n, -1, np.int32)),
        "question": pa.array([f"question {i}?" for i in ids]),
        "context": pa.array([f"context of {i}." for i in ids]),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)


def add_generation(
    out: str,
    number: int,
    ids: list[str],
    source: str,
    summaries: bool = True,
    size: int | None = None,
    pairs_generation: int | None = None,
) -> dict:
    """Write and commit generation `number` holding `ids` (one shard), as `qadist label` would."""
    manifest = generation_manifest(out, number, ids, source, size, pairs_generation)
    if summaries:
        hashes = np.array([id_hash(i) for i in ids], np.uint64)
        manifest["ids"] = write_ids(out, f"ids/g{number:06d}-{manifest['plan']}.u64", hashes)
    assert storage.write_if_absent(generation_uri(out, number), json.dumps(manifest).encode("utf-8"))
    return manifest


def generation_manifest(
    out: str, number: int, ids: list[str], source: str, size: int | None = None, pairs_generation: int | None = None
) -> dict:
    """Write generation `number`'s shard; its manifest, not yet committed and without its id summary
    (`pairs_generation`: the newest generation of the `qadist pairs` output it read, when it read one)."""
    name = f"{storage.basename(source)}.r000000000-{len(ids):09d}"
    n = len(ids)
    shard = {"block": name, "source": source, "row_start": 0, "row_end": n, "pairs_in": n,
             "pairs_labeled": n, "pairs_rejected": 0, "windows": n, "rejects": None}  # fmt: skip
    storage.write_bytes(storage.join(out, "shards", f"{name}.parquet"),
                        shard_bytes(with_metadata(shard_table(ids, seed=number), HEADER, shard)))  # fmt: skip
    entry = {"path": f"shards/{name}.parquet", "rows": n, "pairs": n, "source": source, "row_start": 0,
             "row_end": n, "pairs_in": n, "pairs_rejected": 0, "rejects": None, "node_id": None}  # fmt: skip
    return {
        **HEADER,
        "config": {"pairs": source.rsplit("/", 1)[0], "out": out},
        "fingerprint": "synthetic",
        "keep_teacher_logits": False,
        "counts": {"pairs_in": n, "pairs_labeled": n, "pairs_rejected": 0, "windows": n},
        "shards": [entry],
        "rejects": [],
        "run": {"seconds": 0.0, "teacher_seconds": 0.0, "summary": "synthetic"},
        "generation": number,
        "inputs": [{"uri": source, "size": size if size is not None else 100 * n}],
        "with_answers": False,
        "plan": f"{number:016x}",
        **({"pairs_generation": pairs_generation} if pairs_generation is not None else {}),
        "committed_at": time.time(),
    }


def day_ids(day: int, pairs: int) -> list[str]:
    return [f"d{day:05d}-{i:06d}" for i in range(pairs)]


def write_day_pairs(pairs_dir: str, day: int, pairs: int) -> tuple[str, int]:
    """Day `day`'s pairs file (JSONL); its URI and size."""
    uri = storage.join(pairs_dir, f"day-{day:05d}.jsonl")
    data = "".join(
        json.dumps({"id": i, "question": f"question {i}?", "context": f"context of {i}."}) + "\n"
        for i in day_ids(day, pairs)
    ).encode("utf-8")
    storage.write_bytes(uri, data)
    return uri, len(data)


def commit_pairs_day(root: str, day: int, pairs: int) -> tuple[str, int]:
    """Day `day`'s pairs file in the `qadist pairs` output `root` (`pairs/day-<day>.jsonl`), committed as
    that output's generation `day` (its manifest lists the file), as the daily job's pairs step does."""
    from qadist.outputs import claim_file

    storage.write_if_absent(storage.join(root, claim_file("pairs")), b"{}")
    uri, size = write_day_pairs(storage.join(root, "pairs"), day, pairs)
    path = f"pairs/{storage.basename(uri)}"
    manifest = {"generation": day, "stage": "pairs", "files": {"pairs": [{"path": path, "rows": pairs}],
                "duplicates": [], "rejects": []}, "inputs": [], "committed_at": time.time()}  # fmt: skip
    assert storage.write_if_absent(generation_uri(root, day), json.dumps(manifest).encode("utf-8"))
    return uri, size


def add_day(out: str, day: int, pairs: int, pairs_dir: str | None = None, pairs_output: str | None = None,
            summaries: bool = True) -> dict:  # fmt: skip
    """Day `day`'s pairs (a plain file in `pairs_dir`, a committed generation of `pairs_output`, or
    neither) and the label generation `day` that holds them, committed."""
    source, size, through = f"{out}-pairs/pairs/day-{day:05d}.jsonl", None, None
    if pairs_output is not None:
        (source, size), through = commit_pairs_day(pairs_output, day, pairs), day
    elif pairs_dir is not None:
        source, size = write_day_pairs(pairs_dir, day, pairs)
    return add_generation(out, day, day_ids(day, pairs), source, summaries, size, pairs_generation=through)


def make_table(
    out: str,
    generations: int,
    pairs: int,
    summaries: bool = True,
    snapshots: bool = True,
    pairs_dir: str | None = None,
    pairs_output: str | None = None,
) -> None:
    """`generations` daily generations of `pairs` pairs each (ids `d<day>-<i>`), committed in order;
    with `pairs_dir`, each day's pairs file is written there too (recorded with its real size); with
    `pairs_output`, committed there as that `qadist pairs` output's generation of the same number."""
    view = None
    for day in range(1, generations + 1):
        manifest = add_day(out, day, pairs, pairs_dir, pairs_output, summaries)
        view = start(manifest) if view is None else extend(view, manifest)
        view = {"snapshot": 0, "covers": 0, "kept": [], "retired": [], **view}
        if snapshots and summaries and snapshot_due(view):
            hashes = np.concatenate([read_ids(out, s["path"]) for s in view["id_sources"]])
            commit_snapshot(out, view, hashes)
            view = read_view(out)


def all_ids(day_count: int, pairs: int) -> set[str]:
    return {f"d{d:05d}-{i:06d}" for d in range(1, day_count + 1) for i in range(pairs)}
