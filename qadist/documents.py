"""Documents: the rows `pairs`, `pretrain` and `serve` read (`id`, `text` or `context`, optional
`title`), validated once here; every unusable row becomes a reject with its reason.
"""

from __future__ import annotations

from typing import Any

from qadist.errors import UserError
from qadist.rows import Unparsable, bad_unicode, check_id, check_text, iter_raw_rows, make_reject


def validate_document(raw: Any) -> tuple[dict | None, str | None]:
    """A raw row -> ({id, text, title}, None) or (None, the reason it cannot be used)."""
    if not isinstance(raw, dict):
        return None, f"row is {type(raw).__name__}, not a JSON object"
    doc_id, reason = check_id(raw)
    if reason:
        return None, reason
    name = "text" if raw.get("text") is not None else "context"
    if raw.get(name) is None:
        return None, "missing field 'text' (or 'context')"
    text, reason = check_text(raw, name)
    if reason:
        return None, reason
    title = raw.get("title")
    if title is not None and not isinstance(title, str):
        return None, f"field 'title' is {type(title).__name__}, not a string"
    reason = bad_unicode([("id", doc_id), (name, text), ("title", title or "")])
    if reason:
        return None, reason
    return {"id": doc_id, "text": text, "title": title}, None


def load_documents(uri: str) -> tuple[list[dict], list[dict]]:
    """Every usable document under `uri` -> (documents: id, text, title, source, row; rejects).
    No usable document is a UserError."""
    docs: list[dict] = []
    rejects: list[dict] = []
    first_seen: dict[str, str] = {}
    for source, n, raw in iter_raw_rows(uri, "--documents"):
        doc, reason = (None, raw.reason) if isinstance(raw, Unparsable) else validate_document(raw)
        if doc is not None and doc["id"] in first_seen:
            doc, reason = None, f"duplicate document id {doc['id']!r} (first at {first_seen[doc['id']]})"
        if doc is None:
            rejects.append(make_reject(raw, source, n, reason))
            continue
        first_seen[doc["id"]] = f"{source} row {n}"
        docs.append({**doc, "source": source, "row": n})  # where it came from, for a later stage's reject
    if not docs:
        why = f" ({len(rejects)} rows rejected, first: {rejects[0]['reason']})" if rejects else ""
        raise UserError(f"{uri}: no usable documents{why}; give JSONL or Parquet rows with 'id' and 'text'")
    return docs, rejects
