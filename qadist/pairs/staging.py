"""Pass 1 of `qadist pairs`: the question rows, streamed through the driver once.

Bad rows and duplicate ids go to rejects, identical questions (case and whitespace aside) are
merged (the first id is kept, the others listed in `duplicates/`, the count carried on the pair),
and unique questions are staged in `_work/` in files of `STAGE_ROWS` (the unit of work of a
matching actor, `qadist.pairs.matching`). The driver keeps only a set of ids and a digest per
distinct question. `PartWriter` writes every part file of the stage's output.
"""

from __future__ import annotations

import io
from array import array
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qadist import storage
from qadist.pairs.generations import question_key
from qadist.rows import Unparsable, bad_unicode, check_id, check_text, jsonl_line, make_reject, read_jsonl

STAGE_ROWS = 4096  # unique questions per staged file: the unit of work of a matching actor


def normalize_question(text: str) -> str:
    """The form under which two questions count as identical: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def validate_question(raw: Any) -> tuple[dict | None, str | None]:
    """A raw row -> ({id, question}, None) or (None, the reason it cannot be used)."""
    if not isinstance(raw, dict):
        return None, f"row is {type(raw).__name__}, not a JSON object"
    qid, reason = check_id(raw)
    if reason:
        return None, reason
    question, reason = check_text(raw, "question")
    if reason:
        return None, reason
    reason = bad_unicode([("id", qid), ("question", question)])
    if reason:
        return None, reason
    return {"id": qid, "question": question}, None


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and a long-running actor's
    or driver's RSS creeps up with the number of batches it has seen)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PartWriter:
    """Rows -> numbered part files under a prefix (`<name>-00000.jsonl`), each written whole.

    A part is written once it holds `rows_per_file` rows or `max_bytes` of JSON, so memory stays
    bounded whatever the number of rows. JSONL rows are buffered already encoded (a row's dict
    costs several times its JSON); Parquet rows as dicts, for the Arrow schema.
    """

    def __init__(
        self,
        prefix: str,
        name: str = "part",
        fmt: str = "jsonl",
        rows_per_file: int = 10_000,
        max_bytes: int = 64 << 20,
    ):
        self.prefix, self.name, self.fmt = prefix, name, fmt
        self.rows_per_file, self.max_bytes = rows_per_file, max_bytes
        self.buffer: list = []
        self.buffered_bytes = 0
        self.files: list[dict] = []
        self.rows = 0

    def add(self, row: dict) -> None:
        line = jsonl_line(row)
        self.buffer.append(row if self.fmt == "parquet" else line)
        self.buffered_bytes += len(line)
        self.rows += 1
        if len(self.buffer) >= self.rows_per_file or self.buffered_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        uri = storage.join(self.prefix, f"{self.name}-{len(self.files):05d}.{self.fmt}")
        if self.fmt == "parquet":
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(self.buffer), sink)
            data = sink.getvalue()
        else:
            data = b"".join(self.buffer)
        storage.write_bytes(uri, data)
        self.files.append({"path": uri, "rows": len(self.buffer)})
        self.buffer, self.buffered_bytes = [], 0
        del data
        release_memory()


class QuestionStager:
    """Pass 1 over the questions: rejects, duplicate ids, identical-question merging, staging."""

    def __init__(
        self, out: str, prefix: str = "", earlier_ids: set[str] | None = None, earlier: dict[bytes, str] | None = None
    ):
        self.staged = PartWriter(storage.join(out, "_work", "questions"), rows_per_file=STAGE_ROWS)
        self.rejects = PartWriter(storage.join(out, "rejects"), name=f"{prefix}questions")
        self.duplicates = PartWriter(storage.join(out, "duplicates"), name=f"{prefix}part")
        self.earlier_ids = earlier_ids or set()  # ids an earlier generation took
        self.earlier = earlier or {}  # normalised question an earlier generation paired -> its id
        self.seen_ids: set[str] = set()
        self.slots: dict[bytes, int] = {}  # digest of the normalised question -> slot
        self.rep_ids: list[str] = []  # slot -> id of its first question
        self.counts = array("I")  # slot -> how many logged questions it stands for
        self.rows_in = 0
        self.first_reason: str | None = None

    def add(self, source: str, n: int, raw: Any) -> None:
        self.rows_in += 1
        q, reason = (None, raw.reason) if isinstance(raw, Unparsable) else validate_question(raw)
        if q is not None and q["id"] in self.seen_ids:
            q, reason = None, f"duplicate question id {q['id']!r}"
        elif q is not None and q["id"] in self.earlier_ids:
            q, reason = None, f"duplicate question id {q['id']!r} (taken by an earlier generation of this output)"
        if q is None:
            self.first_reason = self.first_reason or f"{storage.basename(source)} row {n}: {reason}"
            self.rejects.add(make_reject(raw, source, n, reason))
            return
        self.seen_ids.add(q["id"])
        key = question_key(normalize_question(q["question"]))
        if key in self.earlier:  # paired by an earlier generation: merged into it, not paired again
            self.duplicates.add({"id": q["id"], "same_as": self.earlier[key], "source": source, "row": n,
                                 "earlier_generation": True})  # fmt: skip
            return
        slot = self.slots.get(key)
        if slot is not None:
            self.counts[slot] += 1
            self.duplicates.add({"id": q["id"], "same_as": self.rep_ids[slot], "source": source, "row": n})
            return
        slot = self.slots[key] = len(self.rep_ids)
        self.rep_ids.append(q["id"])
        self.counts.append(1)
        self.staged.add({"slot": slot, "id": q["id"], "question": q["question"], "source": source, "row": n})

    def finish(self) -> None:
        for w in (self.staged, self.rejects, self.duplicates):
            w.flush()


def read_staged(uri: str) -> dict[str, list]:
    """A staged file -> its question rows as columns (the filesystem is built where this runs)."""
    cols: dict[str, list] = {k: [] for k in ("slot", "id", "question", "source", "row")}
    for row in read_jsonl(uri):  # "\n" only: a question may hold U+2028 and other line separators
        for k in cols:
            cols[k].append(row[k])
    return cols
