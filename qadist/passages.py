"""Documents -> passages: token windows with overlap, and the context given to a pair.

A document (`qadist.documents`) is a row with `id`, `text` (or `context`) and an optional `title`. It is cut into
passages of `passage_tokens` tokens of the embedding model, consecutive passages sharing `overlap`
tokens; a cut never falls inside a word. Every passage keeps its document (index) and character
span, so a match can always be traced back to the document text.

The context written into a pair is the matched passage widened, symmetrically and at word
boundaries, to `context_tokens` tokens of the document (the whole document when it is shorter).
On the SQuAD sample the answer lies inside the 128-token passage for 96% of correctly matched
questions and inside a 384-token widening for 99.9%: the wider context keeps answers that sit next
to the passage, while still fitting about one teacher window (see docs/pairs.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def word_starts(word_ids: list[int | None]) -> list[bool]:
    """True where a token begins a word (a cut may fall before it)."""
    return [i == 0 or w is None or w != word_ids[i - 1] for i, w in enumerate(word_ids)]


def token_windows(starts: list[bool], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index ranges [s, e) of at most `size` tokens, `overlap` shared, cut between words.

    A window ends before the word that would cross `size`, and the next one starts at the last word
    start at or before `e - overlap` (so the overlap is at least `overlap` tokens). A cut falls
    inside a word only when the word is too long for any other cut to make progress.
    """
    n = len(starts)
    windows: list[tuple[int, int]] = []
    s, prev_end = 0, 0
    while n:
        e = min(s + size, n)
        if e < n:
            cut = e
            while cut > prev_end + 1 and cut > s + 1 and not starts[cut]:
                cut -= 1
            e = cut if starts[cut] and cut > prev_end else e
        windows.append((s, e))
        if e >= n:
            break
        nxt = max(e - overlap, s + 1)
        while nxt > s + 1 and not starts[nxt]:
            nxt -= 1
        s, prev_end = nxt, e
    return windows


def split_document(
    text: str, tokenizer: Any, passage_tokens: int, overlap: int, context_tokens: int = 0
) -> list[tuple[int, int, int, int]]:
    """(start, end, context_start, context_end) character spans of the document's passages.

    [start, end) is the passage (see `token_windows`); [context_start, context_end) the passage
    widened to `context_tokens` (see `widen`).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    if not offsets:
        return [(0, len(text), 0, len(text))]
    starts = word_starts(enc.word_ids())
    out = []
    for s, e in token_windows(starts, passage_tokens, overlap):
        lo, hi = widen(starts, s, e, context_tokens)
        out.append((offsets[s][0], offsets[e - 1][1], offsets[lo][0], offsets[hi - 1][1]))
    return out


def widen(starts: list[bool], first: int, last: int, context_tokens: int) -> tuple[int, int]:
    """Token range [first, last) widened to about `context_tokens` tokens, never cutting a word.

    The passage stays whole; the extra tokens go half before and half after it (more on one side
    when the other reaches the document's edge); the whole document when it is short enough.
    0 means the passage alone.
    """
    n = len(starts)
    size = max(context_tokens, last - first)
    if context_tokens <= 0 or size >= n:
        return (first, last) if context_tokens <= 0 else (0, n)
    lo = max(0, first - (size - (last - first)) // 2)
    hi = min(n, lo + size)
    lo = max(0, hi - size)
    while lo < first and not starts[lo]:
        lo += 1
    while last < hi < n and not starts[hi]:
        hi -= 1
    return lo, hi


def build_passages(
    docs: list[dict], tokenizer: Any, passage_tokens: int, overlap: int, context_tokens: int = 0
) -> dict[str, np.ndarray]:
    """Documents -> passage columns `doc` (index into docs), `start`, `end`, `context_start`,
    `context_end` (character offsets in the document), contiguous per document.

    `doc_starts[i]` is the first passage of document i (length len(docs) + 1), so the passages of
    document i are `doc_starts[i]:doc_starts[i + 1]`.
    """
    cols: dict[str, list[int]] = {k: [] for k in ("doc", "start", "end", "context_start", "context_end")}
    doc_starts = [0]
    for i, doc in enumerate(docs):
        spans = split_document(doc["text"], tokenizer, passage_tokens, overlap, context_tokens)
        cols["doc"] += [i] * len(spans)
        for name, values in zip(("start", "end", "context_start", "context_end"), zip(*spans)):
            cols[name] += values
        doc_starts.append(len(cols["doc"]))
    out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    out["doc_starts"] = np.asarray(doc_starts, dtype=np.int64)
    return out


def passage_texts(docs: list[dict], passages: dict[str, np.ndarray]) -> Iterable[str]:
    for d, s, e in zip(passages["doc"], passages["start"], passages["end"]):
        yield docs[d]["text"][s:e]
