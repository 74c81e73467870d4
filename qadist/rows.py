"""The one reader of input rows (JSONL, Parquet, JSON), with the checks every stage shares and the
rejects format.

Questions, documents and pairs are all read here, so a file is accepted or rejected the same way
by every stage:
- JSONL: rows end at "\\n" only (a "\\r" before it is dropped). `str.splitlines()` or a text-mode
  file would also cut a row at a bare "\\r" (JSON whitespace between fields) or at U+2028 / U+0085
  (allowed unescaped inside JSON strings). Read in chunks: memory stays
  flat whatever the file's size. A line that is not JSON is an `Unparsable` row (a reject), not an
  error for the file.
- Parquet: record batch by record batch.
- JSON: an official SQuAD file (flattened to pairs) or a list of rows, read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qadist import storage
from qadist.errors import UserError, first_line

ROW_SUFFIXES = (".json", ".jsonl", ".parquet")
READ_CHUNK = 8 << 20  # bytes of a JSONL file read at a time
MAX_RAW_CHARS = 10_000  # of a rejected row kept in the rejects output


@dataclass(frozen=True)
class Unparsable:
    """A row that is not JSON at all: the reason and the raw text, for the rejects output."""

    reason: str
    text: str


def parse_json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return Unparsable(f"not valid JSON ({e.msg} at column {e.colno})", line)


def jsonl_rows(data: bytes, first_row: int = 1, max_rows: int | None = None) -> Iterator[tuple[int, Any]]:
    """(row number, raw row or `Unparsable`) for the lines of `data`, numbered from `first_row`;
    blank lines are counted but not yielded."""
    lines = data.split(b"\n")
    for n, line in enumerate(lines[:max_rows] if max_rows is not None else lines, start=first_row):
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            yield n, parse_json_line(text)


def jsonl_line(row: Any) -> bytes:
    """One row as every JSONL file qadist writes holds it: UTF-8 with non-ASCII text kept readable,
    ending in "\n". U+2028, U+0085 and the like stay raw inside strings, which is why every reader
    here splits on "\n" only (`jsonl_rows`)."""
    return (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """Rows -> a JSONL file's bytes (`jsonl_line` each): the one JSONL writer."""
    return b"".join(jsonl_line(r) for r in rows)


def read_jsonl(uri: str) -> list[Any]:
    """Every row of a JSONL file that qadist wrote itself (staging, generations' part files): split on
    "\n" only, as every JSONL read here; a row that does not parse is a bug, not a user's input."""
    rows = []
    for n, row in jsonl_rows(storage.read_bytes(uri)):
        if isinstance(row, Unparsable):
            raise RuntimeError(f"{uri}: row {n} written by qadist is {row.reason}")
        rows.append(row)
    return rows


def _jsonl_file(file_uri: str) -> Iterator[tuple[int, Any]]:
    fs, path = storage.resolve(file_uri)
    n, rest, seen = 1, b"", False
    with fs.open_input_stream(path) as f:
        while chunk := f.read(READ_CHUNK):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for row in jsonl_rows(data[:cut], n):
                seen = True
                yield row
            n += data.count(b"\n", 0, cut)
    for row in jsonl_rows(rest, n):
        seen = True
        yield row
    if not seen:
        raise UserError(f"{file_uri}: the file is empty; give at least one row")


def _parquet_file(file_uri: str) -> Iterator[tuple[int, Any]]:
    fs, path = storage.resolve(file_uri)
    try:
        with fs.open_input_file(path) as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(
            f"{file_uri}: not a readable Parquet file ({first_line(str(e))}); rewrite it or give JSONL"
        ) from e


def flatten_squad(obj: dict, source: str) -> list[dict]:
    """Official SQuAD layout (`data[].paragraphs[].qas[]`) -> pairs rows (unanswerable: no answers)."""
    rows = []
    for article in obj.get("data", []):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append(
                    {
                        "id": qa.get("id"),
                        "question": qa.get("question"),
                        "context": paragraph.get("context"),
                        "title": article.get("title"),
                        "answers": {
                            "text": [a.get("text") for a in answers],
                            "answer_start": [a.get("answer_start") for a in answers],
                        },
                    }
                )
    if not rows and "data" not in obj:
        raise UserError(f"{source}: a JSON object without 'data'; give official SQuAD JSON or JSONL pairs")
    return rows


def _json_file(file_uri: str) -> Iterator[tuple[int, Any]]:
    data = storage.read_bytes(file_uri)
    if not data.strip():
        raise UserError(f"{file_uri}: the file is empty; give at least one row")
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "encoding"
        raise UserError(
            f"{file_uri}: malformed JSON at {where}; give official SQuAD JSON, or one row per line as .jsonl"
        ) from e
    rows = obj if isinstance(obj, list) else flatten_squad(obj, file_uri) if isinstance(obj, dict) else None
    if rows is None:
        raise UserError(f"{file_uri}: JSON must be a SQuAD object or a list of pairs (or rows)")
    yield from enumerate(rows, start=1)


def iter_file_rows(file_uri: str) -> Iterator[tuple[int, Any]]:
    """(row number from 1, raw row or `Unparsable`) for every row of one file."""
    if file_uri.endswith(".jsonl"):
        return _jsonl_file(file_uri)
    if file_uri.endswith(".parquet"):
        return _parquet_file(file_uri)
    return _json_file(file_uri)


def input_files(uri: str, flag: str = "the input") -> list[dict[str, Any]]:
    """Every row file under `uri` (a file or a folder/prefix) with its size, in name order: what a
    generation of a growing output records as read (`qadist.outputs`)."""
    found = storage.list_sizes(uri, ROW_SUFFIXES)  # sizes from the listing: no request per file
    if not found:
        raise UserError(f"{uri}: no .json, .jsonl or .parquet files found; check {flag}")
    return found


def iter_raw_rows(uri: str, flag: str = "the input") -> Iterator[tuple[str, int, Any]]:
    """(file URI, row number from 1, raw row or `Unparsable`) for every row under `uri` (a file or
    a folder/prefix), files in name order."""
    files = storage.list_files(uri, ROW_SUFFIXES)
    if not files:
        raise UserError(f"{uri}: no .json, .jsonl or .parquet files found; check {flag}")
    for file_uri in files:
        for n, raw in iter_file_rows(file_uri):
            yield file_uri, n, raw


# ---- checks every stage shares ---------------------------------------------------------------


def check_id(raw: dict, what: str = "id") -> tuple[str | None, str | None]:
    """A row's id as a string, or the reason it has none usable."""
    row_id = raw.get("id")
    if row_id is None or (isinstance(row_id, str) and not row_id.strip()):
        return None, "missing field 'id'"
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
        return None, f"field 'id' is {type(row_id).__name__}, not a string"
    return str(row_id), None


def check_text(raw: dict, name: str) -> tuple[str | None, str | None]:
    """A required, non-empty string field, or the reason it is not one."""
    value = raw.get(name)
    if value is None:
        return None, f"missing field '{name}'"
    if not isinstance(value, str):
        return None, f"field '{name}' is {type(value).__name__}, not a string"
    if not value.strip():
        return None, f"field '{name}' is empty"
    return value, None


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (JSON's "\\ud800" escape makes one), else None.

    Such a string is not Unicode text: tokenizers refuse it and UTF-8 cannot encode it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def encodable(text: str) -> str:
    """`text` with lone surrogates written as backslash escapes, so it can go to a UTF-8 file."""
    return text if lone_surrogate(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad_unicode(fields: list[tuple[str, str]]) -> str | None:
    """A reject reason when one of the (name, text) fields holds a lone surrogate: not Unicode text,
    so the tokenizer and the UTF-8 writers would fail the run."""
    for name, value in fields:
        at = lone_surrogate(value)
        if at is not None:
            return (
                f"field '{name}' is not valid Unicode (a lone surrogate at character {at}); re-encode the row as UTF-8"
            )
    return None


def make_reject(raw: Any, source: str, row: int, reason: str) -> dict:
    """The rejects format: `id` (or None), `source` file, `row` number, `reason`, and the raw row as JSON."""
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    text = raw.text if isinstance(raw, Unparsable) else json.dumps(raw, default=str, ensure_ascii=False)
    if lone_surrogate(text) is not None:  # \u escapes keep the raw row exact and writable as UTF-8
        text = json.dumps(raw, default=str)
    # Every field must encode as UTF-8, or writing the rejects file would fail the whole block.
    return {
        "id": None if raw_id is None else encodable(str(raw_id)),
        "source": encodable(source),
        "row": row,
        "reason": encodable(reason),
        "raw": text[:MAX_RAW_CHARS],
    }
