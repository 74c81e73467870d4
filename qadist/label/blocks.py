"""The pairs input cut into row blocks: the unit of work, of resume and of output of `qadist label`.

A block is `rows_per_shard` consecutive rows of one input file, described by a few numbers
(file, row range, and for JSONL the byte range), so planning is cheap and the driver holds no rows:
- JSONL: the driver streams the file once, counting newlines, and notes the byte offset where each
  block starts; a worker reads just its byte range (a ranged GET on S3). Lines are the rows, so a
  line that is not JSON becomes a reject instead of failing the file.
- Parquet: row counts come from the footer; a worker reads only the row groups it needs.
- JSON (official SQuAD, or a list of pairs): parsed and flattened on the driver (the format has
  to be read whole anyway); the block carries its rows inline.
The shard a block becomes is named after the file and the row range, so it is the same name on
every run: a re-run rewrites it instead of adding a duplicate, and a resume skips it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from qadist import storage
from qadist.errors import UserError
from qadist.rows import ROW_SUFFIXES, Unparsable, iter_file_rows, jsonl_rows
from qadist.squad.io import validate_pair

SCAN_CHUNK = 16 << 20  # bytes read at a time when counting JSONL lines on the driver


@dataclass
class Block:
    name: str  # shard stem: `<file>.r<start>-<end>`
    source: str  # the input file's URI
    kind: str  # "jsonl", "parquet" or "inline"
    start: int  # rows [start, end), 0-based (JSONL: line numbers, blank lines included)
    end: int
    byte_start: int = 0  # JSONL only
    byte_end: int = 0
    rows: list[Any] | None = None  # inline blocks only
    duplicates: dict[str, str] = field(default_factory=dict)  # row number (1-based) -> why it is a duplicate
    with_answers: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "Block":
        return cls(**json.loads(text))


def block_name(pairs_uri: str, file_uri: str, start: int, end: int) -> str:
    """`<path of the file under the pairs URI, '/' -> '__'>.r<start>-<end>`, safe in any store."""
    rel = file_uri[len(pairs_uri.rstrip("/")) :].lstrip("/") or storage.basename(file_uri)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", rel.replace("/", "__"))
    if safe.startswith((".", "_")):  # hidden names are skipped by listings
        safe = "f" + safe
    return f"{safe}.r{start:09d}-{end:09d}"


def _jsonl_blocks(pairs_uri: str, file_uri: str, rows_per_shard: int) -> tuple[list[Block], int]:
    """Stream a JSONL file once: the byte offset of every `rows_per_shard`-th line."""
    fs, path = storage.resolve(file_uri)
    starts, lines, pos, last = [0], 0, 0, b"\n"
    with fs.open_input_stream(path) as f:
        while chunk := f.read(SCAN_CHUNK):
            at = 0
            while (found := chunk.find(b"\n", at)) != -1:
                lines += 1
                at = found + 1
                if lines % rows_per_shard == 0:
                    starts.append(pos + at)
            pos += len(chunk)
            last = chunk[-1:]
    if pos == 0:
        raise UserError(f"{file_uri}: the file is empty; give at least one pair")
    if last != b"\n":
        lines += 1  # a last line without a newline
    if starts[-1] >= pos:
        starts.pop()
    bounds = starts + [pos]
    blocks = []
    for i in range(len(starts)):
        start, end = i * rows_per_shard, min((i + 1) * rows_per_shard, lines)
        blocks.append(
            Block(block_name(pairs_uri, file_uri, start, end), file_uri, "jsonl", start, end, bounds[i], bounds[i + 1])
        )
    return blocks, pos


def plan_blocks(
    pairs_uri: str, rows_per_shard: int, only: set[str] | None = None, files: list[str] | None = None
) -> tuple[list[Block], list[dict]]:
    """Every input file (or those in `only`, or exactly `files`, unlisted) cut into row blocks, in
    input order; and the files' (uri, size)."""
    if files is None:
        files = storage.list_files(pairs_uri, ROW_SUFFIXES)
        if not files:
            raise UserError(f"{pairs_uri}: no .json, .jsonl or .parquet files found; check --pairs")
    files = sorted(f for f in files if only is None or f in only)
    blocks: list[Block] = []
    inputs: list[dict] = []
    for file_uri in files:
        fs, path = storage.resolve(file_uri)
        if file_uri.endswith(".jsonl"):
            found, size = _jsonl_blocks(pairs_uri, file_uri, rows_per_shard)
        elif file_uri.endswith(".parquet"):
            size = fs.get_file_info(path).size
            try:
                with fs.open_input_file(path) as f:
                    n = pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # pyarrow raises ArrowInvalid and friends for a corrupt footer
                raise UserError(f"{file_uri}: not a readable Parquet file ({e}); fix or remove it") from e
            found = [
                Block(
                    block_name(pairs_uri, file_uri, s, min(s + rows_per_shard, n)),
                    file_uri,
                    "parquet",
                    s,
                    min(s + rows_per_shard, n),
                )
                for s in range(0, n, rows_per_shard)
            ]
        else:
            size = fs.get_file_info(path).size
            rows = [raw for _, raw in iter_file_rows(file_uri)]
            found = [
                Block(
                    block_name(pairs_uri, file_uri, s, min(s + rows_per_shard, len(rows))),
                    file_uri,
                    "inline",
                    s,
                    min(s + rows_per_shard, len(rows)),
                    rows=rows[s : s + rows_per_shard],
                )
                for s in range(0, len(rows), rows_per_shard)
            ]
        blocks += found
        inputs.append({"uri": file_uri, "size": size})
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise UserError(
            f"{pairs_uri}: two input files map to the same shard name; rename files that differ only in punctuation"
        )
    return blocks, inputs


def read_block(block: Block) -> Iterator[tuple[int, Any]]:
    """(row number from 1, raw row or `Unparsable`) for every row of the block; blank lines skipped."""
    if block.kind == "inline":
        yield from enumerate(block.rows or [], start=block.start + 1)
        return
    fs, path = storage.resolve(block.source)
    if block.kind == "jsonl":
        with fs.open_input_file(path) as f:
            data = f.read_at(block.byte_end - block.byte_start, block.byte_start)
        yield from jsonl_rows(data, block.start + 1, block.end - block.start)
        return
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        first = 0
        for g in range(pf.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            lo, hi = max(block.start, first), min(block.end, first + size)
            if lo < hi:
                table = pf.read_row_group(g).slice(lo - first, hi - lo)
                yield from enumerate(table.to_pylist(), start=lo + 1)
            first += size
            if first >= block.end:
                break


def id_hash(row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "little")


def scan_block(block_json: str, max_context_chars: int) -> dict:
    """The pre-pass over one block: 64-bit hashes of the ids of its valid rows (in row order), and
    whether any valid row carries answers. Small output: 16 bytes a row."""
    block = Block.from_json(block_json)
    rows, hashes, has_answers, seen = [], [], False, 0
    for n, raw in read_block(block):
        seen += 1
        if isinstance(raw, Unparsable):
            continue
        pair, _ = validate_pair(raw, max_context_chars)
        if pair is not None:
            rows.append(n)
            hashes.append(id_hash(pair["id"]))
            has_answers = has_answers or "answers" in pair
    return {
        "rows": np.asarray(rows, dtype=np.int64),
        "hashes": np.asarray(hashes, dtype=np.uint64),
        "has_answers": has_answers,
        "rows_in": seen,
    }


def name_by_content(block: Block) -> None:
    """Give a block with rows marked as duplicates a shard name that says which: those marks depend on
    the rows before the block and on earlier generations, so the plain name alone would not fix the
    shard's content. A shard name then always means one content: a resume may reuse it, and two runs
    that see different inputs never write one name twice with different rows."""
    if block.duplicates:
        marks = json.dumps(sorted(block.duplicates.items())).encode("utf-8")
        block.name = f"{block.name}.d{hashlib.blake2b(marks, digest_size=4).hexdigest()}"


def in_sorted(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_unique` (a binary search each: no sort of the big array)."""
    at = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[at] == values


def in_parts(values: np.ndarray, parts: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Which of `values` are in any of `parts` (sorted unique arrays, or one such array)."""
    held = np.zeros(len(values), bool)
    for part in [parts] if isinstance(parts, np.ndarray) else parts:
        if len(part):
            held |= in_sorted(values, part)
    return held


def find_duplicates(
    blocks: list[Block], scans: list[dict], labelled: np.ndarray | list[np.ndarray] | None = None
) -> int:
    """Mark every valid row whose id an earlier valid row (in input order) already has, or that an
    earlier generation labelled (`labelled`: their id hashes, sorted and unique, in one array or
    several: `qadist.label.generations.labelled_id_parts`); keep the first.

    Uses the 64-bit id hashes of the pre-pass (a false match needs ~4e9 distinct ids to become
    likely). Fills `block.duplicates`; returns how many rows were marked.
    """
    marked = 0
    if labelled is not None and len(labelled):
        kept = []
        for block, scan in zip(blocks, scans):
            held = in_parts(scan["hashes"], labelled)
            for row in scan["rows"][held]:
                block.duplicates[str(int(row))] = "already labelled by an earlier generation of this output"
            marked += int(held.sum())
            kept.append({**scan, "rows": scan["rows"][~held], "hashes": scan["hashes"][~held]})
        scans = kept
    hashes = np.concatenate([s["hashes"] for s in scans]) if scans else np.zeros(0, np.uint64)
    rows = np.concatenate([s["rows"] for s in scans]) if scans else np.zeros(0, np.int64)
    owner = (
        np.concatenate([np.full(len(s["rows"]), i, dtype=np.int64) for i, s in enumerate(scans)])
        if scans
        else np.zeros(0, np.int64)
    )
    if len(hashes) == 0:
        return marked
    order = np.argsort(hashes, kind="stable")  # stable: within an id, input order is kept
    sorted_h = hashes[order]
    new_group = np.r_[True, sorted_h[1:] != sorted_h[:-1]]
    first_of_group = np.maximum.accumulate(np.where(new_group, np.arange(len(sorted_h)), 0))
    for pos in np.flatnonzero(~new_group):
        i, j = order[pos], order[first_of_group[pos]]
        first_block = blocks[owner[j]]
        blocks[owner[i]].duplicates[str(int(rows[i]))] = (
            f"first at {storage.basename(first_block.source)} row {int(rows[j])}"
        )
        marked += 1
    return marked
