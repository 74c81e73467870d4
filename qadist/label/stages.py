"""The three Ray Data stages of `qadist label`, each taking and giving one row per row block.

1. `window_blocks` (CPU tasks): read the block's rows, validate them (bad rows -> the block's
   rejects file, never an exception), cut the good pairs into windows; the windows travel packed
   as one Arrow IPC cell, so Ray Data cannot split or merge blocks.
2. `BlockTeacher` (actors, `num_gpus` each): the teacher ensemble over a whole block, in
   length-sorted GPU batches of `batch_size` windows.
3. `write_shards` (CPU tasks): the block's shard, written whole under its deterministic name.

Every row also carries the block's counts as JSON (`stats`), to which each stage adds its own
(tokens, seconds, memory), so the driver can write the manifest and the summary.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from typing import Any

import numpy as np
import pyarrow as pa

from qadist import storage
from qadist.label.blocks import Block, read_block
from qadist.label.teacher import TeacherEnsemble, padded_tokens
from qadist.rows import Unparsable, make_reject
from qadist.shards import pack, shard_bytes, unpack, window_fields, windows_table, with_metadata
from qadist.squad.io import validate_pair

SHARD_STATS = (
    "block",
    "source",
    "row_start",
    "row_end",
    "pairs_in",
    "pairs_labeled",
    "pairs_rejected",
    "windows",
    "rejects",
    "node_id",
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_mb(stage: str) -> dict[str, float]:
    """This process's peak RSS, and its private (anonymous) and shared (object store) RSS now, in MiB.

    Zero-copy reads of Ray's object store map shared pages into a worker; they count in its RSS
    but not in its private memory, so both are reported.
    """
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        kib = {k: int(fields[k].split()[0]) for k in ("VmHWM", "RssAnon", "RssShmem")}
    except (OSError, KeyError, ValueError):  # not Linux
        return {f"{stage}_rss_mb": peak_rss_mb()}
    return {
        f"{stage}_rss_mb": kib["VmHWM"] / 1024,
        f"{stage}_private_mb": kib["RssAnon"] / 1024,
        f"{stage}_shared_mb": kib["RssShmem"] / 1024,
    }


# ---- stage 1: read, validate, window (CPU tasks) -------------------------------------------------


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str, trust_remote_code: bool):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from qadist.models import load_tokenizer

    return load_tokenizer(name, trust_remote_code)


def block_pairs(block: Block, max_context_chars: int) -> tuple[list[dict], list[dict], int]:
    """(valid pairs, rejects, rows read) of one block; never raises for a bad row."""
    pairs, rejects, rows_in = [], [], 0
    for n, raw in read_block(block):
        rows_in += 1
        pair, reason = (None, raw.reason) if isinstance(raw, Unparsable) else validate_pair(raw, max_context_chars)
        if pair is not None and str(n) in block.duplicates:
            pair, reason = None, f"duplicate id {pair['id']!r} (first at {block.duplicates[str(n)]})"
        if pair is None:
            rejects.append(make_reject(raw, block.source, n, reason))
        else:
            pair["_row"] = n
            pairs.append(pair)
    return pairs, rejects, rows_in


def windows_of(pairs: list[dict], tokenizer: Any, with_answers: bool, lengths: tuple[int, int, int]) -> dict[str, list]:
    from qadist.squad.features import make_windows

    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    if with_answers:
        batch["answers"] = [p.get("answers") for p in pairs]
    windows = make_windows(batch, tokenizer, *lengths)
    by_id = {p["id"]: p for p in pairs}  # the text travels with each window (schema 2)
    windows["question"] = [by_id[i]["question"] for i in windows["id"]]
    windows["context"] = [by_id[i]["context"] for i in windows["id"]]
    return windows


def window_block(
    block: Block, tokenizer: Any, out: str, lengths: tuple[int, int, int], max_context_chars: int
) -> tuple[pa.Table, dict]:
    """One block -> (its windows as an Arrow table, its counts). Bad rows go to the block's rejects file."""
    pairs, rejects, rows_in = block_pairs(block, max_context_chars)
    has_types = "token_type_ids" in tokenizer.model_input_names
    empty = {f.name: [] for f in window_fields(has_types, block.with_answers)}
    try:
        windows = windows_of(pairs, tokenizer, block.with_answers, lengths) if pairs else empty
    except Exception:  # isolate the row the tokenizer chokes on instead of failing the block
        windows, kept = {k: [] for k in empty}, []
        for p in pairs:
            try:
                one = windows_of([p], tokenizer, block.with_answers, lengths)
            except Exception as e:
                rejects.append(
                    make_reject(
                        {k: v for k, v in p.items() if k != "_row"}, block.source, p["_row"], f"cannot be windowed: {e}"
                    )
                )
                continue
            kept.append(p)
            for k in windows:
                windows[k] += one.get(k, [])
        pairs = kept
    rel = None
    if rejects:
        rel = f"rejects/{block.name}.jsonl"
        rejects.sort(key=lambda r: r["row"])
        storage.write_bytes(
            storage.join(out, rel), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode("utf-8")
        )
    stats = {
        "block": block.name,
        "source": block.source,
        "row_start": block.start,
        "row_end": block.end,
        "pairs_in": rows_in,
        "pairs_labeled": len(pairs),
        "pairs_rejected": len(rejects),
        "windows": len(windows["id"]),
        "rejects": rel,
    }
    return windows_table(windows, block.with_answers), stats


def window_blocks(
    batch: pa.Table,
    out: str,
    tokenizer_name: str,
    lengths: tuple[int, int, int],
    max_context_chars: int,
    trust_remote_code: bool,
) -> pa.Table:
    """Ray Data stage: block descriptors -> one row per block: name, packed windows, counts."""
    tokenizer = _tokenizer(tokenizer_name, trust_remote_code)
    rows = []
    for text in batch["block"].to_pylist():
        table, stats = window_block(Block.from_json(text), tokenizer, out, tuple(lengths), max_context_chars)
        packed = pack(table)
        stats.update(memory_mb("window"))
        rows.append((stats["block"], packed, json.dumps(stats)))
    return _rows(rows)


def _rows(rows: list[tuple[str, bytes, str]]) -> pa.Table:
    names, data, stats = zip(*rows) if rows else ((), (), ())
    return pa.table(
        {
            "name": pa.array(names, pa.string()),
            "data": pa.array(data, pa.large_binary()),
            "stats": pa.array(stats, pa.string()),
        }
    )


# ---- stage 2: the teacher ensemble (actors) ------------------------------------------------------


class BlockTeacher(TeacherEnsemble):
    """The ensemble over packed blocks: each Ray batch row is a whole block of windows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()  # recorded per shard: where it was labelled

    def __call__(self, batch: pa.Table) -> pa.Table:  # type: ignore[override]
        rows = []
        for name, data, text in zip(batch["name"].to_pylist(), batch["data"], batch["stats"].to_pylist()):
            windows, stats, started, cpu = unpack(data), json.loads(text), time.perf_counter(), time.process_time()
            labelled = pack(super().__call__(windows))
            lengths = np.diff(windows["input_ids"].combine_chunks().offsets.to_numpy()) if windows.num_rows else []
            stats.update(
                real_tokens=int(np.sum(lengths)),
                padded_tokens=padded_tokens(lengths, self.batch_size) if len(lengths) else 0,
                teacher_seconds=time.perf_counter() - started,
                teacher_cpu_seconds=time.process_time() - cpu,
                node_id=self.node_id,
                **memory_mb("teacher"),
            )
            rows.append((name, labelled, json.dumps(stats)))
        return _rows(rows)


# ---- stage 3: write shards (CPU tasks) -----------------------------------------------------------


def write_shards(batch: pa.Table, out: str, header: dict) -> pa.Table:
    """Ray Data stage: labelled blocks -> shards written whole under their deterministic names."""
    done = []
    for name, data, text in zip(batch["name"].to_pylist(), batch["data"], batch["stats"].to_pylist()):
        stats = json.loads(text)
        table = with_metadata(unpack(data), header, {k: stats[k] for k in SHARD_STATS})
        data = shard_bytes(table)
        stats.update(memory_mb("writer"))
        storage.write_bytes(storage.join(out, "shards", f"{name}.parquet"), data)
        done.append(json.dumps(stats))
    return pa.table({"stats": pa.array(done, pa.string())})
