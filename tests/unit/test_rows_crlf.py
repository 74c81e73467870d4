"""JSONL rows end at "\\n" only, for every stage: the one row reader (`qadist.rows.iter_raw_rows`,
which pairs uses for questions and documents and label's driver for JSON), and the planned blocks
label's workers read.

JSON allows a bare "\\r" as whitespace between a row's fields, and U+2028 and U+0085 unescaped
inside its strings; a text-mode file (universal newlines) or `str.splitlines()` would cut such a
row in two. Every reader must see the same single valid row.
"""

from __future__ import annotations

import pytest

from qadist.label.blocks import plan_blocks, read_block
from qadist.pairs.staging import validate_question
from qadist.rows import iter_raw_rows
from qadist.squad.io import validate_pair

ROW = {"id": "a", "question": "q?", "context": "c"}
CASES = {
    "bare-cr-between-fields": (b'{"id": "a",\r "question": "q?", "context": "c"}\n', [ROW]),
    "crlf-endings": (
        b'{"id": "a", "question": "q?", "context": "c"}\r\n{"id": "b", "question": "r?", "context": "d"}\r\n',
        [ROW, {"id": "b", "question": "r?", "context": "d"}],
    ),
    "line-separators-in-a-string": (
        '{"id": "a", "question": "q\u2028\u0085?", "context": "c"}\n'.encode(),
        [{**ROW, "question": "q\u2028\u0085?"}],
    ),
}


def numbered(rows: list[dict]) -> list[tuple[int, dict]]:
    return list(enumerate(rows, start=1))


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request, tmp_path) -> tuple[str, list[tuple[int, dict]]]:
    data, rows = CASES[request.param]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    return str(path), numbered(rows)


def test_the_row_reader(case):
    uri, expected = case
    assert [(n, raw) for _, n, raw in iter_raw_rows(uri)] == expected


def test_pairs_and_label_accept_the_row(case):
    uri, expected = case
    for _, _, raw in iter_raw_rows(uri):
        assert validate_question(raw)[1] is None  # the pairs stage's check of a logged question
        assert validate_pair(raw)[1] is None  # the label stage's check of a pair


@pytest.mark.parametrize("rows_per_shard", [1, 1000])
def test_label_blocks(case, rows_per_shard):
    uri, expected = case
    blocks, _ = plan_blocks(uri, rows_per_shard)
    assert [row for block in blocks for row in read_block(block)] == expected
