"""The question log a serving replica writes (`qadist serve --log-questions URI`), off the request path.

Layout: `URI/date=YYYY-MM-DD/part-<replica>-<seq>.jsonl`, one JSON object a line, partitioned by the
UTC day of each row's `time`. `<replica>` is unique per process (host, pid and a random suffix) and
`<seq>` counts that writer's parts, so replicas never collide and a restarted replica never
overwrites its predecessor's parts. Each part is written whole (one PUT on S3, a rename locally):
a reader sees a part complete or not at all, never half a row.

Rows: `id` (= `request_id`, so the log is a `--questions` input of `qadist pairs` as it is),
`request_id`, `question`, `context` (unless contexts are kept out) or `doc_id`, `model_version`,
`answer`, `no_answer_probability`, `time` (UTC, ISO 8601). Nothing else: no headers, client
addresses or credentials ever reach this module.

The request path only calls `append`, which puts the row in a bounded queue and returns; when the
queue is full the row is dropped and counted (`dropped`). A writer thread takes rows from the queue
and writes a part when it holds `roll_rows` rows or its oldest row is `roll_s` seconds old (and at
a change of UTC day). `close()` writes everything still queued. What a crash (SIGKILL) loses is
what was accepted but not yet in a written part: at most the rows of the last `roll_s` seconds
(plus a write in progress); rows already written are never written again, so nothing is duplicated.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any

from qadist import storage
from qadist.rows import jsonl_bytes

log = logging.getLogger(__name__)

_STOP = object()


def replica_tag() -> str:
    """Unique per process: host, pid and a random suffix (a restarted replica gets a new one)."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_row(
    request_id: str,
    question: str,
    context: str | None,
    reply: dict[str, Any],
    model_version: str | None,
    keep_context: bool = True,
    time_utc: str | None = None,
) -> dict[str, Any]:
    """One question-log row from a question and its reply (the fields the design names, no others)."""
    row: dict[str, Any] = {"id": request_id, "request_id": request_id, "question": question}
    if context is not None and keep_context:
        row["context"] = context
    if reply.get("doc_id") is not None:
        row["doc_id"] = reply["doc_id"]
    row.update(
        model_version=model_version,
        answer=reply.get("answer", ""),
        no_answer_probability=float(reply.get("no_answer_probability", 1.0)),
        time=time_utc or utc_now(),
    )
    return row


class QuestionLog:
    """A bounded, asynchronous writer of question-log part files (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        roll_rows: int = 10_000,
        roll_s: float = 60.0,
        buffer_rows: int = 10_000,
        tag: str | None = None,
    ):
        self.uri, self.roll_rows, self.roll_s = uri.rstrip("/"), roll_rows, roll_s
        self.tag = tag or replica_tag()
        self.queue: queue.Queue = queue.Queue(maxsize=buffer_rows)
        self.written = 0  # rows in parts written
        self.dropped = 0  # rows refused because the buffer was full
        self.failed = 0  # rows lost to a part that could not be written (after retries)
        self.parts = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="question-log", daemon=True)
        self._thread.start()

    # The request path -------------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> bool:
        """Queue a row for writing; never blocks. False (and counted) when the buffer is full."""
        try:
            self.queue.put_nowait(row)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False

    def counts(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed, "parts": self.parts}

    def close(self, timeout_s: float = 60.0) -> dict[str, int]:
        """Write every queued row, then stop the writer thread (a clean stop loses nothing)."""
        if self._thread.is_alive():
            self.queue.put(_STOP)  # blocking: the stop marker must get in even when the buffer is full
            self._thread.join(timeout_s)
        return self.counts()

    # The writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        day, opened = None, time.monotonic()
        while True:
            wait = max(0.0, opened + self.roll_s - time.monotonic()) if pending else None
            try:
                row = self.queue.get(timeout=wait)
            except queue.Empty:
                row = None
            if row is _STOP:
                self._write(day, pending)
                return
            if row is not None:
                row_day = str(row.get("time", ""))[:10] or utc_now()[:10]
                if pending and row_day != day:  # a new UTC day starts a new partition
                    self._write(day, pending)
                    pending = []
                if not pending:
                    day, opened = row_day, time.monotonic()
                pending.append(row)
            if pending and (len(pending) >= self.roll_rows or time.monotonic() - opened >= self.roll_s):
                self._write(day, pending)
                pending = []

    def _write(self, day: str | None, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        data = jsonl_bytes(rows)
        uri = storage.join(self.uri, f"date={day}", f"part-{self.tag}-{self.parts:06d}.jsonl")
        for attempt in range(3):
            try:
                storage.write_bytes(uri, data)
                break
            except Exception as e:  # noqa: BLE001 (storage down: retried, then counted, never raised)
                log.warning("question log: writing %s failed (%s), attempt %d of 3", uri, e, attempt + 1)
                time.sleep(0.5 * (attempt + 1))
        else:
            with self._lock:
                self.failed += len(rows)
            return
        with self._lock:
            self.parts += 1
            self.written += len(rows)
