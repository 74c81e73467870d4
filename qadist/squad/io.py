"""Readers for question-document pairs: official SQuAD JSON, JSONL and Parquet; a file or a prefix.

Everything is flattened to the pairs layout of DESIGN.md: `id`, `question`, `context`, optional
`title`, `doc_id`, `score` and `answers` = {"text": [...], "answer_start": [...]}. Validation is a
pure function (`validate_pair`) so the Ray Data label stage and the single-process readers reject
the same rows for the same reasons.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qadist import storage
from qadist.errors import UserError

log = logging.getLogger(__name__)

PAIR_SUFFIXES = (".json", ".jsonl", ".parquet")
MAX_CONTEXT_CHARS = 100_000
OPTIONAL_FIELDS = ("title", "doc_id", "score")


def flatten_squad(obj: dict, source: str) -> list[dict]:
    """Official SQuAD layout (`data[].paragraphs[].qas[]`) -> pairs rows (unanswerable: no answers)."""
    rows = []
    for article in obj.get("data", []):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({
                    "id": qa.get("id"),
                    "question": qa.get("question"),
                    "context": paragraph.get("context"),
                    "title": article.get("title"),
                    "answers": {
                        "text": [a.get("text") for a in answers],
                        "answer_start": [a.get("answer_start") for a in answers],
                    },
                })
    if not rows and "data" not in obj:
        raise UserError(f"{source}: a JSON object without 'data'; give official SQuAD JSON or JSONL pairs")
    return rows


def _normalize_answers(answers: Any) -> dict | str:
    """Either layout (HF dict of lists, or SQuAD list of dicts) -> dict of lists, or a reject reason."""
    if isinstance(answers, list):
        if not all(isinstance(a, dict) for a in answers):
            return "answers must be a list of {text, answer_start} objects"
        answers = {"text": [a.get("text") for a in answers], "answer_start": [a.get("answer_start") for a in answers]}
    if not isinstance(answers, dict):
        return "answers must be {'text': [...], 'answer_start': [...]}"
    texts, starts = answers.get("text"), answers.get("answer_start")
    texts, starts = [] if texts is None else texts, [] if starts is None else starts
    if not isinstance(texts, (list, tuple)) or not isinstance(starts, (list, tuple)):
        return "answers.text and answers.answer_start must be lists"  # a bare string would split into characters
    if len(texts) != len(starts):
        return "answers.text and answers.answer_start differ in length"
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        return "answers.text must be strings and answers.answer_start integers"
    return {"text": texts, "answer_start": [int(s) for s in starts]}


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
            return f"field '{name}' is not valid Unicode (a lone surrogate at character {at}); re-encode the row as UTF-8"
    return None


def _bad_unicode(pair: dict) -> str | None:
    fields = [("id", pair["id"]), ("question", pair["question"]), ("context", pair["context"])]
    return bad_unicode(fields + [("answers.text", t) for t in pair.get("answers", {}).get("text", [])])


def validate_pair(raw: Any, max_context_chars: int = MAX_CONTEXT_CHARS) -> tuple[dict | None, str | None]:
    """A raw row -> (clean pair, None) or (None, reason it cannot be used)."""
    if not isinstance(raw, dict):
        return None, f"row is {type(raw).__name__}, not a JSON object"
    row_id = raw.get("id")
    if row_id is None or (isinstance(row_id, str) and not row_id.strip()):
        return None, "missing field 'id'"
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
        return None, f"field 'id' is {type(row_id).__name__}, not a string"
    context = raw.get("context", raw.get("text"))
    for name, value in (("question", raw.get("question")), ("context", context)):
        if value is None:
            return None, f"missing field '{name}'"
        if not isinstance(value, str):
            return None, f"field '{name}' is {type(value).__name__}, not a string"
        if not value.strip():
            return None, f"field '{name}' is empty"
    if len(context) > max_context_chars:
        return None, f"context has {len(context):,} characters, over max_context_chars={max_context_chars:,}"
    pair = {"id": str(row_id), "question": raw["question"], "context": context}
    for name in OPTIONAL_FIELDS:
        if raw.get(name) is not None:
            pair[name] = raw[name]
    if raw.get("answers") is not None:
        answers = _normalize_answers(raw["answers"])
        if isinstance(answers, str):
            return None, answers
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text:
                return None, f"answer {text[:40]!r} is not at answer_start={start} in the context"
        pair["answers"] = answers
    reason = _bad_unicode(pair)
    return (None, reason) if reason else (pair, None)


def iter_raw_rows(uri: str) -> Iterator[tuple[str, int, Any]]:
    """(file URI, row number from 1, raw row or `Unparsable`) for every row under `uri`."""
    files = storage.list_files(uri, PAIR_SUFFIXES)
    if not files:
        raise UserError(f"{uri}: no .json, .jsonl or .parquet files found; check the path")
    for file_uri in files:
        data = storage.read_bytes(file_uri)
        if not data.strip():
            raise UserError(f"{file_uri}: the file is empty; give at least one pair")
        if file_uri.endswith(".parquet"):
            for n, row in enumerate(_parquet_rows(file_uri, data), start=1):
                yield file_uri, n, row
        elif file_uri.endswith(".jsonl"):
            # Lines end at "\n" only (as in `qadist.label.blocks`): str.splitlines() would also cut a row at
            # U+2028, U+0085 or \x1c, which JSON allows unescaped inside strings.
            for n, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), start=1):
                if line.strip():
                    yield file_uri, n, parse_json_line(line.rstrip("\r"))
        else:
            yield from _json_rows(file_uri, data)


def _parquet_rows(file_uri: str, data: bytes) -> list[dict]:
    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{file_uri}: not a readable Parquet file ({str(e).splitlines()[0]}); rewrite it or give JSONL pairs") from e


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


def _json_rows(file_uri: str, data: bytes) -> Iterator[tuple[str, int, Any]]:
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "encoding"
        raise UserError(f"{file_uri}: malformed JSON at {where}; give official SQuAD JSON, or one pair per line as .jsonl") from e
    rows = obj if isinstance(obj, list) else flatten_squad(obj, file_uri) if isinstance(obj, dict) else None
    if rows is None:
        raise UserError(f"{file_uri}: JSON must be a SQuAD object or a list of pairs")
    for n, row in enumerate(rows, start=1):
        yield file_uri, n, row


def read_pairs(uri: str, strict: bool = True, max_context_chars: int = MAX_CONTEXT_CHARS) -> tuple[list[dict], list[dict]]:
    """All pairs under `uri` -> (pairs, rejects). With `strict`, the first bad row is a UserError.

    Rejects carry `id` (or None), `source`, `row`, `reason` and the raw row as JSON.
    """
    pairs: list[dict] = []
    rejects: list[dict] = []
    first_seen: dict[str, str] = {}
    for file_uri, n, raw in iter_raw_rows(uri):
        pair, reason = (None, raw.reason) if isinstance(raw, Unparsable) else validate_pair(raw, max_context_chars)
        if pair is not None and pair["id"] in first_seen:
            pair, reason = None, f"duplicate id {pair['id']!r} (first at {first_seen[pair['id']]})"
        if pair is None:
            if strict:
                raise UserError(f"{file_uri}: row {n}: {reason}; fix or remove the row")
            rejects.append(make_reject(raw, file_uri, n, reason))
            continue
        first_seen[pair["id"]] = f"{storage.basename(file_uri)} row {n}"
        pairs.append(pair)
    if not pairs and strict:
        raise UserError(f"{uri}: no pairs found; give SQuAD JSON, JSONL or Parquet pairs")
    return pairs, rejects


def make_reject(raw: Any, source: str, row: int, reason: str) -> dict:
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
        "raw": text[:10_000],
    }
