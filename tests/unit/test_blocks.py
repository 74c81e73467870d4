"""Row blocks of the label input (`qadist.label.blocks`) and the shard helpers of `qadist.shards`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qadist.errors import UserError
from qadist.label.blocks import block_name, find_duplicates, plan_blocks, read_block, scan_block
from qadist.rows import Unparsable, iter_raw_rows
from qadist.shards import list_array, list_values, pack, shard_schema, unpack, windows_table


def pair(i: int, **extra) -> dict:
    return {"id": f"q{i}", "question": f"question {i}?", "context": f"context number {i}.", **extra}


def all_rows(blocks) -> list[tuple[int, object]]:
    return [row for b in blocks for row in read_block(b)]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_jsonl_blocks_cover_every_line_once(tmp_path, trailing_newline):
    lines = [json.dumps(pair(i)) for i in range(7)]
    lines[2] = ""  # blank lines are skipped, but keep their number
    lines[4] = "{not json"
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    blocks, inputs = plan_blocks(str(path), 3)
    assert [(b.start, b.end) for b in blocks] == [(0, 3), (3, 6), (6, 7)]
    assert [b.name for b in blocks] == [
        "p.jsonl.r000000000-000000003",
        "p.jsonl.r000000003-000000006",
        "p.jsonl.r000000006-000000007",
    ]
    assert inputs == [{"uri": str(path), "size": path.stat().st_size}]
    rows = all_rows(blocks)
    assert [n for n, _ in rows] == [1, 2, 4, 5, 6, 7]
    assert isinstance(dict(rows)[5], Unparsable)
    assert [(n, r if isinstance(r, dict) else r.text) for n, r in rows] == [
        (n, r if isinstance(r, dict) else r.text) for _, n, r in iter_raw_rows(str(path))
    ]


def test_jsonl_ending_on_a_block_boundary(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(6)))
    blocks, _ = plan_blocks(str(path), 3)
    assert [(b.start, b.end) for b in blocks] == [(0, 3), (3, 6)]
    assert [r["id"] for _, r in all_rows(blocks)] == [f"q{i}" for i in range(6)]


def test_empty_file_is_a_user_error(tmp_path):
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(UserError, match="empty"):
        plan_blocks(str(tmp_path / "p.jsonl"), 3)


def test_parquet_blocks_read_only_their_rows(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([pair(i) for i in range(10)]), path, row_group_size=4)
    blocks, _ = plan_blocks(str(path), 3)
    assert [(b.start, b.end) for b in blocks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [(n, r["id"]) for n, r in all_rows(blocks)] == [(i + 1, f"q{i}") for i in range(10)]


def test_squad_json_is_flattened_into_inline_blocks(squad_sample):
    blocks, _ = plan_blocks(squad_sample, 1000)
    assert [b.kind for b in blocks] == ["inline"] * 4 and blocks[-1].end == 3250
    assert [r for _, r in all_rows(blocks)] == [r for _, _, r in iter_raw_rows(squad_sample)]


def test_prefix_blocks_are_named_after_their_files(tmp_path):
    (tmp_path / "in" / "day=1").mkdir(parents=True)
    for name in ("day=1/a b.jsonl", "z.jsonl"):
        (tmp_path / "in" / name).write_text(json.dumps(pair(0)) + "\n")
    blocks, _ = plan_blocks(str(tmp_path / "in"), 10)
    assert [b.name for b in blocks] == ["day_1__a_b.jsonl.r000000000-000000001", "z.jsonl.r000000000-000000001"]
    assert block_name("s3://b/x", "s3://b/x/_hidden.jsonl", 0, 5).startswith("f_hidden")


def test_duplicates_keep_the_first_valid_row_across_blocks(tmp_path):
    rows = [
        pair(0),
        pair(1),
        {"id": "q2", "question": "", "context": "c"},
        pair(2),
        pair(0),
        pair(1, question="again?"),
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    blocks, _ = plan_blocks(str(path), 2)
    scans = [scan_block(b.to_json(), 1000) for b in blocks]
    assert [s["rows_in"] for s in scans] == [2, 2, 2] and not any(s["has_answers"] for s in scans)
    assert find_duplicates(blocks, scans) == 2
    # q2's first row is invalid (empty question), so the valid one on row 4 is the first q2.
    assert [b.duplicates for b in blocks] == [{}, {}, {"5": "first at p.jsonl row 1", "6": "first at p.jsonl row 2"}]


def test_list_arrays_round_trip_and_pack():
    arrays = [np.array([1.5, -2.0], np.float32), np.array([], np.float32), np.array([3.25], np.float32)]
    arr = list_array(arrays)
    assert arr.type == pa.list_(pa.float16())
    back = list_values(arr)
    assert [a.tolist() for a in back] == [[1.5, -2.0], [], [3.25]] and back[0].dtype == np.float16
    table = pa.table({"x": arr})
    assert unpack(pack(table)).equals(table)
    assert list_values(list_array([])) == []


def test_windows_table_has_the_contract_types():
    windows = {
        "id": ["a"],
        "window": [0],
        "input_ids": [[101, 7, 102]],
        "token_type_ids": [[0, 0, 1]],
        "offsets": [[[-1, -1], [0, 3], [-1, -1]]],
        "start_position": [-1],
        "end_position": [-1],
        "answers": [None],
    }
    table = windows_table(windows, has_answers=True)
    full = shard_schema(True, True, False)
    assert all(table.schema.field(f.name).type == f.type for f in table.schema)
    assert [f.name for f in full][:6] == ["id", "window", "input_ids", "token_type_ids", "offsets", "start_logits"]
    assert table.column("answers").to_pylist() == [None]
