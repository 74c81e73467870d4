"""The passage embeddings of a pairs output, kept so a later generation with the same documents
does not embed them again (the costly half of building the index; BM25 and the passage layout are
rebuilt, in seconds).

`<out>/_index/<key>.npy`, where the key hashes what the embeddings depend on: the document files
and their sizes, the embedding model, and the passage settings. Written whole (one put); a missing
or unreadable file just means embedding again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import numpy as np

from qadist import storage

log = logging.getLogger(__name__)


def cache_key(documents: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    payload = json.dumps({"documents": documents, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def cache_uri(out: str, key: str) -> str:
    return storage.join(out, "_index", f"{key}.npy")


def load(out: str, key: str, rows: int) -> np.ndarray | None:
    """The cached embeddings, or None (absent, unreadable, or not one row per passage)."""
    uri = cache_uri(out, key)
    if not storage.exists(uri):
        return None
    try:
        emb = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); embedding the passages again", uri, e)
        return None
    return emb if emb.shape[0] == rows else None


def save(out: str, key: str, emb: np.ndarray) -> None:
    sink = io.BytesIO()
    np.save(sink, emb, allow_pickle=False)
    storage.write_bytes(cache_uri(out, key), sink.getvalue())
