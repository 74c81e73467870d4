"""The passage embeddings of a pairs output, kept so a later generation with the same documents
does not embed them again (the costly half of building the index; BM25 and the passage layout are
rebuilt, in seconds).

`<out>/_index/<key>.npy`, where the key hashes what the embeddings depend on: the document files
with their sizes and modification times, the embedding model (and its folder's files, for a local
one), and the passage settings. Written whole (one put); a missing or unreadable file just means
embedding again; keys of documents that changed since are removed when a new one is written.
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


def signature(uri: str) -> list[dict[str, Any]]:
    """(uri, size, mtime) of every file under `uri` (a file or folder; empty when absent or remote-only)."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = [
        {"path": i.path, "size": i.size, "mtime": i.mtime.timestamp() if i.mtime else None}
        for i in infos
        if i.type == pafs.FileType.File
    ]
    return sorted(found, key=lambda d: d["path"])


def cache_key(documents: str, model_path: str, settings: dict[str, Any]) -> str:
    payload = json.dumps(
        {"documents": signature(documents), "model": signature(model_path), **settings}, sort_keys=True, default=str
    )
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
    """Write the embeddings under `key`, and remove the keys of earlier documents (never read again)."""
    sink = io.BytesIO()
    np.save(sink, emb, allow_pickle=False)
    storage.write_bytes(cache_uri(out, key), sink.getvalue())
    folder = storage.join(out, "_index")
    for uri in storage.list_files(folder, (".npy",)):
        if storage.basename(uri) != f"{key}.npy":
            storage.delete(uri)
