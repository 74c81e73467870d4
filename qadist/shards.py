"""The soft-label shard format (DESIGN.md): Arrow schema, schema metadata, packing, reading back.

A shard is one Parquet file per row block of the input, one row per window. Its schema metadata
holds two JSON documents: `qadist` (the contract header shared by every shard of an output: schema
version, teachers, tokenizer, window lengths, how the ensemble was combined) and `qadist_shard`
(this shard's own counts: source file, row range, pairs in/labelled/rejected, windows), so a
resumed run can rebuild the manifest from the footers of shards it did not compute itself.

Between pipeline stages a whole block of windows travels as one Arrow IPC stream in a binary
column (`pack`/`unpack`): Ray Data can then never split a block across batches, which is what
makes one block -> exactly one shard (see `qadist.label.stage`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadist import storage
from qadist.errors import UserError
from qadist.outputs import manifest_uri, read_view, select_generation

# 2: every window carries its pair's `question` and `context` (a student with another tokenizer
# re-cuts its windows from them, `qadist.train.cross_tokenizer`); repeated per window, they cost
# little after Parquet's dictionary encoding and zstd, and a reader that does not need them skips them.
SCHEMA_VERSION = 2
HEADER_KEY = b"qadist"
SHARD_KEY = b"qadist_shard"
ANSWERS_TYPE = pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])
LOGITS_TYPE = pa.list_(pa.float16())
TEACHER_LOGITS_TYPE = pa.list_(pa.list_(pa.float16()))


def window_fields(has_types: bool, has_answers: bool) -> list[pa.Field]:
    """The window columns that `make_windows` produces, in contract order (before the logits)."""
    return [
        pa.field("id", pa.string()),
        pa.field("window", pa.int32()),
        pa.field("input_ids", pa.list_(pa.int32())),
        *([pa.field("token_type_ids", pa.list_(pa.int8()))] if has_types else []),
        pa.field("offsets", pa.list_(pa.list_(pa.int32()))),
        pa.field("start_position", pa.int32()),
        pa.field("end_position", pa.int32()),
        *([pa.field("answers", ANSWERS_TYPE)] if has_answers else []),
        pa.field("question", pa.string()),
        pa.field("context", pa.string()),
    ]


def shard_schema(has_types: bool, has_answers: bool, keep_teacher_logits: bool) -> pa.Schema:
    """The full shard schema: window columns with `start_logits`/`end_logits` after `offsets`."""
    fields = window_fields(has_types, has_answers)
    at = [f.name for f in fields].index("offsets") + 1
    logits = [pa.field("start_logits", LOGITS_TYPE), pa.field("end_logits", LOGITS_TYPE)]
    fields[at:at] = logits
    if keep_teacher_logits:
        fields += [
            pa.field("teacher_start_logits", TEACHER_LOGITS_TYPE),
            pa.field("teacher_end_logits", TEACHER_LOGITS_TYPE),
        ]
    return pa.schema(fields)


def windows_table(windows: dict[str, list], has_answers: bool) -> pa.Table:
    """`make_windows` output (dict of Python lists) -> an Arrow table with the contract's types."""
    fields = window_fields("token_type_ids" in windows, has_answers)
    columns = {}
    for f in fields:
        values = windows.get(f.name)
        if values is None:  # answers requested but this block's pairs have none
            values = [None] * len(windows["id"])
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=pa.schema(fields))


def list_array(arrays: Sequence[np.ndarray], value_type: pa.DataType = pa.float16()) -> pa.ListArray:
    """Variable-length numpy arrays -> one Arrow list array (one copy, no Python loop per value)."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(arrays) if len(arrays) else np.zeros(0)
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(flat.astype(value_type.to_pandas_dtype(), copy=False), type=value_type)
    )


def list_values(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """An Arrow list column -> one numpy array per row (views into one flat buffer)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return []
    offsets = arr.offsets.to_numpy()
    values = arr.flatten().to_numpy(zero_copy_only=False)
    base = offsets[0]
    return [values[s - base : e - base] for s, e in zip(offsets[:-1], offsets[1:])]


def nested_values(column: pa.ChunkedArray | pa.Array, width: int | None = None) -> list[np.ndarray]:
    """A list<list<x>> column whose inner lists are of one length within a row (offsets: pairs;
    per-teacher logits: one row per teacher) -> one 2-D numpy array per row (views into one buffer);
    an empty row is (0, width)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return []
    outer = arr.offsets.to_numpy() - arr.offsets.to_numpy()[0]
    inner = arr.flatten()
    bounds = inner.offsets.to_numpy()
    flat = inner.flatten().to_numpy(zero_copy_only=False)
    bounds = bounds - bounds[0]
    rows = []
    for s, e in zip(outer[:-1], outer[1:]):
        if e == s:
            rows.append(np.zeros((0, width or 0), dtype=flat.dtype))
            continue
        n = bounds[s + 1] - bounds[s]
        if not (np.diff(bounds[s : e + 1]) == n).all():
            raise ValueError("inner lists of one row differ in length")
        rows.append(flat[bounds[s] : bounds[e]].reshape(e - s, n))
    return rows


def pack(table: pa.Table) -> bytes:
    """A table -> Arrow IPC stream bytes (one Ray Data cell that can never be split)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes | pa.Buffer | pa.Scalar) -> pa.Table:
    if isinstance(data, pa.Scalar):
        data = data.as_buffer()
    return pa.ipc.open_stream(data).read_all()


def with_metadata(table: pa.Table, header: dict, shard: dict) -> pa.Table:
    return table.replace_schema_metadata({HEADER_KEY: json.dumps(header), SHARD_KEY: json.dumps(shard)})


def shard_bytes(table: pa.Table) -> bytes:
    """A finished shard table -> Parquet bytes (zstd), to be written in one atomic put."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=4096)
    return buf.getvalue()


def read_footer(uri: str) -> tuple[dict, dict, pa.Schema]:
    """(contract header, shard counts, schema) from a shard's Parquet footer, without its data."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        schema = pq.read_schema(f)
    meta = schema.metadata or {}
    if HEADER_KEY not in meta:
        raise UserError(f"{uri}: not a qadist soft-label shard (no 'qadist' schema metadata)")
    return json.loads(meta[HEADER_KEY]), json.loads(meta.get(SHARD_KEY, b"{}")), schema


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def check_header(header: dict, source: str, tokenizer_hash: str | None = None) -> None:
    """Refuse shards of another schema version, or made with another tokenizer than the caller's."""
    version = header.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{source}: soft labels have schema_version={version}, this qadist reads {SCHEMA_VERSION}; "
            "re-run `qadist label`"
        )
    have = (header.get("tokenizer") or {}).get("hash")
    if tokenizer_hash is not None and have != tokenizer_hash:
        raise UserError(
            f"{source}: soft labels were made with tokenizer {header['tokenizer'].get('name')} (vocab hash {have}), "
            f"not the one of the rest of this output ({tokenizer_hash}): shards of two label runs are mixed; "
            "re-run `qadist label --overwrite` into this output"
        )


def read_manifest(uri: str, generation: int | None = None) -> dict[str, Any]:
    """What a reader of a `qadist label` output sees: every committed generation (their shards, rejects
    and summed counts), or generation `generation` alone; a UserError when none is committed."""
    manifest = select_generation(uri, read_view(uri), generation)
    check_header(manifest, manifest_uri(uri))
    return manifest


def listed_shards(uri: str, manifest: dict[str, Any]) -> list[str]:
    """URIs of the shards with windows that `manifest` (a reader's view) lists."""
    return [storage.join(uri, s["path"]) for s in manifest["shards"] if s["rows"] > 0]


def snapshot_paths(uri: str, generation: int | None = None) -> list[str]:
    """The Parquet files of a label table's current snapshot (every committed generation, or one):
    what DuckDB's `read_parquet`, Polars' `scan_parquet` or Spark's `read.parquet` take."""
    return listed_shards(uri, read_manifest(uri, generation))


def _read_shard_batch(batch: pa.Table, columns: list[str] | None, transform: Any = None) -> pa.Table:
    tables = [read_shard(uri, columns) for uri in batch["uri"].to_pylist()]
    return pa.concat_tables([transform(t) for t in tables] if transform else tables)


def read(
    uri: str,
    tokenizer_hash: str | None = None,
    columns: list[str] | None = None,
    transform: Any = None,
    generation: int | None = None,
):
    """The soft-label windows of a finished run as a Ray Dataset (one block per shard).

    Only the shards the committed generations list are read (all, or `generation` alone; a killed
    run's leftovers never are). Checks the
    schema version, and the tokenizer hash when `tokenizer_hash` is given. Shards are opened inside
    the workers, so S3 filesystems are never pickled.
    `transform` (shard table -> table) runs there too, on one whole shard at a time: every window of
    a pair is in one shard.
    """
    import ray

    manifest = read_manifest(uri, generation)
    check_header(manifest, manifest_uri(uri), tokenizer_hash)
    uris = listed_shards(uri, manifest)
    if not uris:
        raise UserError(f"{uri}: the manifest lists no windows; label some pairs first")
    items = [{"uri": u} for u in uris]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_shard_batch,
        fn_kwargs={"columns": columns, "transform": transform},
        batch_size=1,
        batch_format="pyarrow",
    )
