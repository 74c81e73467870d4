"""`qadist pairs` onto an output that already holds pairs: only question files no generation read.

Each run that finds new question files under `--questions` commits a generation (`qadist.outputs`):
its part files are named `g<n:06d>-...` (generation 1 keeps the plain names), so `qadist label
--pairs <out>/pairs` sees them as new files and labels just those. Questions already handled by an
earlier generation are not paired again: a repeated id is a reject, and a question identical
(case and whitespace aside) to one paired earlier is merged into it (`duplicates/`, `same_as` the
earlier id). A file read by a generation must not change afterwards.
"""

from __future__ import annotations

import hashlib
from typing import Any

from qadist import storage
from qadist.errors import UserError
from qadist.outputs import committed_inputs
from qadist.rows import input_files, read_jsonl


def part_prefix(number: int) -> str:
    """The name prefix of generation `number`'s part files ('' for the first: the names it always had)."""
    return "" if number == 1 else f"g{number:06d}-"


def new_question_files(uri: str, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The question files no committed generation read; a changed one is an error naming it."""
    held = committed_inputs(committed)
    fresh = []
    for f in input_files(uri, "--questions"):
        if f["uri"] not in held:
            fresh.append(f)
        elif held[f["uri"]][0] != f["size"]:
            size, number = held[f["uri"]]
            raise UserError(
                f"{f['uri']}: changed since generation {number} paired it ({size:,} -> {f['size']:,} bytes); "
                "add new questions as new files, or pair everything again with --overwrite"
            )
    return fresh


def question_key(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def earlier_questions(out: str, committed: list[dict[str, Any]], normalize: Any) -> tuple[set[str], dict[bytes, str]]:
    """Ids the committed generations took (paired, or merged into a pair) and, per normalised question
    they paired, its id: what a new generation must not pair again. (A question left unmatched
    earlier may be tried again.)"""
    ids: set[str] = set()
    paired: dict[bytes, str] = {}
    for g in committed:
        for f in g["files"]["pairs"]:
            for row in read_rows(storage.join(out, f["path"]), ("question_id", "question")):
                ids.add(row["question_id"])
                paired.setdefault(question_key(normalize(row["question"])), row["question_id"])
        for f in g["files"]["duplicates"]:
            ids.update(r["id"] for r in read_rows(storage.join(out, f["path"]), ("id",)))
    return ids, paired


def read_rows(uri: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            return pq.read_table(f, columns=list(columns)).to_pylist()
    return [{k: row.get(k) for k in columns} for row in read_jsonl(uri)]
