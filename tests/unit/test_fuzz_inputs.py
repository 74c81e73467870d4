"""Bad-input fuzzing (hypothesis): readers, the label stage's per-block validation and windowing,
`make_windows` with both tokenizer families, and post-processing.

Inputs: arbitrary unicode (combining marks, zero-width and RTL characters, emoji, control
characters, lone surrogates), whitespace-only fields, answers out of range or not matching the
text, huge tokens, empty strings, wrong types. Properties: nothing raises; every row is either
a pair or a reject with a reason (rows in == valid + rejected); rejects can be written as UTF-8;
windows and predictions stay inside the context. The regression tests at the end are the
failing examples the fuzzing found, one per bug fixed.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from qadist import storage
from qadist.label.blocks import Block, block_name, find_duplicates, scan_block
from qadist.label.stages import window_block
from qadist.rows import make_reject, parse_json_line
from qadist.squad.features import gold_positions, make_windows
from qadist.squad.io import read_pairs, validate_pair
from qadist.squad.postprocess import postprocess

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
LENGTHS = (64, 16, 16)  # max_seq_len, doc_stride, max_query_len: small, so long contexts make several windows

SPECIAL = [
    "\u0301",
    "\u0308\u0323",  # combining marks
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\u2060",  # zero-width
    "\u200f",
    "\u202e",
    "\u05d0\u05d1",
    "\u0627\u0644",  # RTL marks, Hebrew, Arabic
    "\U0001f600",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1eb\U0001f1f7",  # emoji, ZWJ sequence, flag
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\x85",
    "\x1c",  # control characters
    "\u2028",
    "\u2029",
    "\u3000",
    "\t",
    "\r",
    " ",  # line/paragraph separators, ideographic space
    "\ud800",
    "\udfff",
    "\udc00",  # lone surrogates
    "\ufdfa",
    "\ufb01",
    "\u00df",  # characters NFKD expands into several
    "a",
    "Z",
    "9",
    ".",
    "-",
    "(",
]
piece = st.one_of(st.sampled_from(SPECIAL), st.characters(codec=None))  # codec=None: any code point, surrogates too
clean_piece = st.one_of(
    st.sampled_from([c for c in SPECIAL if not 0xD800 <= ord(c[0]) <= 0xDFFF]), st.characters(exclude_categories=["Cs"])
)


def texts(piece: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Empty, whitespace-only, short runs of `piece`, sentences of such words, huge tokens."""

    def run(lo: int, hi: int) -> st.SearchStrategy[str]:
        return st.lists(piece, min_size=lo, max_size=hi).map("".join)

    huge_token = st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "\u00e9", "\U0001f600", "\u0301", "x\u0301"]), st.integers(150, 3000)
    )
    word = st.one_of(run(1, 12), st.sampled_from(["the", "camera", "lens", "1965", "Ada"]))
    sentence = st.lists(word, min_size=1, max_size=40).map(" ".join)
    return st.one_of(
        st.just(""),
        run(0, 30),
        st.sampled_from([" ", "\n\t ", "\u3000\u2028"]),
        sentence,
        huge_token,
        st.lists(st.one_of(sentence, huge_token), min_size=1, max_size=3).map(" ".join),
    )


def pieces(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.lists(piece, min_size=lo, max_size=hi).map("".join)


text = texts(piece)
clean_text = texts(clean_piece)  # no lone surrogates: text a valid pair can hold
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), text)
answers = st.one_of(
    scalar,
    st.fixed_dictionaries(
        {
            "text": st.one_of(scalar, st.lists(st.one_of(text, scalar), max_size=3)),
            "answer_start": st.one_of(scalar, st.lists(st.one_of(st.integers(-5, 5000), scalar), max_size=3)),
        }
    ),
    st.lists(
        st.fixed_dictionaries(
            {"text": st.one_of(text, scalar), "answer_start": st.one_of(st.integers(-5, 5000), scalar)}
        ),
        max_size=3,
    ),
)
raw_row = st.one_of(
    scalar,
    st.lists(scalar, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(text, scalar),
            "question": st.one_of(text, scalar),
            "context": st.one_of(text, scalar),
            "text": text,
            "answers": answers,
            "title": st.one_of(text, scalar),
        },
    ),
)


@st.composite
def valid_pair(draw, with_answer: bool | None = None) -> dict:
    """A pair that passes validation, with weird text: its answer (if any) is a slice of the context."""

    def nonblank(t: str) -> str:  # weird, but not blank (blank fields are rejects): no filtering needed
        return t if t.strip() else t + draw(st.sampled_from(["x", "\U0001f600", "\u200b", "\u05d0", "\x00"]))

    context, question = nonblank(draw(clean_text)), nonblank(draw(clean_text))
    row_id = nonblank(draw(st.lists(clean_piece, max_size=8).map("".join)))
    pair = {"id": row_id, "question": question, "context": context}
    if with_answer is None:
        with_answer = draw(st.booleans())
    if with_answer:
        start = draw(st.integers(0, len(context)))
        end = draw(st.integers(start, min(len(context), start + 60)))
        pair["answers"] = {"text": [context[start:end]], "answer_start": [start]}
    return pair


def check_reject(reject: dict) -> None:
    assert isinstance(reject["reason"], str) and reject["reason"].strip()
    # The rejects file is UTF-8 JSONL: every reject must encode (a lone surrogate once failed the block).
    line = json.dumps(reject, ensure_ascii=False).encode("utf-8")
    assert b"\n" not in line


# ---- readers -------------------------------------------------------------------------------------


@FUZZ
@given(raw_row)
def test_validate_pair_accepts_or_gives_a_reason(raw):
    pair, reason = validate_pair(raw)
    assert (pair is None) != (reason is None)
    if pair is None:
        check_reject(make_reject(raw, "fuzz.jsonl", 1, reason))
        return
    assert all(isinstance(pair[k], str) and pair[k].strip() for k in ("id", "question", "context"))
    json.dumps(pair, ensure_ascii=False).encode("utf-8")  # storable as UTF-8 (no lone surrogates)
    for t, s in zip(pair.get("answers", {}).get("text", []), pair.get("answers", {}).get("answer_start", [])):
        assert pair["context"][s : s + len(t)] == t


@FUZZ
@given(raw_row)
def test_pairs_stage_question_and_document_validation_accept_or_give_a_reason(raw):
    """`qadist pairs` validates its own rows (questions, documents): the same property."""
    from qadist.documents import validate_document
    from qadist.pairs.staging import validate_question

    for validate in (validate_question, validate_document):
        row, reason = validate(raw)
        assert (row is None) != (reason is None)
        if row is None:
            check_reject(make_reject(raw, "fuzz.jsonl", 1, reason))
        else:
            json.dumps(row, ensure_ascii=False).encode("utf-8")  # the stage's UTF-8 part writers take it


line_text = st.one_of(
    raw_row.map(lambda r: json.dumps(r, ensure_ascii=False)),  # raw U+2028/U+0085 etc. inside JSON strings
    raw_row.map(json.dumps),  # \\u escapes, lone surrogates included
    pieces(0, 40).map(lambda t: t.replace("\n", " ")),  # not JSON at all
)


@FUZZ
@given(
    st.lists(
        st.one_of(
            line_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_jsonl_rows_in_equal_pairs_plus_rejects(lines):
    """Every non-blank line of a JSONL file is a pair or a reject with its row number and a reason."""
    data = b"\n".join(lines) + b"\n"
    assume(data.strip())
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "pairs.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        pairs, rejects = read_pairs(path, strict=False)
    rows = [n for n, line in enumerate(data.decode("utf-8", "replace").split("\n"), start=1) if line.strip()]
    assert len(pairs) + len(rejects) == len(rows)
    assert len({p["id"] for p in pairs}) == len(pairs)  # a repeated id is a reject
    for r in rejects:
        check_reject(r)
        assert r["row"] in rows


@FUZZ
@given(rows=st.lists(st.one_of(raw_row, valid_pair()), min_size=1, max_size=8), with_answers=st.booleans())
def test_label_block_accounts_for_every_row(bert_tokenizer, rows, with_answers):
    """The label stage's own per-block path (validate + window, no Ray): rows in == labelled + rejected,
    every labelled pair has windows, every reject is in the block's UTF-8 rejects file with a reason."""
    block = Block(
        "fuzz.r000000000-000000008", "mem://fuzz.json", "inline", 0, len(rows), rows=rows, with_answers=with_answers
    )
    find_duplicates([block], [scan_block(block.to_json(), 2_000)])  # the pipeline's pre-pass: a repeated id is a reject
    with tempfile.TemporaryDirectory() as out:
        table, stats, _ = window_block(block, bert_tokenizer, out, LENGTHS, 2_000)
        assert stats["pairs_in"] == len(rows) == stats["pairs_labeled"] + stats["pairs_rejected"]
        assert len(set(table.column("id").to_pylist())) == stats["pairs_labeled"]  # each labelled pair has >= 1 window
        if stats["pairs_rejected"]:
            with open(storage.join(out, stats["rejects"]), encoding="utf-8") as f:
                rejects = [json.loads(line) for line in f]
            assert len(rejects) == stats["pairs_rejected"]
            for r in rejects:
                check_reject(r)


# ---- windowing -----------------------------------------------------------------------------------


def check_windows(pairs: list[dict], w: dict, max_seq_len: int) -> None:
    by_id: dict[str, list[int]] = {}
    for i, pid in enumerate(w["id"]):
        by_id.setdefault(pid, []).append(w["window"][i])
    assert set(by_id) == {p["id"] for p in pairs}
    assert all(v == list(range(len(v))) for v in by_id.values())
    contexts = {p["id"]: p["context"] for p in pairs}
    for i, pid in enumerate(w["id"]):
        ids, offsets = w["input_ids"][i], w["offsets"][i]
        assert 0 < len(ids) <= max_seq_len and len(offsets) == len(ids)
        for s, e in offsets:
            assert (s, e) == (-1, -1) or 0 <= s <= e <= len(contexts[pid])
        start, end = w["start_position"][i], w["end_position"][i]
        if "answers" not in w or w["answers"][i] is None:
            assert (start, end) == (-1, -1)
        elif (start, end) != (0, 0):
            assert 0 < start <= end < len(ids) and offsets[start][0] >= 0 and offsets[end][0] >= 0


@pytest.mark.parametrize("family", ["bert", "albert"])
@FUZZ
@given(
    pairs=st.lists(valid_pair(), min_size=1, max_size=4).map(
        lambda ps: [{**p, "id": f"{p['id']}#{i}"} for i, p in enumerate(ps)]
    )
)
def test_make_windows_on_weird_valid_pairs(family, pairs, bert_tokenizer, albert_tokenizer):
    """Pairs that pass validation always window, with both tokenizer families."""
    assert all(validate_pair(p)[1] is None for p in pairs)
    tokenizer = bert_tokenizer if family == "bert" else albert_tokenizer
    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    if any("answers" in p for p in pairs):
        batch["answers"] = [p.get("answers") for p in pairs]
    w = make_windows(batch, tokenizer, *LENGTHS)
    check_windows(pairs, w, LENGTHS[0])


@FUZZ
@given(st.lists(st.tuples(st.integers(-1, 50), st.integers(0, 30)), max_size=20), st.integers(-10, 60), text)
@example([(0, 3)], 3, "")  # an empty answer at the context's end (was StopIteration)
def test_gold_positions_never_raise(spans, answer_start, answer_text):
    offsets = [(-1, -1) if s < 0 else (s, s + n) for s, n in spans]
    start, end = gold_positions(offsets, answer_start, answer_text)
    assert (start, end) == (0, 0) or 0 <= start <= end < len(offsets)


# ---- post-processing -----------------------------------------------------------------------------


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def logit_windows(draw) -> tuple[list[dict], dict[str, str]]:
    contexts = {f"q{i}": draw(text) for i in range(draw(st.integers(1, 3)))}
    windows = []
    for pid, context in contexts.items():
        for _ in range(draw(st.integers(1, 3))):
            n = draw(st.integers(1, 24))
            offsets = []
            for _ in range(n):
                if draw(st.booleans()) or not context:
                    offsets.append([-1, -1])
                else:
                    s = draw(st.integers(0, len(context)))
                    offsets.append([s, draw(st.integers(s, len(context)))])
            # Logit lists as long as the window, or (a truncated row) shorter.
            m = draw(st.integers(1, n))
            windows.append(
                {
                    "id": pid,
                    "offsets": offsets,
                    "start_logits": draw(st.lists(finite, min_size=m, max_size=m)),
                    "end_logits": draw(st.lists(finite, min_size=m, max_size=m)),
                }
            )
    return windows, contexts


@FUZZ
@given(logit_windows(), st.integers(1, 20), st.integers(1, 30), st.floats(-50, 50))
def test_postprocess_answers_every_id_from_its_context(data, n_best, max_answer_len, threshold):
    windows, contexts = data
    predictions, na_probs = postprocess(windows, contexts, n_best, max_answer_len, threshold)
    assert set(predictions) == set(na_probs) == set(contexts)
    for pid, answer in predictions.items():
        assert answer == "" or answer in contexts[pid]
        assert 0.0 <= na_probs[pid] <= 1.0 and not np.isnan(na_probs[pid])


# ---- output names never come from input data -----------------------------------------------------


@FUZZ
@given(
    st.lists(
        st.one_of(
            pieces(1, 20), st.sampled_from(["..", "../../x", "/etc/passwd", "s3://other/x", "a/../../b", "_x", ".x"])
        ),
        min_size=1,
        max_size=4,
    ).map("/".join)
)
def test_shard_names_stay_inside_the_output_prefix(rel):
    """A shard (and rejects) name is one path segment: no '/', not hidden, whatever the input file is called."""
    name = block_name("s3://in/pairs", "s3://in/pairs/" + rel, 0, 10)
    assert "/" not in name and "\\" not in name and not name.startswith((".", "_"))
    assert os.path.dirname(os.path.normpath(os.path.join("/out/shards", name + ".parquet"))) == "/out/shards"


# ---- the failing examples, as regression tests ---------------------------------------------------


def test_regression_empty_answer_at_the_end_of_the_context_windows(bert_tokenizer):
    """Bug: gold_positions raised StopIteration for answers.text [""] at answer_start == len(context)."""
    pair, reason = validate_pair(
        {"id": "e", "question": "q?", "context": "abc", "answers": {"text": [""], "answer_start": [3]}}
    )
    assert reason is None
    w = make_windows({k: [pair[k]] for k in ("id", "question", "context", "answers")}, bert_tokenizer, *LENGTHS)
    assert (w["start_position"], w["end_position"]) == ([0], [0])


def test_regression_lone_surrogates_are_rejected_and_the_reject_is_writable():
    """Bug: JSON's "\\ud800" escape gave a lone surrogate that passed validation, then crashed the
    tokenizer (TypeError) and, in the label stage, the UTF-8 write of the block's rejects file."""
    raw = parse_json_line('{"id": "s\\ud800", "question": "why\\udc00?", "context": "ctx \\ud83d"}')
    pair, reason = validate_pair(raw)
    assert pair is None and "lone surrogate" in reason and "'id'" in reason
    reject = make_reject(raw, "p.jsonl", 7, reason)
    check_reject(reject)
    assert json.loads(reject["raw"]) == raw  # the raw row survives exactly (as \\u escapes)
    for field in ("question", "context"):
        _, reason = validate_pair({"id": "ok", "question": "q", "context": "c", field: "x\udfff"})
        assert f"'{field}'" in reason
    _, reason = validate_pair(
        {"id": "ok", "question": "q", "context": "c\ud800", "answers": {"text": ["c"], "answer_start": [0]}}
    )
    assert "lone surrogate" in reason


def test_regression_answers_fields_that_are_not_lists_are_rejected():
    """Bug: {"text": "abc", "answer_start": 3} raised TypeError (and a bare string text split into characters)."""
    for answers in (
        {"text": "abc", "answer_start": 3},
        {"text": "abc", "answer_start": [0]},
        {"text": ["abc"], "answer_start": 0},
    ):
        pair, reason = validate_pair({"id": "a", "question": "q", "context": "abc", "answers": answers})
        assert pair is None and "must be lists" in reason


def test_regression_jsonl_rows_are_cut_at_newlines_only(tmp_path):
    """Bug: read_pairs cut lines with str.splitlines(), so a valid row holding U+2028 (legal
    unescaped in a JSON string) became two unparsable rejects; the label stage cut at "\\n" only."""
    rows = [
        {"id": "a", "question": "q\u2028?", "context": "line\u2029one\x85two\x1cthree"},
        {"id": "b", "question": "q", "context": "c"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    pairs, rejects = read_pairs(str(path), strict=False)
    assert rejects == [] and [p["id"] for p in pairs] == ["a", "b"] and pairs[0]["context"] == rows[0]["context"]
