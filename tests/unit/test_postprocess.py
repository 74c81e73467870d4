"""Post-processing round trips: logits built to favour a known span (or [CLS]) across the windows of
a long real context give exactly that answer (or ""), with the null score, max_answer_len, context-only
spans, the null threshold and na_probs checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadist.squad.features import make_windows
from qadist.squad.postprocess import best_spans, postprocess

MAX_SEQ_LEN, STRIDE, MAX_QUERY_LEN = 64, 16, 16
CLS_LOGIT = -2.0
HIGH = 8.0


@pytest.fixture(scope="module")
def long_windows(squad_pairs, bert_tokenizer):
    """The sample's longest context, cut into windows of 64 tokens: (pair, window rows, context tokens)."""
    pair = max(squad_pairs, key=lambda p: len(p["context"]))
    batch = {k: [pair[k]] for k in ("id", "question", "context")}
    w = make_windows(batch, bert_tokenizer, MAX_SEQ_LEN, STRIDE, MAX_QUERY_LEN)
    rows = [{"id": w["id"][i], "offsets": w["offsets"][i], "n": len(w["input_ids"][i])} for i in range(len(w["id"]))]
    tokens = bert_tokenizer(pair["context"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(rows) >= 5
    return pair, rows, [tuple(t) for t in tokens]


def flat_logits(rows, cls: float = CLS_LOGIT) -> list[dict]:
    out = []
    for r in rows:
        start, end = np.zeros(r["n"]), np.zeros(r["n"])
        start[0] = end[0] = cls
        out.append({**r, "start_logits": start, "end_logits": end})
    return out


def token_at(row, char_start: int | None = None, char_end: int | None = None) -> int | None:
    for i, (s, e) in enumerate(row["offsets"]):
        if s >= 0 and (char_start is None or s == char_start) and (char_end is None or e == char_end):
            return i
    return None


def favour(windows, char_start: int, char_end: int, score: float = HIGH) -> int:
    """Raise start/end logits at the span's tokens in every window that holds it whole."""
    hits = 0
    for w in windows:
        i, j = token_at(w, char_start=char_start), token_at(w, char_end=char_end)
        if i is not None and j is not None:
            w["start_logits"][i] = w["end_logits"][j] = score
            hits += 1
    return hits


def windows_holding(rows, char_start, char_end) -> list[int]:
    return [
        k
        for k, r in enumerate(rows)
        if token_at(r, char_start=char_start) is not None and token_at(r, char_end=char_end) is not None
    ]


@pytest.mark.parametrize("where", [0.1, 0.5, 0.93])
def test_favoured_span_is_the_answer_across_windows(where, long_windows):
    pair, rows, tokens = long_windows
    t = int(len(tokens) * where)
    char_start, char_end = tokens[t][0], tokens[t + 3][1]
    windows = flat_logits(rows)
    assert favour(windows, char_start, char_end) >= 1
    # Big logits on question and special tokens must not be taken: they are not context.
    for w in windows:
        for i, (s, _) in enumerate(w["offsets"]):
            if s < 0 and i > 0:
                w["start_logits"][i] = w["end_logits"][i] = 50.0
    predictions, na_probs = postprocess(windows, {pair["id"]: pair["context"]})
    assert predictions[pair["id"]] == pair["context"][char_start:char_end]
    assert na_probs[pair["id"]] == pytest.approx(1 / (1 + math.exp(-(2 * CLS_LOGIT - 2 * HIGH))))


def test_favoured_span_in_one_window_only(long_windows):
    """The span sits in the middle of one window; the other windows only hold [CLS]-level logits."""
    pair, rows, tokens = long_windows
    t = len(tokens) // 2
    char_start, char_end = tokens[t][0], tokens[t + 1][1]
    holding = windows_holding(rows, char_start, char_end)
    windows = flat_logits(rows)
    target = windows[holding[-1]]
    target["start_logits"][token_at(target, char_start=char_start)] = HIGH
    target["end_logits"][token_at(target, char_end=char_end)] = HIGH
    predictions, _ = postprocess(windows, {pair["id"]: pair["context"]})
    assert predictions[pair["id"]] == pair["context"][char_start:char_end]


def test_favouring_cls_gives_empty_answer(long_windows):
    pair, rows, _ = long_windows
    windows = flat_logits(rows, cls=HIGH)
    predictions, na_probs = postprocess(windows, {pair["id"]: pair["context"]})
    assert predictions[pair["id"]] == ""
    assert na_probs[pair["id"]] == pytest.approx(1 / (1 + math.exp(-2 * HIGH)))
    assert na_probs[pair["id"]] > 0.5


def test_null_score_is_the_smallest_cls_score_over_windows(long_windows):
    """[CLS] is favoured in every window but one, whose [CLS] score is below the best span's: the
    smallest null score wins, so the span is answered. (With the largest, or the first window's,
    the answer would be "".)"""
    pair, rows, tokens = long_windows
    t = len(tokens) // 3
    char_start, char_end = tokens[t][0], tokens[t + 2][1]
    windows = flat_logits(rows, cls=10.0)
    favour(windows, char_start, char_end, score=3.0)  # span score 6
    last = windows[-1]
    last["start_logits"][0] = last["end_logits"][0] = 1.0  # null score 2 < 6 < 20
    predictions, na_probs = postprocess(windows, {pair["id"]: pair["context"]})
    assert predictions[pair["id"]] == pair["context"][char_start:char_end]
    assert na_probs[pair["id"]] == pytest.approx(1 / (1 + math.exp(-(2.0 - 6.0))))
    # Raising that window's [CLS] above the span score flips the answer to "".
    last["start_logits"][0] = last["end_logits"][0] = 3.5
    assert postprocess(windows, {pair["id"]: pair["context"]})[0][pair["id"]] == ""


def test_max_answer_len_is_respected(long_windows):
    """The highest-scoring pair of tokens is 20 tokens apart: with max_answer_len=10 a shorter span wins."""
    pair, rows, _ = long_windows
    w = flat_logits(rows)[2]
    ctx = [i for i, (s, _) in enumerate(w["offsets"]) if s >= 0]
    i, j, k = ctx[5], ctx[25], ctx[8]
    w["start_logits"][i], w["end_logits"][j] = 9.0, 9.0  # 18, but 21 tokens long
    w["end_logits"][k] = 4.0  # 13, 4 tokens long
    context = {pair["id"]: pair["context"]}
    short, _ = postprocess([w], context, max_answer_len=10)
    assert short[pair["id"]] == pair["context"][w["offsets"][i][0] : w["offsets"][k][1]]
    long_, _ = postprocess([w], context, max_answer_len=30)
    assert long_[pair["id"]] == pair["context"][w["offsets"][i][0] : w["offsets"][j][1]]
    for _score, s, e in best_spans(w["start_logits"], w["end_logits"], w["offsets"], n_best=20, max_answer_len=10):
        n_tokens = sum(1 for ts, te in w["offsets"] if ts >= s and te <= e and ts >= 0)
        assert n_tokens <= 10


def test_end_before_start_is_never_a_span(long_windows):
    """Start peak one token after the end peak: the pair (score 18) is invalid; the best is 9."""
    pair, rows, _ = long_windows
    w = flat_logits(rows)[1]
    ctx = [i for i, (s, _) in enumerate(w["offsets"]) if s >= 0]
    w["start_logits"][ctx[10]] = 9.0
    w["end_logits"][ctx[9]] = 9.0
    spans = best_spans(w["start_logits"], w["end_logits"], w["offsets"])
    assert spans and spans[0][0] == 9.0
    assert all(s < e for _, s, e in spans)
    assert all(not (s == w["offsets"][ctx[10]][0] and e == w["offsets"][ctx[9]][1]) for _, s, e in spans)


def test_null_threshold(long_windows):
    pair, rows, tokens = long_windows
    t = len(tokens) // 2
    char_start, char_end = tokens[t][0], tokens[t][1]
    windows = flat_logits(rows)  # null = -4
    favour(windows, char_start, char_end, score=1.0)  # best span = 2, diff = -6
    context = {pair["id"]: pair["context"]}
    answer = pair["context"][char_start:char_end]
    assert postprocess(windows, context, null_threshold=0.0)[0][pair["id"]] == answer
    assert postprocess(windows, context, null_threshold=-5.9)[0][pair["id"]] == answer
    assert postprocess(windows, context, null_threshold=-6.1)[0][pair["id"]] == ""
    assert postprocess(windows, context, null_threshold=-6.1)[1][pair["id"]] == pytest.approx(1 / (1 + math.exp(6.0)))


def test_windows_without_context_tokens_give_no_answer():
    w = {"id": "q", "offsets": [[-1, -1]] * 4, "start_logits": [0.0, 5, 5, 5], "end_logits": [0.0, 5, 5, 5]}
    assert best_spans(np.array(w["start_logits"]), np.array(w["end_logits"]), w["offsets"]) == []
    predictions, na_probs = postprocess([w], {"q": "text"})
    assert predictions == {"q": ""} and na_probs == {"q": 1.0}


def test_several_examples_and_n_best_order():
    ctx = {"a": "alpha beta gamma", "b": "delta epsilon"}
    offs_a = [[-1, -1], [-1, -1], [0, 5], [6, 10], [11, 16], [-1, -1]]
    offs_b = [[-1, -1], [-1, -1], [0, 5], [6, 13], [-1, -1]]
    windows = [
        {"id": "a", "offsets": offs_a, "start_logits": [0, 0, 1, 4, 0, 0], "end_logits": [0, 0, 0, 1, 5, 0]},
        {"id": "b", "offsets": offs_b, "start_logits": [0, 0, 6, 0, 0], "end_logits": [0, 0, 6, 0, 0]},
    ]
    predictions, na_probs = postprocess(windows, ctx)
    assert predictions == {"a": "beta gamma", "b": "delta"}
    spans = best_spans(
        np.array(windows[0]["start_logits"], float), np.array(windows[0]["end_logits"], float), offs_a, n_best=3
    )
    assert [s[0] for s in spans] == sorted((s[0] for s in spans), reverse=True) and len(spans) == 3
    assert spans[0] == (9.0, 6, 16)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=2, max_size=30))
def test_na_probs_in_unit_interval_and_monotone_in_score_difference(scores):
    """One example per (null, span) score pair: na_prob in [0, 1], never decreasing in null - span."""
    windows, diffs = [], {}
    for n, (null, span) in enumerate(scores):
        windows.append(
            {
                "id": str(n),
                "offsets": [[-1, -1], [0, 1], [-1, -1]],
                "start_logits": [null, span, 0.0],
                "end_logits": [0.0, 0.0, 0.0],
            }
        )
        diffs[str(n)] = null - span
    _, na_probs = postprocess(windows, {str(n): "x" for n in range(len(scores))})
    assert all(0.0 <= p <= 1.0 for p in na_probs.values())
    order = sorted(diffs, key=diffs.get)
    probs = [na_probs[k] for k in order]
    assert all(a <= b for a, b in zip(probs, probs[1:]))


def reference_best_spans(start, end, offsets, n_best, max_answer_len):
    """The plain double loop over the top start and end candidates (the definition best_spans follows)."""
    in_context = [o[0] >= 0 for o in offsets]
    starts = np.argsort(-np.where(in_context, start, -np.inf))[:n_best]
    ends = np.argsort(-np.where(in_context, end, -np.inf))[:n_best]
    spans = [
        (float(start[i] + end[j]), offsets[i][0], offsets[j][1])
        for i in starts
        for j in ends
        if in_context[i] and in_context[j] and i <= j < i + max_answer_len
    ]
    spans.sort(key=lambda s: -s[0])
    return spans[:n_best]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), n_best=st.integers(1, 25), max_answer_len=st.integers(1, 12))
def test_best_spans_matches_the_double_loop_and_brute_force(data, n, n_best, max_answer_len):
    logit = st.integers(-3, 3).map(float)  # small integers: many ties
    start = np.array(data.draw(st.lists(logit, min_size=n, max_size=n)))
    end = np.array(data.draw(st.lists(logit, min_size=n, max_size=n)))
    is_ctx = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    offsets = [[2 * k, 2 * k + 1] if c else [-1, -1] for k, c in enumerate(is_ctx)]
    got = best_spans(start, end, offsets, n_best, max_answer_len)
    assert got == reference_best_spans(start, end, offsets, n_best, max_answer_len)
    every = [
        start[i] + end[j] for i in range(n) for j in range(i, min(n, i + max_answer_len)) if is_ctx[i] and is_ctx[j]
    ]
    if n_best >= n:  # every candidate considered: the best is the best of all valid pairs
        assert (got[0][0] if got else None) == (max(every) if every else None)
