"""Readers for SQuAD JSON, JSONL and Parquet pairs (a file or a prefix, local or S3), validation and rejects."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qadist import storage
from qadist.errors import UserError
from qadist.rows import Unparsable, flatten_squad, iter_raw_rows, make_reject, parse_json_line
from qadist.squad.io import read_pairs, validate_pair

PAIR = {"id": "p1", "question": "Who?", "context": "Ada wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_squad_sample_flattens_to_pairs(squad_sample):
    pairs, rejects = read_pairs(squad_sample)
    assert len(pairs) == 3250 and rejects == []
    assert len({p["id"] for p in pairs}) == 3250
    answerable = [p for p in pairs if p["answers"]["text"]]
    assert 0 < len(answerable) < 3250
    for p in answerable:
        for text, start in zip(p["answers"]["text"], p["answers"]["answer_start"]):
            assert p["context"][start : start + len(text)] == text
    assert all(p["answers"] == {"text": [], "answer_start": []} for p in pairs if not p["answers"]["text"])
    assert all(isinstance(p.get("title"), str) for p in pairs)


def test_flatten_squad_marks_impossible_questions_unanswerable():
    obj = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "abc",
                        "qas": [
                            {"id": "1", "question": "q", "answers": [{"text": "a", "answer_start": 0}]},
                            {
                                "id": "2",
                                "question": "q",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "b", "answer_start": 1}],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    rows = flatten_squad(obj, "x.json")
    assert [r["answers"]["text"] for r in rows] == [["a"], []]
    with pytest.raises(UserError, match="x.json: a JSON object without 'data'"):
        flatten_squad({"version": "v2"}, "x.json")


def test_jsonl_parquet_and_json_list(tmp_path):
    rows = [PAIR, {"id": 7, "question": "Q?", "text": "A document.", "title": "t", "score": 0.5, "doc_id": "d"}]
    jsonl = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))[0]
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in PAIR.items()}]), tmp_path / "p.parquet")
    parquet = read_pairs(str(tmp_path / "p.parquet"))[0]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    as_list = read_pairs(str(tmp_path / "list.json"))[0]
    assert jsonl == as_list
    assert jsonl[1] == {
        "id": "7",
        "question": "Q?",
        "context": "A document.",
        "title": "t",
        "doc_id": "d",
        "score": 0.5,
    }
    assert parquet == [PAIR]


def test_answers_in_squad_list_layout_are_normalized():
    raw = {**PAIR, "answers": [{"text": "Ada", "answer_start": 0}, {"text": "wrote", "answer_start": 4}]}
    pair, reason = validate_pair(raw)
    assert reason is None and pair["answers"] == {"text": ["Ada", "wrote"], "answer_start": [0, 4]}


def test_prefix_of_many_files_local(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{**PAIR, "id": "a"}])
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.Table.from_pylist([{**PAIR, "id": "b"}]), tmp_path / "sub" / "b.parquet")
    write_jsonl(tmp_path / "_ignored.jsonl", [{**PAIR, "id": "hidden"}])
    (tmp_path / "notes.txt").write_text("not pairs")
    pairs, _ = read_pairs(str(tmp_path))
    assert [p["id"] for p in pairs] == ["a", "b"]


def test_prefix_of_many_files_s3(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/pairs/part-0.jsonl", (json.dumps({**PAIR, "id": "a"}) + "\n").encode())
    storage.write_bytes(f"{s3_bucket}/pairs/part-1.jsonl", (json.dumps({**PAIR, "id": "b"}) + "\n").encode())
    pairs, _ = read_pairs(f"{s3_bucket}/pairs/")
    assert [p["id"] for p in pairs] == ["a", "b"]
    assert read_pairs(f"{s3_bucket}/pairs/part-1.jsonl")[0][0]["id"] == "b"


@pytest.mark.parametrize(
    "raw,reason",
    [
        ({"question": "q", "context": "c"}, "missing field 'id'"),
        ({"id": " ", "question": "q", "context": "c"}, "missing field 'id'"),
        ({"id": True, "question": "q", "context": "c"}, "field 'id' is bool"),
        ({"id": "x", "context": "c"}, "missing field 'question'"),
        ({"id": "x", "question": "q"}, "missing field 'context'"),
        ({"id": "x", "question": 5, "context": "c"}, "field 'question' is int, not a string"),
        ({"id": "x", "question": "q", "context": ["c"]}, "field 'context' is list, not a string"),
        ({"id": "x", "question": "  ", "context": "c"}, "field 'question' is empty"),
        ({**PAIR, "answers": {"text": ["Ada"], "answer_start": [1]}}, "answer 'Ada' is not at answer_start=1"),
        ({**PAIR, "answers": {"text": ["Ada"], "answer_start": []}}, "differ in length"),
        ({**PAIR, "answers": {"text": [1], "answer_start": [0]}}, "must be strings"),
        ({**PAIR, "answers": "Ada"}, "answers must be"),
        ([1, 2], "row is list, not a JSON object"),
    ],
)
def test_validate_pair_reasons(raw, reason):
    pair, why = validate_pair(raw)
    assert pair is None and reason in why


def test_validate_pair_context_limit():
    raw = {"id": "x", "question": "q", "context": "c" * 11}
    assert validate_pair(raw, max_context_chars=10) == (None, "context has 11 characters, over max_context_chars=10")
    assert validate_pair(raw, max_context_chars=11)[0] == raw


def test_non_strict_collects_rejects_with_row_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(PAIR),
                "{not json",
                json.dumps({"id": "x", "context": "c"}),
                "",
                json.dumps(PAIR),  # duplicate id
                json.dumps({**PAIR, "id": "p2"}),
            ]
        )
        + "\n"
    )
    pairs, rejects = read_pairs(str(path), strict=False)
    assert [p["id"] for p in pairs] == ["p1", "p2"]
    assert [(r["row"], r["id"]) for r in rejects] == [(2, None), (3, "x"), (5, "p1")]
    assert rejects[0]["reason"].startswith("not valid JSON") and rejects[0]["raw"] == "{not json"
    assert rejects[1]["reason"] == "missing field 'question'"
    assert "duplicate id 'p1' (first at mixed.jsonl row 1)" in rejects[2]["reason"]
    assert all(r["source"] == str(path) for r in rejects)
    with pytest.raises(UserError, match=r"mixed.jsonl: row 2: not valid JSON .*; fix or remove the row"):
        read_pairs(str(path), strict=True)


def test_parse_json_line_and_make_reject():
    bad = parse_json_line('{"id": 1,')
    assert isinstance(bad, Unparsable) and "column" in bad.reason
    reject = make_reject({"id": 3, "q": "é"}, "f.jsonl", 4, "why")
    assert reject == {"id": "3", "source": "f.jsonl", "row": 4, "reason": "why", "raw": '{"id": 3, "q": "é"}'}


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.json", b"  \n", "the file is empty"),
        ("bad.json", b'{"data": [', "malformed JSON at line 1"),
        ("latin1.json", b'{"data": "\xe9"}', "malformed JSON at encoding"),
        ("scalar.json", b"42", "JSON must be a SQuAD object or a list of pairs"),
        ("nodata.json", b'{"version": "2"}', "a JSON object without 'data'"),
        ("bad.parquet", b"not a parquet file", "not a readable Parquet file"),
    ],
)
def test_unreadable_files_are_user_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        read_pairs(str(tmp_path / name))
    assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        list(iter_raw_rows(str(tmp_path / "nope.jsonl")))
    with pytest.raises(UserError, match="no .json, .jsonl or .parquet files found"):
        read_pairs(str(tmp_path))
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "x"}])
    assert read_pairs(str(tmp_path), strict=False)[0] == []
    with pytest.raises(UserError, match="row 1: missing field 'question'"):
        read_pairs(str(tmp_path))
