"""Every JSONL file qadist writes reads back row for row, whatever unicode its strings hold.

JSON written with ensure_ascii=False keeps U+2028, U+2029, U+0085, form feeds and the like raw
inside strings; `str.splitlines()` would cut a row there. One writer (`rows.jsonl_line` /
`rows.jsonl_bytes`) and one reader (`rows.jsonl_rows`, split on "\\n" only) hold the contract; this
checks it through each writer that makes a file (pairs staging parts, rejects, selected pairs, the
question log) and both readers (qadist's own files, and users' input files).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadist import question_log, rows
from qadist.pairs.staging import PartWriter
from qadist.select.stage import jsonl as selected_jsonl

# Any text JSON can carry (no lone surrogates: the input checks reject those before any writer).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
SEPARATORS = st.sampled_from(["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\r", "\r\n", "\n"])
TRICKY = st.builds(lambda a, sep, b: a + sep + b, TEXT, SEPARATORS, TEXT)
ROWS = st.lists(st.fixed_dictionaries({"id": TEXT, "question": TRICKY, "context": TEXT}), min_size=1, max_size=8)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(ROWS)
def test_the_writer_and_the_reader_agree(batch):
    data = rows.jsonl_bytes(batch)
    assert [r for _, r in rows.jsonl_rows(data)] == batch
    assert selected_jsonl(batch) == data


@SETTINGS
@given(ROWS)
def test_pairs_staging_parts_read_back_row_for_row(tmp_path_factory, batch):
    out = tmp_path_factory.mktemp("parts")
    writer = PartWriter(str(out), rows_per_file=3)
    for r in batch:
        writer.add(r)
    writer.flush()
    back = [r for f in writer.files for r in rows.read_jsonl(f["uri"] if "uri" in f else f["path"])]
    assert back == batch


@SETTINGS
@given(ROWS)
def test_rejects_and_user_input_files_read_back_as_rows(tmp_path_factory, batch):
    path = tmp_path_factory.mktemp("rejects") / "rejects.jsonl"
    rejects = [rows.make_reject(r, "in.jsonl", n, "a reason") for n, r in enumerate(batch, 1)]
    path.write_bytes(rows.jsonl_bytes(rejects))
    assert [raw for _, _, raw in rows.iter_raw_rows(str(path))] == rejects


@SETTINGS
@given(ROWS)
def test_the_question_log_reads_back_row_for_row(tmp_path_factory, batch):
    out = tmp_path_factory.mktemp("log")
    log = question_log.QuestionLog(str(out), roll_rows=3, roll_s=60, tag="t")
    logged = [question_log.log_row(f"r{n}", r["question"], r["context"], {"answer": r["id"]}, "1")
              for n, r in enumerate(batch)]  # fmt: skip
    for row in logged:
        assert log.append(row)
    assert log.close()["written"] == len(batch)
    files = sorted(out.rglob("*.jsonl"))
    back = [raw for f in files for _, _, raw in rows.iter_raw_rows(str(f))]
    assert sorted(back, key=lambda r: r["request_id"]) == sorted(logged, key=lambda r: r["request_id"])
