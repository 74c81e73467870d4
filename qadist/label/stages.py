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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from qadist import storage
from qadist.label.blocks import Block, read_block
from qadist.label.mixed_tokenizers import carry_over, other_windows, teacher_rows_column
from qadist.label.teacher import TeacherEnsemble, padded_tokens, target_windows, with_labels
from qadist.rows import Unparsable, jsonl_bytes, make_reject
from qadist.shards import nested_values, pack, shard_bytes, unpack, window_fields, windows_table, with_metadata
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
            pair, reason = None, f"duplicate id {pair['id']!r} ({block.duplicates[str(n)]})"
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
    block: Block,
    tokenizer: Any,
    out: str,
    lengths: tuple[int, int, int],
    max_context_chars: int,
    others: Sequence[tuple[str, Any]] = (),
) -> tuple[pa.Table, dict, list[pa.Table]]:
    """One block -> (its windows as an Arrow table, its counts, the windows of each other teacher tokenizer).

    Bad rows go to the block's rejects file; `others` are (teacher name, tokenizer) of the ensemble's
    other tokenizers (`qadist.label.mixed_tokenizers`): a pair one of them cannot window is rejected too.
    """
    pairs, rejects, rows_in = block_pairs(block, max_context_chars)
    has_types = "token_type_ids" in tokenizer.model_input_names

    def cut(some: list[dict]) -> tuple[dict[str, list], list[pa.Table]]:
        mine = windows_of(some, tokenizer, block.with_answers, lengths)
        return mine, [other_windows(some, tok, lengths) for _, tok in others]

    empty = {f.name: [] for f in window_fields(has_types, block.with_answers)}
    try:
        windows, theirs = cut(pairs) if pairs else (empty, [other_windows([], tok, lengths) for _, tok in others])
    except Exception:  # isolate the row a tokenizer chokes on instead of failing the block
        windows, kept, parts = {k: [] for k in empty}, [], []
        for p in pairs:
            try:
                one, their_one = cut([p])
            except Exception as e:
                rejects.append(make_reject({k: v for k, v in p.items() if k != "_row"}, block.source, p["_row"],
                                           f"cannot be windowed: {e}"))  # fmt: skip
                continue
            kept.append(p)
            parts.append(their_one)
            for k in windows:
                windows[k] += one.get(k, [])
        pairs = kept
        theirs = [pa.concat_tables([part[g] for part in parts]) if parts else other_windows([], tok, lengths)
                  for g, (_, tok) in enumerate(others)]  # fmt: skip
    rel = None
    if rejects:
        rel = f"rejects/{block.name}.jsonl"
        rejects.sort(key=lambda r: r["row"])
        storage.write_bytes(storage.join(out, rel), jsonl_bytes(rejects))
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
    return windows_table(windows, block.with_answers), stats, theirs


def window_blocks(
    batch: pa.Table,
    out: str,
    tokenizer_name: str,
    lengths: tuple[int, int, int],
    max_context_chars: int,
    trust_remote_code: bool,
    other_tokenizers: Sequence[str] = (),
) -> pa.Table:
    """Ray Data stage: block descriptors -> one row per block: name, packed windows (and the other
    teacher tokenizers' windows, packed), counts."""
    tokenizer = _tokenizer(tokenizer_name, trust_remote_code)
    others = [(name, _tokenizer(name, trust_remote_code)) for name in other_tokenizers]
    rows = []
    for text in batch["block"].to_pylist():
        table, stats, theirs = window_block(
            Block.from_json(text), tokenizer, out, tuple(lengths), max_context_chars, others
        )
        packed = pack(table)
        stats.update(memory_mb("window"))
        rows.append((stats["block"], packed, json.dumps(stats), [pack(t) for t in theirs]))
    return _rows(rows)


def _rows(rows: list[tuple[str, bytes, str, list[bytes]]]) -> pa.Table:
    names, data, stats, others = zip(*rows) if rows else ((), (), (), ())
    return pa.table(
        {
            "name": pa.array(names, pa.string()),
            "data": pa.array(data, pa.large_binary()),
            "stats": pa.array(stats, pa.string()),
            "others": pa.array(others, pa.list_(pa.large_binary())),  # other teacher tokenizers' windows
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
        for name, data, text, others in zip(
            batch["name"].to_pylist(), batch["data"], batch["stats"].to_pylist(), batch["others"]
        ):
            windows, stats, started, cpu = unpack(data), json.loads(text), time.perf_counter(), time.process_time()
            if len(self.groups) == 1:
                labelled, carried = pack(super().__call__(windows)), []
            else:  # the raw logits of every tokenizer group; the write tasks project and combine them
                per_group, theirs = self.group_logits(windows, [unpack(b) for b in others.as_py()])
                tables = [with_raw_logits(t, g) for t, g in zip([windows, *theirs], per_group)]
                labelled, carried = pack(tables[0]), [pack(t) for t in tables[1:]]
            lengths = np.diff(windows["input_ids"].combine_chunks().offsets.to_numpy()) if windows.num_rows else []
            stats.update(
                real_tokens=int(np.sum(lengths)),
                padded_tokens=padded_tokens(lengths, self.batch_size) if len(lengths) else 0,
                teacher_seconds=time.perf_counter() - started,
                teacher_cpu_seconds=time.process_time() - cpu,
                node_id=self.node_id,
                **memory_mb("teacher"),
            )
            rows.append((name, labelled, json.dumps(stats), carried))
        return _rows(rows)


RAW = ("raw_start_logits", "raw_end_logits")  # per-teacher logits between the actor and the write task


def with_raw_logits(table: pa.Table, per_window: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    columns = [teacher_rows_column([w[k] for w in per_window], pa.float32()) for k in (0, 1)]
    return table.append_column(RAW[0], columns[0]).append_column(RAW[1], columns[1])


def project_and_combine(table: pa.Table, theirs: list[pa.Table], mixed: dict) -> pa.Table:
    """A mixed-tokenizer block (`with_raw_logits` tables) -> the labelled windows: the other groups'
    teachers carried onto the stored windows, then combined (`qadist.label.mixed_tokenizers`)."""
    per_group = [list(zip(*(nested_values(t[k]) for k in RAW))) for t in [table, *theirs]]
    table = table.drop_columns(list(RAW))
    per_window = carry_over(mixed["groups"], per_group, theirs, *target_windows(table))
    return with_labels(table, per_window, mixed["combine"], mixed["keep_teacher_logits"])


# ---- stage 3: write shards (CPU tasks) -----------------------------------------------------------


def write_shards(batch: pa.Table, out: str, header: dict, mixed: dict | None = None) -> pa.Table:
    """Ray Data stage: labelled blocks -> shards written whole under their deterministic names.

    For a mixed-tokenizer ensemble (`mixed`: its tokenizer groups, combine, keep_teacher_logits) the
    projection and the combine run here, in CPU tasks beside the teacher actors, not on them."""
    done = []
    for name, data, text, others in zip(
        batch["name"].to_pylist(), batch["data"], batch["stats"].to_pylist(), batch["others"]
    ):
        stats, table = json.loads(text), unpack(data)
        if mixed:
            started = time.process_time()
            table = project_and_combine(table, [unpack(b) for b in others.as_py()], mixed)
            stats["projection_seconds"] = time.process_time() - started
        table = with_metadata(table, header, {k: stats[k] for k in SHARD_STATS})
        data = shard_bytes(table)
        stats.update(memory_mb("writer"))
        storage.write_bytes(storage.join(out, "shards", f"{name}.parquet"), data)
        done.append(json.dumps(stats))
    return pa.table({"stats": pa.array(done, pa.string())})
