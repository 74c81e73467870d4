"""Windows: question + a slice of the context, as teacher and student both see them.

`make_windows` is a pure function on a batch of pairs (a dict of columns), so Ray Data's
`map_batches`, the trainers and the tests all run the same code. It works for any fast Hugging Face
tokenizer. `doc_stride` is the overlap in tokens between consecutive windows of one context (the
Hugging Face `run_qa.py` convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NO_OFFSET = (-1, -1)


def check_lengths(max_seq_len: int, doc_stride: int, max_query_len: int) -> str | None:
    """A reason the lengths cannot work together, or None."""
    room = max_seq_len - max_query_len - 3  # [CLS] question [SEP] context [SEP]
    if room < 8:
        return (
            f"max_seq_len={max_seq_len} leaves {room} context tokens after max_query_len={max_query_len}; "
            "raise max_seq_len or lower max_query_len"
        )
    if not 0 <= doc_stride < room:
        return (
            f"doc_stride={doc_stride} must be in [0, {room}) "
            f"for max_seq_len={max_seq_len} and max_query_len={max_query_len}"
        )
    return None


def truncate_questions(questions: Sequence[str], tokenizer: Any, max_query_len: int) -> list[str]:
    """Cut each question (left-stripped) to at most `max_query_len` tokens, at a character boundary.

    The cut falls before the first token past the limit, and repeats until the prefix fits: one
    character can become several tokens (NFKD turns U+FDFA into four words), so a cut after the
    limit's last token could keep more than `max_query_len` of them.
    """
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, offs in zip(questions, enc["offset_mapping"]):
        while len(offs) > max_query_len:
            q = q[: min(offs[max_query_len][0], len(q) - 1)]
            offs = tokenizer(q, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out.append(q)
    return out


def gold_positions(offsets: Sequence[tuple[int, int]], answer_start: int, answer_text: str) -> tuple[int, int]:
    """Token start/end of the answer in one window, or (0, 0) ([CLS]) when not wholly inside it."""
    start_char, end_char = answer_start, answer_start + len(answer_text)
    context_idx = [i for i, (s, e) in enumerate(offsets) if s >= 0]
    if not context_idx or offsets[context_idx[0]][0] > start_char or offsets[context_idx[-1]][1] < end_char:
        return 0, 0
    # The first token that ends after the answer starts; the last that starts before it ends
    # (none for an empty answer text at the context's end).
    start = next((i for i in context_idx if offsets[i][1] > start_char), None)
    end = next((i for i in reversed(context_idx) if offsets[i][0] < end_char), None)
    return (start, end) if start is not None and end is not None and start <= end else (0, 0)


def make_windows(
    batch: dict[str, Sequence],
    tokenizer: Any,
    max_seq_len: int = 384,
    doc_stride: int = 128,
    max_query_len: int = 64,
) -> dict[str, list]:
    """Pairs (`id`, `question`, `context`, optional `answers`) -> one row per window.

    Output columns: `id`, `window` (index within the pair), `input_ids`, `token_type_ids` (when the
    tokenizer makes them), `offsets` ((start, end) character span in the context per token,
    (-1, -1) for question and special tokens), `start_position`/`end_position` (the first gold
    answer's tokens; 0 = [CLS] when unanswerable or not wholly in the window; -1 when the pair has
    no gold answers field), and `answers` passed through when present.
    """
    ids, contexts = list(batch["id"]), list(batch["context"])
    questions = truncate_questions(list(batch["question"]), tokenizer, max_query_len)
    answers = list(batch["answers"]) if "answers" in batch else None
    enc = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    has_types = "token_type_ids" in enc
    out: dict[str, list] = {k: [] for k in ("id", "window", "input_ids", "offsets", "start_position", "end_position")}
    if has_types:
        out["token_type_ids"] = []
    if answers is not None:
        out["answers"] = []
    previous, window = -1, 0
    for w, pair_idx in enumerate(enc["overflow_to_sample_mapping"]):
        window = window + 1 if pair_idx == previous else 0
        previous = pair_idx
        seq_ids = enc.sequence_ids(w)
        offsets = [tuple(o) if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][w], seq_ids)]
        start, end = -1, -1
        if answers is not None and answers[pair_idx] is not None:
            gold = answers[pair_idx]
            texts, starts = list(gold["text"]), list(gold["answer_start"])
            start, end = gold_positions(offsets, int(starts[0]), texts[0]) if texts else (0, 0)
            out["answers"].append({"text": texts, "answer_start": [int(s) for s in starts]})
        elif answers is not None:
            out["answers"].append(None)
        out["id"].append(ids[pair_idx])
        out["window"].append(window)
        out["input_ids"].append(list(enc["input_ids"][w]))
        if has_types:
            out["token_type_ids"].append(list(enc["token_type_ids"][w]))
        out["offsets"].append(offsets)  # tuples: a list per token set off GC passes (~25% of windowing)
        out["start_position"].append(start)
        out["end_position"].append(end)
    return out
