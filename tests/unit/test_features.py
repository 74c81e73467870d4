"""Windows on the real SQuAD sample with a BERT-style and an ALBERT-style tokenizer, gold positions,
question truncation, and invariants on arbitrary unicode (hypothesis).

Run with `pytest -s` to see the counts per tokenizer and length.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qadist.squad.features import check_lengths, gold_positions, make_windows, truncate_questions

LENGTHS = [(128, 32), (384, 128)]
MAX_QUERY_LEN = 64


def columns(pairs: list[dict]) -> dict[str, list]:
    return {k: [p.get(k) for p in pairs] for k in ("id", "question", "context", "answers")}


@pytest.fixture(scope="module")
def tokenizers(bert_tokenizer, albert_tokenizer) -> dict:
    return {"bert": bert_tokenizer, "albert": albert_tokenizer}


@pytest.fixture(scope="module")
def sample_windows(squad_pairs, tokenizers):
    """(tokenizer name, max_seq_len, doc_stride) -> {pair id: [window rows]}, computed once each."""
    cache: dict = {}

    def get(name: str, max_seq_len: int, doc_stride: int) -> dict[str, list[dict]]:
        key = (name, max_seq_len, doc_stride)
        if key not in cache:
            w = make_windows(columns(squad_pairs), tokenizers[name], max_seq_len, doc_stride, MAX_QUERY_LEN)
            by_id: dict[str, list[dict]] = {}
            for i, pair_id in enumerate(w["id"]):
                by_id.setdefault(pair_id, []).append({k: w[k][i] for k in w})
            cache[key] = by_id
        return cache[key]

    return get


def covered(length: int, offset_lists) -> bytearray:
    cov = bytearray(length)
    for offsets in offset_lists:
        for s, e in offsets:
            if s >= 0:
                cov[s:e] = b"\x01" * (e - s)
    return cov


def dropped_by_tokenizer(ch: str) -> bool:
    """Characters a tokenizer's normalizer may remove: whitespace, controls and format characters
    (BERT's clean-up deletes U+200B ZERO WIDTH SPACE, category Cf)."""
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")


@pytest.mark.parametrize("max_seq_len,doc_stride", LENGTHS)
@pytest.mark.parametrize("name", ["bert", "albert"])
def test_windows_cover_every_context_character(name, max_seq_len, doc_stride, squad_pairs, tokenizers, sample_windows):
    """Every non-whitespace context character lies in some window, except characters the tokenizer
    itself drops from the whole context (then they must be controls or format characters)."""
    by_id = sample_windows(name, max_seq_len, doc_stride)
    tok = tokenizers[name]
    contexts = sorted({p["context"] for p in squad_pairs})
    whole = dict(zip(contexts, tok(contexts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]))
    visible = {c: np.array([not ch.isspace() for ch in c], dtype=bool) for c in contexts}  # once per context
    n_windows, explained = 0, []
    for p in squad_pairs:
        context, windows = p["context"], by_id[p["id"]]
        n_windows += len(windows)
        assert [w["window"] for w in windows] == list(range(len(windows)))
        in_windows = np.frombuffer(covered(len(context), [w["offsets"] for w in windows]), dtype=np.uint8) > 0
        by_tokenizer = covered(len(context), [whole[context]])
        missing = np.flatnonzero(visible[context] & ~in_windows)
        for i in missing:
            assert not by_tokenizer[i], (
                f"{p['id']}: character {i} {context[i]!r} is in no window but the tokenizer keeps it"
            )
            assert dropped_by_tokenizer(context[i]), f"{p['id']}: {context[i]!r} dropped by the tokenizer"
            explained.append(context[i])
    print(
        f"\n[coverage {name} {max_seq_len}/{doc_stride}] windows={n_windows} pairs={len(squad_pairs)} "
        f"characters dropped by the tokenizer itself={len(explained)} {sorted(set(explained))}"
    )
    assert n_windows > len(squad_pairs)  # some contexts need several windows at these lengths


@pytest.mark.parametrize("max_seq_len,doc_stride", LENGTHS)
@pytest.mark.parametrize("name", ["bert", "albert"])
def test_windows_respect_lengths_and_offsets(name, max_seq_len, doc_stride, squad_pairs, tokenizers, sample_windows):
    by_id = sample_windows(name, max_seq_len, doc_stride)
    tok = tokenizers[name]
    contexts = {p["id"]: p["context"] for p in squad_pairs}
    longest = 0
    for pair_id, windows in by_id.items():
        for w in windows:
            longest = max(longest, len(w["input_ids"]))
            assert len(w["input_ids"]) <= max_seq_len
            assert len(w["offsets"]) == len(w["input_ids"])
            assert w["input_ids"][0] == tok.cls_token_id
            # Question tokens (before the first [SEP]) never exceed max_query_len.
            assert w["input_ids"].index(tok.sep_token_id) - 1 <= MAX_QUERY_LEN
            ctx = [(s, e) for s, e in w["offsets"] if s >= 0]
            assert ctx, f"{pair_id}: a window without context tokens"
            assert all(0 <= s <= e <= len(contexts[pair_id]) for s, e in ctx)
            assert all(tuple(o) == (-1, -1) for o in w["offsets"] if o[0] < 0)
            if "token_type_ids" in w:
                assert len(w["token_type_ids"]) == len(w["input_ids"])
    assert longest == max_seq_len  # the long contexts fill their windows


def gold_token_span(offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last token of `offsets` that overlap [start_char, end_char), or None."""
    hits = [i for i, (s, e) in enumerate(offsets) if s >= 0 and s < end_char and e > start_char]
    return (hits[0], hits[-1]) if hits else None


@pytest.mark.parametrize("max_seq_len,doc_stride", LENGTHS)
@pytest.mark.parametrize("name", ["bert", "albert"])
def test_gold_text_recovered_from_some_window(name, max_seq_len, doc_stride, squad_pairs, tokenizers, sample_windows):
    """For every answerable question the first gold answer comes back exactly from a window's gold
    positions, except answers whose boundary falls inside a token (the recovered span then strictly
    contains the gold text) and answers longer than the window overlap that fit no window whole."""
    by_id = sample_windows(name, max_seq_len, doc_stride)
    tok = tokenizers[name]
    answerable = [p for p in squad_pairs if p["answers"]["text"]]
    mid_token, too_long = [], []
    for p in answerable:
        context, windows = p["context"], by_id[p["id"]]
        gold, start = p["answers"]["text"][0], p["answers"]["answer_start"][0]
        end = start + len(gold)
        recovered = []
        for w in windows:
            assert w["answers"] == p["answers"]
            s, e = w["start_position"], w["end_position"]
            assert (s == 0) == (e == 0) and s <= e
            if s > 0:
                recovered.append(context[w["offsets"][s][0] : w["offsets"][e][1]])
        if gold in recovered:
            continue
        whole = tok(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        span = gold_token_span(whole, start, end)
        assert span is not None, f"{p['id']}: no token overlaps the answer {gold!r}"
        rs, re_ = whole[span[0]][0], whole[span[1]][1]
        if recovered:
            # The tokens holding the answer reach outside it: a boundary falls mid-token.
            assert recovered == [context[rs:re_]] * len(recovered), (p["id"], gold, recovered)
            assert rs <= start and re_ >= end and (rs, re_) != (start, end), (p["id"], gold, recovered)
            mid_token.append((p["id"], gold, recovered[0]))
        else:
            # No window holds every token of the answer: it is longer than the overlap between windows.
            assert span[1] - span[0] + 1 > doc_stride, (p["id"], gold)
            for w in windows:
                ctx = [(s, e) for s, e in w["offsets"] if s >= 0]
                assert not (ctx[0][0] <= start and ctx[-1][1] >= end), (p["id"], gold)
            too_long.append((p["id"], gold))
    print(
        f"\n[gold {name} {max_seq_len}/{doc_stride}] windows={sum(map(len, by_id.values()))} pairs={len(squad_pairs)} "
        f"answerable={len(answerable)} exceptions={len(mid_token) + len(too_long)} "
        f"(boundary inside a token: {len(mid_token)}, longer than the window overlap: {len(too_long)})"
    )
    for pair_id, gold, got in mid_token:
        print(f"  mid-token {pair_id}: gold {gold!r} -> tokens give {got!r}")
    for pair_id, gold in too_long:
        print(f"  too long  {pair_id}: {gold!r}")
    # Exceptions are rare: the tokenizers must keep answers recoverable in practice.
    assert len(mid_token) + len(too_long) <= 0.01 * len(answerable)


def test_unanswerable_questions_point_at_cls(squad_pairs, sample_windows):
    by_id = sample_windows("bert", 384, 128)
    unanswerable = [p for p in squad_pairs if not p["answers"]["text"]]
    assert unanswerable
    for p in unanswerable:
        assert all((w["start_position"], w["end_position"]) == (0, 0) for w in by_id[p["id"]])


# --- gold_positions on hand-built offsets -------------------------------------------------------

# "[CLS] q [SEP] alpha beta gamma [SEP]" over the context "alpha beta gamma"
WINDOW = [[-1, -1], [-1, -1], [-1, -1], [0, 5], [6, 10], [11, 16], [-1, -1]]


@pytest.mark.parametrize(
    "start,text,expected",
    [
        (0, "alpha", (3, 3)),  # first context token of the window
        (11, "gamma", (5, 5)),  # last context token of the window
        (0, "alpha beta gamma", (3, 5)),  # the whole window
        (6, "beta gamma", (4, 5)),
        (7, "eta", (4, 4)),  # starts and ends inside a token: that token
        (8, "ta gam", (4, 5)),
    ],
)
def test_gold_positions_inside_window(start, text, expected):
    assert gold_positions(WINDOW, start, text) == expected


@pytest.mark.parametrize(
    "offsets,start,text",
    [
        (WINDOW, 11, "gamma delta"),  # runs past the window's last token
        ([[-1, -1], [20, 25], [26, 30], [-1, -1]], 11, "gamma delta"),  # starts before the window's first token
        ([[-1, -1], [20, 25], [-1, -1]], 40, "later"),  # wholly after the window
        ([[-1, -1], [-1, -1], [-1, -1]], 0, "alpha"),  # a window with no context tokens
        ([[-1, -1], [0, 5], [9, 12], [-1, -1]], 6, "xy"),  # falls between two tokens (dropped text)
    ],
)
def test_gold_positions_outside_window_is_cls(offsets, start, text):
    assert gold_positions(offsets, start, text) == (0, 0)


def test_gold_positions_across_windows(bert_tokenizer):
    """An answer in the overlap of two windows gets positions in both; an answer cut by a window's
    end gets [CLS] there and positions in the next window; one longer than the overlap that
    straddles a boundary gets [CLS] everywhere."""
    context = " ".join(f"word{i}" for i in range(200))
    batch = {"id": ["p"], "question": ["which word?"], "context": [context]}
    probe = make_windows(batch, bert_tokenizer, 48, 16, 16)
    assert len(probe["id"]) >= 4
    spans = [[tuple(o) for o in offs if o[0] >= 0] for offs in probe["offsets"]]
    first_of_1 = spans[0].index(spans[1][0])
    assert len(spans[0]) - first_of_1 == 16  # doc_stride tokens shared by windows 0 and 1
    cases = [
        (spans[1][0][0], spans[1][0][1], [True, True]),  # inside the overlap
        (spans[1][5][0], spans[1][20][1], [False, True]),  # runs past window 0's end
        (spans[0][first_of_1 - 1][0], spans[1][16][1], [False, False]),  # 18 tokens across the boundary
    ]
    for text_start, text_end, expect in cases:
        answer = context[text_start:text_end]
        w = make_windows(
            {**batch, "answers": [{"text": [answer], "answer_start": [text_start]}]}, bert_tokenizer, 48, 16, 16
        )
        found = []
        for k in range(len(w["id"])):
            s, e = w["start_position"][k], w["end_position"][k]
            offs = [o for o in w["offsets"][k] if o[0] >= 0]
            whole = offs[0][0] <= text_start and offs[-1][1] >= text_end
            found.append(s > 0)
            if whole:
                assert context[w["offsets"][k][s][0] : w["offsets"][k][e][1]] == answer
            else:
                assert (s, e) == (0, 0)
        assert found[:2] == expect and not any(found[2:])


def test_unanswerable_and_missing_answers(bert_tokenizer):
    batch = {
        "id": ["a", "b"],
        "question": ["q?", "q?"],
        "context": ["some context here", "more text"],
        "answers": [{"text": [], "answer_start": []}, None],
    }
    w = make_windows(batch, bert_tokenizer, 32, 8, 8)
    assert list(zip(w["start_position"], w["end_position"])) == [(0, 0), (-1, -1)]
    assert w["answers"] == [{"text": [], "answer_start": []}, None]
    w = make_windows({k: batch[k] for k in ("id", "question", "context")}, bert_tokenizer, 32, 8, 8)
    assert "answers" not in w and w["start_position"] == [-1, -1]


# --- question truncation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_questions_truncated_to_max_query_len(name, tokenizers):
    tok = tokenizers[name]
    long_q = "   " + " ".join(["what is the population of the capital city"] * 10) + "?"
    short_q = "who won?"
    cut = truncate_questions([long_q, short_q], tok, 12)
    assert cut[1] == short_q
    assert long_q.lstrip().startswith(cut[0]) and len(cut[0]) < len(long_q.lstrip())
    assert len(tok(cut[0], add_special_tokens=False)["input_ids"]) == 12
    w = make_windows(
        {"id": ["x"], "question": [long_q], "context": ["the capital has two million people"]}, tok, 64, 8, 12
    )
    first_sep = w["input_ids"][0].index(tok.sep_token_id)
    assert first_sep - 1 == 12
    assert w["offsets"][0][: first_sep + 1] == [(-1, -1)] * (first_sep + 1)


def test_truncation_when_one_character_becomes_many_tokens(albert_tokenizer):
    """NFKD turns U+FDFA into four Arabic words: the cut must still leave <= max_query_len tokens."""
    q = "why \ufdfa\ufdfa\ufdfa\ufdfa"
    cut = truncate_questions([q], albert_tokenizer, 6)[0]
    assert q.startswith(cut)
    assert len(albert_tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 6


def test_check_lengths():
    assert check_lengths(384, 128, 64) is None
    assert "doc_stride" in check_lengths(128, 128, 64)
    assert "max_seq_len" in check_lengths(64, 8, 60)


# --- invariants on arbitrary unicode --------------------------------------------------------------

SPECIAL = list(
    "\u0301\u0308\u20dd"  # combining marks
    "\u200b\u200c\u200d\ufeff"  # zero-width space / non-joiner / joiner, BOM
    "\u200e\u200f\u202e\u05d0\u05e9\u0627\u0644"  # RTL marks and letters
    "\U0001f600\U0001f44d\U0001f3fd\u2764\ufe0f"  # emoji with a skin-tone modifier and VS16
    "\x00\x07\x1b\x7f\x85"  # control characters
    "\n\t \u3000\xa0\u2028"  # whitespace of many kinds
    "\u6771\u4eac\u00e9\ufdfa\u00bca.,()-1"
)
TEXT = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",))), max_size=200)
CONTEXT = st.one_of(TEXT, st.tuples(TEXT, st.text(alphabet=" \n\t\u3000", min_size=1, max_size=40), TEXT).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(question=TEXT, context=CONTEXT, name=st.sampled_from(["bert", "albert"]), data=st.data())
def test_windows_invariants_on_arbitrary_unicode(question, context, name, data, bert_tokenizer, albert_tokenizer):
    tok = {"bert": bert_tokenizer, "albert": albert_tokenizer}[name]
    answers = None
    if context:
        a = data.draw(st.integers(0, len(context) - 1))
        b = data.draw(st.integers(a + 1, len(context)))
        answers = [{"text": [context[a:b]], "answer_start": [a]}]
    batch = {"id": ["x"], "question": [question], "context": [context], **({"answers": answers} if answers else {})}
    w = make_windows(batch, tok, 32, 8, 8)
    assert w["id"] and w["window"] == list(range(len(w["id"])))
    for k, (ids, offsets) in enumerate(zip(w["input_ids"], w["offsets"])):
        assert len(ids) <= 32 and len(offsets) == len(ids)
        assert all(o == (-1, -1) or 0 <= o[0] <= o[1] <= len(context) for o in offsets)
        assert ids.index(tok.sep_token_id) - 1 <= 8
        s, e = w["start_position"][k], w["end_position"][k]
        if answers is None:
            assert (s, e) == (-1, -1)
        elif s > 0:
            # Every context character the window's tokens cover inside the answer is in the span.
            a = answers[0]["answer_start"][0]
            b = a + len(answers[0]["text"][0])
            lo, hi = offsets[s][0], offsets[e][1]
            for ts, te in offsets:
                if ts >= 0 and te > ts and ts < b and te > a:
                    assert lo <= ts and te <= hi
