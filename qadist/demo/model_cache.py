"""The demo's cache of the teacher side's models (the teachers, the pre-trained encoder, the
self-distilled teacher), keyed by what made them.

A teacher is the slowest part of a demo run and, for given settings, always the same model; so a
finished one is copied to `--teacher-cache` under a key that hashes everything it was made from:
the starting model's files, the training file's bytes, the training settings and qadist's version.
A later run (any folder) whose key matches copies it back instead of training, and says so. Any
change to the data, the settings or the code's version is another key: a stale model is never
reused. Plain folders and hashes, no library: nothing else here needs one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs

from qadist import __version__, storage


def file_digest(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def folder_digest(path: str) -> str:
    """A model folder's content: every file's name and bytes (sorted by name)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def cache_key(kind: str, start: str, data_uri: str, settings: dict) -> str:
    """`start`: the starting model's local folder; `data_uri`: the file it is trained on."""
    made_of = {
        "kind": kind,
        "start": folder_digest(start),
        "data": file_digest(data_uri),
        "settings": settings,
        "qadist": __version__,
    }
    return f"{kind}-{hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:20]}"


def train_or_reuse(cache: str, key: str, run_out: str, train: Callable[[], object], found: str) -> None:
    """The model `key` copied from `cache` into `<run_out>/final` (saying so: `found` and where), or
    `train()` into `run_out` and the result kept in the cache (saying so); no cache or key: `train()` only."""
    final = storage.join(run_out, "final")
    if key and restore(cache, key, final):
        print(f"{found} ({cache}/{key})", flush=True)
        return
    if key:
        print(f"not in the teacher cache: trained now, then kept for later runs ({cache}/{key})", flush=True)
    train()
    if key:
        keep(cache, key, final)


def restore(cache: str, key: str, final: str) -> bool:
    """Copy the cached model `key` to the local folder `final`; whether there was one."""
    cached = os.path.join(os.path.expanduser(cache), key)
    if not os.path.exists(os.path.join(cached, "config.json")):
        return False
    copy_folder(cached, final)
    return True


def keep(cache: str, key: str, final: str) -> None:
    """Copy a finished model into the cache (written aside, then renamed: a killed copy is never a hit)."""
    root = os.path.expanduser(cache)
    target = os.path.join(root, key)
    if os.path.exists(target):
        return
    os.makedirs(root, exist_ok=True)
    partial = f"{target}.partial-{os.getpid()}"
    copy_folder(final, partial)
    os.replace(partial, target)


def copy_folder(source: str, destination: str) -> None:
    """A folder's files, local or S3 on either side (pyarrow's recursive copy)."""
    source_fs, source_path = storage.resolve(source)
    destination_fs, destination_path = storage.resolve(destination)
    destination_fs.create_dir(destination_path, recursive=True)
    pafs.copy_files(source_path, destination_path, source_filesystem=source_fs, destination_filesystem=destination_fs)
