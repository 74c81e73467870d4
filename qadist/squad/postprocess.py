"""Logits -> answers: n-best spans over context tokens, the best per example, a null threshold.

Per example, the null score is the smallest [CLS] score (start[0] + end[0]) over its windows, and
the best span is the highest start[i] + end[j] over all windows with i <= j, both in the context
and j - i < max_answer_len. The answer is "" when null_score - best_span_score > threshold. The
no-answer probability written to na_probs.json is sigmoid(null_score - best_span_score), so a
threshold on it is a threshold on the score difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[Sequence[int]],
    n_best: int = 20,
    max_answer_len: int = 30,
) -> list[tuple[float, int, int]]:
    """Up to `n_best` (score, start_char, end_char) spans of one window, best first."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = min(len(offsets), len(start_logits))
    start_logits, end_logits = np.asarray(start_logits[:n], np.float64), np.asarray(end_logits[:n], np.float64)
    in_context = offsets[:n, 0] >= 0
    if not in_context.any():
        return []
    starts = np.argsort(-np.where(in_context, start_logits, -np.inf))[:n_best]
    ends = np.argsort(-np.where(in_context, end_logits, -np.inf))[:n_best]
    # Every (start, end) pair of the top candidates at once, row-major as a double loop would go.
    i, j = starts[:, None], ends[None, :]
    valid = in_context[i] & in_context[j] & (i <= j) & (j < i + max_answer_len)
    scores = (start_logits[i] + end_logits[j])[valid]
    pick_i, pick_j = np.broadcast_to(i, valid.shape)[valid], np.broadcast_to(j, valid.shape)[valid]
    best = np.argsort(-scores, kind="stable")[:n_best]
    return [(float(scores[k]), int(offsets[pick_i[k], 0]), int(offsets[pick_j[k], 1])) for k in best]


def best_answers(
    windows: Iterable[dict],
    contexts: dict[str, str],
    n_best: int = 20,
    max_answer_len: int = 30,
    null_threshold: float = 0.0,
) -> dict[str, dict]:
    """Windows (`id`, `offsets`, `start_logits`, `end_logits`) -> by id: `answer`, its character
    `start` and `end` in the context (-1 when the model abstains), the span `score` (start + end
    logit) and `no_answer_probability`."""
    null_score: dict[str, float] = {}
    best: dict[str, tuple[float, int, int]] = {}
    for w in windows:
        pair_id = w["id"]
        start, end = np.asarray(w["start_logits"], np.float64), np.asarray(w["end_logits"], np.float64)
        null = float(start[0] + end[0])
        null_score[pair_id] = min(null_score.get(pair_id, math.inf), null)
        spans = best_spans(start, end, w["offsets"], n_best, max_answer_len)
        if spans and (pair_id not in best or spans[0][0] > best[pair_id][0]):
            best[pair_id] = spans[0]
    answers = {}
    for pair_id, null in null_score.items():
        if pair_id not in best:
            answers[pair_id] = {"answer": "", "start": -1, "end": -1, "score": null, "no_answer_probability": 1.0}
            continue
        score, s, e = best[pair_id]
        diff = null - score
        abstain = diff > null_threshold
        answers[pair_id] = {
            "answer": "" if abstain else contexts[pair_id][s:e],
            "start": -1 if abstain else s,
            "end": -1 if abstain else e,
            "score": score,
            "no_answer_probability": 1.0 / (1.0 + math.exp(-max(min(diff, 700.0), -700.0))),
        }
    return answers


def postprocess(
    windows: Iterable[dict],
    contexts: dict[str, str],
    n_best: int = 20,
    max_answer_len: int = 30,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Windows -> (predictions, na_probs) by id, the two files of the official SQuAD 2.0 evaluation."""
    return squad_files(best_answers(windows, contexts, n_best, max_answer_len, null_threshold))


def squad_files(answers: dict[str, dict]) -> tuple[dict[str, str], dict[str, float]]:
    """`best_answers`' output -> (predictions, na_probs) by id."""
    return {k: a["answer"] for k, a in answers.items()}, {k: a["no_answer_probability"] for k, a in answers.items()}
