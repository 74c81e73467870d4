"""Pure parts of the pairing stage: validation, passages, BM25, exact and approximate search, staging."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadist.documents import load_documents, validate_document
from qadist.encoder import resolve_model
from qadist.errors import UserError
from qadist.pairs.staging import PartWriter, QuestionStager, normalize_question, validate_question
from qadist.passages import build_passages, split_document, token_windows, widen
from qadist.retrieval import (
    LexicalBatch,
    SearchIndex,
    build_ann,
    build_lexical_index,
    lexical_matrix,
    lexical_terms,
)
from qadist.rows import iter_raw_rows


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from qadist.models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, reason",
    [
        ([1], "row is list, not a JSON object"),
        ({"question": "q"}, "missing field 'id'"),
        ({"id": "  ", "question": "q"}, "missing field 'id'"),
        ({"id": True, "question": "q"}, "field 'id' is bool, not a string"),
        ({"id": "a"}, "missing field 'question'"),
        ({"id": "a", "question": 3}, "field 'question' is int, not a string"),
        ({"id": "a", "question": " \n"}, "field 'question' is empty"),
    ],
)
def test_validate_question_rejects(raw, reason):
    assert validate_question(raw) == (None, reason)


def test_validate_question_accepts_int_ids():
    assert validate_question({"id": 7, "question": "why?", "extra": 1}) == ({"id": "7", "question": "why?"}, None)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"text": "t"}, "missing field 'id'"),
        ({"id": "d"}, "missing field 'text' (or 'context')"),
        ({"id": "d", "text": ["a"]}, "field 'text' is list, not a string"),
        ({"id": "d", "context": ""}, "field 'context' is empty"),
        ({"id": "d", "text": "t", "title": 5}, "field 'title' is int, not a string"),
    ],
)
def test_validate_document_rejects(raw, reason):
    assert validate_document(raw) == (None, reason)


def test_validate_document_reads_context_and_title():
    assert validate_document({"id": 1, "context": "body", "title": "T"}) == (
        {"id": "1", "text": "body", "title": "T"},
        None,
    )


def test_load_documents_rejects_bad_rows_and_duplicates(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\nnot json\n'
        '{"id": "b", "text": 3}\n{"id": "c", "text": "three"}\n'
    )
    docs, rejects = load_documents(str(path))
    assert [d["id"] for d in docs] == ["a", "c"]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("duplicate document id 'a'") and reasons[1].startswith("not valid JSON")
    assert reasons[2] == "field 'text' is int, not a string" and [r["row"] for r in rejects] == [2, 3, 4]


def test_load_documents_without_a_usable_row_is_a_user_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": ""}\n')
    with pytest.raises(UserError, match="no usable documents.*field 'text' is empty"):
        load_documents(str(path))


def test_normalize_question_ignores_case_and_whitespace():
    assert normalize_question("  What IS\tthe  Answer?\n") == normalize_question("what is the answer?")
    assert normalize_question("what is it") != normalize_question("what is it?")


def test_resolve_model():
    assert resolve_model("sentence-transformers/x") == "sentence-transformers/x"
    assert resolve_model("packaged:all-MiniLM-L6-v2").endswith("model")
    with pytest.raises(UserError, match="only packaged model"):
        resolve_model("packaged:other")


# --- passages ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=300), st.integers(2, 40), st.integers(0, 39))
def test_token_windows_cover_everything_with_overlap_and_whole_words(starts, size, overlap):
    starts[0] = True
    overlap = min(overlap, size - 1)
    windows = token_windows(starts, size, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == len(starts)
    for (s0, e0), (s1, e1) in zip(windows, windows[1:]):
        assert s0 < s1 <= e0 < e1  # progress, no gap
        assert e0 - s1 >= overlap or s1 == s0 + 1  # the overlap, unless one token of progress was all there was
    for s, e in windows:
        assert 0 < e - s <= size


def test_split_document_spans_are_in_the_text_and_overlap(tokenizer, squad_pairs):
    text = max((p["context"] for p in squad_pairs), key=len)
    spans = split_document(text, tokenizer, 64, 16, context_tokens=150)
    assert len(spans) > 3 and spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    for (_s0, e0, *_), (s1, e1, *_) in zip(spans, spans[1:]):
        assert s1 < e0 < e1  # consecutive passages overlap
    for s, e, c0, c1 in spans:
        n = len(tokenizer(text[s:e], add_special_tokens=False)["input_ids"])
        assert n <= 64 and c0 <= s < e <= c1
        assert len(tokenizer(text[c0:c1], add_special_tokens=False)["input_ids"]) <= 150
        for cut in (s, e):  # whole words: no cut between two letters or digits
            assert cut in (0, len(text)) or not (text[cut - 1].isalnum() and text[cut].isalnum())


def test_widen_keeps_the_passage_and_uses_the_whole_short_document():
    starts = [True] * 100
    assert widen(starts, 40, 50, 0) == (40, 50)
    assert widen(starts, 40, 50, 30) == (30, 60)
    assert widen(starts, 0, 10, 30) == (0, 30)
    assert widen(starts, 95, 100, 30) == (70, 100)
    assert widen(starts, 40, 50, 200) == (0, 100)
    starts[30] = False  # a word spans tokens 29-30: the context starts after it
    assert widen(starts, 40, 50, 30) == (31, 60)


def test_build_passages_is_contiguous_per_document(tokenizer, squad_pairs):
    contexts = list(dict.fromkeys(p["context"] for p in squad_pairs))[:20]
    docs = [{"id": str(i), "text": t, "title": None} for i, t in enumerate(contexts)]
    p = build_passages(docs, tokenizer, 48, 8, 100)
    assert p["doc_starts"][0] == 0 and p["doc_starts"][-1] == len(p["doc"])
    for i in range(len(docs)):
        assert (p["doc"][p["doc_starts"][i] : p["doc_starts"][i + 1]] == i).all()
        assert p["doc_starts"][i + 1] > p["doc_starts"][i]


# --- BM25 and search --------------------------------------------------------------------------


def reference_bm25(query: str, texts: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    docs = [lexical_terms(t) for t in texts]
    avg = sum(map(len, docs)) / len(docs)
    terms = set(lexical_terms(query))
    idf = {
        t: math.log(1 + (len(docs) - sum(t in d for d in docs) + 0.5) / (sum(t in d for d in docs) + 0.5))
        for t in terms
    }
    upper = sum(idf[t] * (k1 + 1) for t in terms)
    out = []
    for d in docs:
        s = sum(
            idf[t] * d.count(t) * (k1 + 1) / (d.count(t) + k1 * (1 - b + b * len(d) / avg)) for t in terms if t in d
        )
        out.append(s / upper if upper else 0.0)
    return np.asarray(out)


def test_lexical_scores_match_the_bm25_formula(squad_pairs):
    texts = list(dict.fromkeys(p["context"] for p in squad_pairs))[:40]
    index = build_lexical_index(texts)
    index["emb"] = np.zeros((len(texts), 2), np.float32)
    questions = [p["question"] for p in squad_pairs[:10]] + ["the of and", "zzzqqq unknownword"]
    batch = LexicalBatch(questions, lexical_matrix(index), index["idf"], float(index["k1"]))
    got = np.concatenate([batch.chunk(0, 15), batch.chunk(15, 40)], axis=1)
    for i, q in enumerate(questions):
        np.testing.assert_allclose(got[i], reference_bm25(q, texts), rtol=1e-4, atol=1e-6)
        ids, values = batch.row(i)
        np.testing.assert_allclose(values, got[i][ids], rtol=1e-5)
        np.testing.assert_array_equal(np.flatnonzero(got[i]), np.sort(ids))
    picks = np.array([[0, 5, 7]] * len(questions))
    np.testing.assert_allclose(batch.cells(picks), got[:, [0, 5, 7]], rtol=1e-5)
    assert got.min() >= 0 and got.max() < 1 and not got[-2:].any()


def random_index(rng, n_docs: int, dim: int = 8) -> tuple[dict, list[str]]:
    sizes = rng.integers(1, 5, n_docs)
    doc_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    emb = rng.normal(size=(doc_starts[-1], dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(doc_starts[-1])]
    index = {
        "emb": emb,
        "doc_starts": doc_starts,
        "passage_doc": np.repeat(np.arange(n_docs), sizes),
        **build_lexical_index(texts),
    }
    return index, texts


def brute_force(q_emb, lex, index, top_k, weight):
    combined = q_emb @ index["emb"].T + weight * lex
    out = []
    for row in combined:
        doc_best = {}
        for p, s in enumerate(row):
            d = int(index["passage_doc"][p])
            if d not in doc_best or s > doc_best[d][0]:
                doc_best[d] = (s, p)
        out.append(sorted(doc_best.items(), key=lambda kv: -kv[1][0])[:top_k])
    return out


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("top_k", [1, 3, 50])
def test_exact_search_equals_brute_force(chunk, top_k):
    rng = np.random.default_rng(top_k * 10 + chunk)
    index, _ = random_index(rng, n_docs=17)
    questions = [" ".join(rng.choice([f"w{i}" for i in range(40)], 4)) for _ in range(6)]
    q_emb = rng.normal(size=(6, 8)).astype(np.float32)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    searcher = SearchIndex(index, top_k, lexical_weight=0.7, chunk_passages=chunk)
    got = searcher.search(q_emb, questions)
    lex = LexicalBatch(questions, searcher.weights, index["idf"], float(index["k1"])).chunk(0, len(index["emb"]))
    expected = brute_force(q_emb, lex, index, top_k, 0.7)
    for i, exp in enumerate(expected):
        assert got["doc"][i][: len(exp)].tolist() == [d for d, _ in exp]
        assert got["passage"][i][: len(exp)].tolist() == [p for _, (_, p) in exp]
        np.testing.assert_allclose(got["score"][i][: len(exp)], [s for _, (s, _) in exp], rtol=1e-5)
        np.testing.assert_allclose(
            got["dense"][i][: len(exp)] + 0.7 * got["lexical"][i][: len(exp)],
            got["score"][i][: len(exp)],
            rtol=1e-5,
            atol=1e-6,
        )
        assert (got["doc"][i][len(exp) :] == -1).all()


def test_approximate_search_finds_what_exact_search_finds():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    index, _ = random_index(rng, n_docs=300, dim=16)
    questions = [" ".join(rng.choice([f"w{i}" for i in range(40)], 4)) for _ in range(20)]
    q_emb = index["emb"][rng.choice(len(index["emb"]), 20)] + rng.normal(scale=0.05, size=(20, 16)).astype(np.float32)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    exact = SearchIndex(index, 3, 0.5).search(q_emb, questions)
    approx = SearchIndex({**index, "ann": build_ann(index["emb"])}, 3, 0.5).search(q_emb, questions)
    assert approx["doc"].shape == (20, 3) and (approx["doc"][:, 0] == exact["doc"][:, 0]).mean() >= 0.9
    np.testing.assert_allclose(approx["dense"] + 0.5 * approx["lexical"], approx["score"], rtol=1e-5, atol=1e-6)


# --- question pass ----------------------------------------------------------------------------


def test_question_rows_stream_from_jsonl_parquet_and_json(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": 1, "question": "q1"}\n\nbroken\n')
    pq.write_table(pa.table({"id": ["p1", "p2"], "question": ["q2", None]}), tmp_path / "b.parquet")
    (tmp_path / "c.json").write_text(json.dumps([{"id": "j", "question": "q3"}]))
    rows = list(iter_raw_rows(str(tmp_path)))
    assert [(src.rsplit("/", 1)[-1], n) for src, n, _ in rows] == [
        ("a.jsonl", 1),
        ("a.jsonl", 3),
        ("b.parquet", 1),
        ("b.parquet", 2),
        ("c.json", 1),
    ]
    assert rows[1][2].reason.startswith("not valid JSON") and rows[3][2] == {"id": "p2", "question": None}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .json, .jsonl or .parquet files"):
        list(iter_raw_rows(str(tmp_path / "empty")))


def test_question_stager_merges_identical_questions_and_rejects_duplicate_ids(tmp_path):
    stager = QuestionStager(str(tmp_path))
    rows = [
        {"id": "a", "question": "Where is it?"},
        {"id": "b", "question": " where  IS it? "},
        {"id": "a", "question": "other"},
        {"id": "c", "question": 4},
        {"id": "d", "question": "Who?"},
        {"id": "e", "question": "where is it?"},
    ]
    for n, raw in enumerate(rows, start=1):
        stager.add("q.jsonl", n, raw)
    stager.finish()
    assert stager.rows_in == 6 and stager.rep_ids == ["a", "d"] and list(stager.counts) == [3, 1]
    staged = [json.loads(line) for line in (tmp_path / "_work/questions/part-00000.jsonl").read_text().splitlines()]
    assert [(r["slot"], r["id"], r["row"]) for r in staged] == [(0, "a", 1), (1, "d", 5)]
    dups = [json.loads(line) for line in (tmp_path / "duplicates/part-00000.jsonl").read_text().splitlines()]
    assert [(d["id"], d["same_as"]) for d in dups] == [("b", "a"), ("e", "a")]
    rejects = [json.loads(line) for line in (tmp_path / "rejects/questions-00000.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (3, "duplicate question id 'a'"),
        (4, "field 'question' is int, not a string"),
    ]


def test_part_writer_splits_files_and_writes_parquet(tmp_path):
    w = PartWriter(str(tmp_path / "p"), fmt="parquet", rows_per_file=2)
    for i in range(5):
        w.add({"id": str(i), "score": float(i)})
    w.flush()
    assert [f["rows"] for f in w.files] == [2, 2, 1] and w.rows == 5
    assert pq.read_table(tmp_path / "p/part-00002.parquet").to_pylist() == [{"id": "4", "score": 4.0}]
