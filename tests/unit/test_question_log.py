"""The question log writer: parts per UTC day and per writer, rolled by rows and seconds, a bounded
buffer that drops and counts, a clean close that loses nothing; readable by `qadist pairs`' reader."""

from __future__ import annotations

import json
import time

from qadist.question_log import QuestionLog, log_row
from qadist.rows import read_jsonl
from qadist.storage import list_files


def rows_under(uri: str) -> list[dict]:
    return [r for f in list_files(uri, (".jsonl",)) for r in read_jsonl(f)]


def test_row_has_the_design_fields_and_nothing_else():
    reply = {"answer": "RF", "start": 3, "end": 5, "score": 1.0, "no_answer_probability": 0.25, "doc_id": "d1"}
    row = log_row("r1", "Which mount?", "The RF mount.", reply, "7", time_utc="2026-12-03T10:00:00.000Z")
    assert row == {"id": "r1", "request_id": "r1", "question": "Which mount?", "context": "The RF mount.",
                   "doc_id": "d1", "model_version": "7", "answer": "RF", "no_answer_probability": 0.25,
                   "time": "2026-12-03T10:00:00.000Z"}  # fmt: skip
    assert "context" not in log_row("r1", "q", "c", reply, "7", keep_context=False)


def test_rolls_by_rows_partitions_by_day_and_close_flushes(tmp_path):
    qlog = QuestionLog(str(tmp_path), roll_rows=10, roll_s=3600, tag="t")
    for i in range(25):
        day = "2026-12-03" if i < 15 else "2026-12-04"
        assert qlog.append(log_row(f"r{i}", f"q{i} \u2028 x", None, {}, "1", time_utc=f"{day}T23:00:00Z"))
    counts = qlog.close()
    assert counts == {"written": 25, "dropped": 0, "failed": 0, "parts": 3}  # day 1: 10 + 5, day 2: 10
    files = list_files(str(tmp_path), (".jsonl",))
    assert {f.split("/")[-2] for f in files} == {"date=2026-12-03", "date=2026-12-04"}
    assert all(f.split("/")[-1].startswith("part-t-") for f in files)
    rows = rows_under(str(tmp_path))
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(25))  # each once, U+2028 kept whole


def test_rolls_by_seconds(tmp_path):
    qlog = QuestionLog(str(tmp_path), roll_rows=1000, roll_s=0.2)
    qlog.append(log_row("a", "q", None, {}, "1"))
    deadline = time.monotonic() + 10
    while qlog.counts()["written"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qlog.counts()["written"] == 1  # written without close: the roll window passed
    qlog.close()


def test_a_full_buffer_drops_and_counts(tmp_path, monkeypatch):
    import qadist.question_log as ql

    slow = ql.storage.write_bytes

    def stalled(uri, data):
        time.sleep(0.5)
        slow(uri, data)

    monkeypatch.setattr(ql.storage, "write_bytes", stalled)
    qlog = QuestionLog(str(tmp_path), roll_rows=1, roll_s=3600, buffer_rows=5)
    accepted = sum(qlog.append(log_row(f"r{i}", "q", None, {}, "1")) for i in range(50))
    counts = qlog.close()
    assert counts["dropped"] == 50 - accepted > 0
    assert counts["written"] == accepted == len(rows_under(str(tmp_path)))


def test_two_writers_never_collide(tmp_path):
    logs = [QuestionLog(str(tmp_path), roll_rows=3) for _ in range(2)]
    for i in range(10):
        for n, q in enumerate(logs):
            q.append(log_row(f"w{n}-{i}", "q", None, {}, "1"))
    assert [q.close()["written"] for q in logs] == [10, 10]
    assert len(rows_under(str(tmp_path))) == 20


def test_a_pairs_reader_accepts_the_rows(tmp_path):
    from qadist.pairs.staging import validate_question  # the check `qadist pairs --questions` applies

    qlog = QuestionLog(str(tmp_path))
    qlog.append(log_row("r1", "Which mount?", "ctx", {"answer": "RF"}, "1"))
    qlog.close()
    (row,) = rows_under(str(tmp_path))
    assert validate_question(row) == ({"id": "r1", "question": "Which mount?"}, None)
    assert json.dumps(row)  # plain JSON
