"""Question-document pairs: validation and the single-process reader (rows come from `qadist.rows`).

Everything is flattened to the pairs layout of DESIGN.md: `id`, `question`, `context`, optional
`title`, `doc_id`, `score` and `answers` = {"text": [...], "answer_start": [...]}. Validation is a
pure function (`validate_pair`) so the Ray Data label stage and the single-process readers reject
the same rows for the same reasons.
"""

from __future__ import annotations

import logging
from typing import Any

from qadist import storage
from qadist.errors import UserError
from qadist.label_studio import is_task, pair_from_task
from qadist.rows import Unparsable, bad_unicode, check_id, check_text, iter_raw_rows, make_reject

log = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 100_000
OPTIONAL_FIELDS = ("title", "doc_id", "score")


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
    if not all(isinstance(t, str) for t in texts) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in starts
    ):
        return "answers.text must be strings and answers.answer_start integers"
    return {"text": texts, "answer_start": [int(s) for s in starts]}


def _bad_unicode(pair: dict) -> str | None:
    fields = [("id", pair["id"]), ("question", pair["question"]), ("context", pair["context"])]
    return bad_unicode(fields + [("answers.text", t) for t in pair.get("answers", {}).get("text", [])])


def validate_pair(raw: Any, max_context_chars: int = MAX_CONTEXT_CHARS) -> tuple[dict | None, str | None]:
    """A raw row -> (clean pair, None) or (None, reason it cannot be used). A task of a Label Studio
    export (`qadist select`'s tasks, annotated) is read as the pair it labels."""
    if is_task(raw):
        raw, reason = pair_from_task(raw)
        if reason:
            return None, reason
    if not isinstance(raw, dict):
        return None, f"row is {type(raw).__name__}, not a JSON object"
    row_id, reason = check_id(raw)
    if reason:
        return None, reason
    question, reason = check_text(raw, "question")
    if reason:
        return None, reason
    context, reason = check_text({"context": raw.get("context", raw.get("text"))}, "context")
    if reason:
        return None, reason
    if len(context) > max_context_chars:
        return None, f"context has {len(context):,} characters, over max_context_chars={max_context_chars:,}"
    pair = {"id": row_id, "question": question, "context": context}
    for name in OPTIONAL_FIELDS:
        if raw.get(name) is not None:
            pair[name] = raw[name]
    if raw.get("answers") is not None:
        answers = _normalize_answers(raw["answers"])
        if isinstance(answers, str):
            return None, answers
        for text, start in zip(answers["text"], answers["answer_start"]):
            if not 0 <= start <= len(context) - len(text) or context[start : start + len(text)] != text:
                return None, f"answer {text[:40]!r} is not at answer_start={start} in the context"
        pair["answers"] = answers
    reason = _bad_unicode(pair)
    return (None, reason) if reason else (pair, None)


def read_pairs(
    uri: str, strict: bool = True, max_context_chars: int = MAX_CONTEXT_CHARS
) -> tuple[list[dict], list[dict]]:
    """All pairs under `uri` -> (pairs, rejects). With `strict`, the first bad row is a UserError.

    Rejects carry `id` (or None), `source`, `row`, `reason` and the raw row as JSON.
    """
    pairs: list[dict] = []
    rejects: list[dict] = []
    first_seen: dict[str, str] = {}
    for file_uri, n, raw in iter_raw_rows(uri, "the path"):
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


def gold_answers(pairs: list[dict], source: str) -> dict[str, list[str]]:
    """id -> gold answer texts (empty: unanswerable), for the SQuAD 2.0 metric."""
    if not any("answers" in p for p in pairs):
        raise UserError(f"{source}: no row has 'answers'; evaluate needs SQuAD JSON or pairs with answers")
    return {p["id"]: list(p.get("answers", {}).get("text", [])) for p in pairs}
