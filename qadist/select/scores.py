"""How much a human label of a pair would teach the student, from the stored soft labels.

Every score is in [0, 1], higher = more worth labelling, and aware of "no answer" (index 0 of each
window, the [CLS] position, holds the no-answer mass):

- `entropy`: the ensemble's start and end distributions over each window's real positions,
  entropy divided by its maximum (log of the window length), the mean of the two; the pair takes
  its most uncertain window. Mass split between an answer and index 0 counts as uncertainty.
- `margin`: the pair's candidates are its best spans (start + end logit, over every window) and
  abstaining (the smallest [CLS] score over its windows, as post-processing takes it); a softmax
  over them, and 1 - (best - second best). A pair the ensemble splits between answering and
  abstaining has a small margin.
- `disagreement`: per-teacher logits (`qadist label --keep-teacher-logits`): the Jensen-Shannon
  divergence of the teachers' start and end distributions (over log of the number of teachers, so
  in [0, 1]), the pair's most divergent window; plus, when the teachers' own answers split
  between answering and abstaining, that split (the share of the minority, times 2) if larger.
- `random`: a seeded hash of the pair's id (the same pick for the same seed).

A strategy is one entry of `STRATEGIES`: its scoring function and what it needs of the label table
(`per_teacher`: each teacher's logits, so labels made with `--keep-teacher-logits` and at least
two teachers). `SelectConfig.strategy` takes exactly its keys (checked by a test).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from qadist.squad.postprocess import best_spans


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def normalized_entropy(p: np.ndarray) -> float:
    """Entropy over log(len): 0 for a certain distribution, 1 for a uniform one."""
    if len(p) < 2:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(len(p)))


def window_entropy(start_logits: np.ndarray, end_logits: np.ndarray) -> float:
    return 0.5 * (normalized_entropy(softmax(start_logits)) + normalized_entropy(softmax(end_logits)))


def js_divergence(per_teacher_logits: np.ndarray) -> float:
    """Generalised Jensen-Shannon divergence of the teachers' distributions (rows), over log(teachers)."""
    n = len(per_teacher_logits)
    if n < 2:
        return 0.0
    p = softmax(per_teacher_logits, axis=-1)
    mean = p.mean(0)
    h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    return max(0.0, (h(mean) - np.mean([h(row) for row in p])) / math.log(n))


def pair_candidates(windows: Sequence[dict], n_best: int = 5, max_answer_len: int = 30) -> tuple[float, list]:
    """(null score, best spans over every window as (score, start_char, end_char), best first)."""
    null = min(float(np.float64(w["start_logits"][0]) + np.float64(w["end_logits"][0])) for w in windows)
    spans = [
        s for w in windows for s in best_spans(w["start_logits"], w["end_logits"], w["offsets"], n_best, max_answer_len)
    ]
    spans.sort(key=lambda s: -s[0])
    return null, spans[:n_best]


def margin_score(null: float, spans: list) -> float:
    scores = np.array([null] + [s[0] for s in spans[:2]], np.float64)
    if len(scores) < 2:
        return 0.0
    p = np.sort(softmax(scores))[::-1]
    return float(1.0 - (p[0] - p[1]))


def abstains(null: float, spans: list) -> bool:
    return not spans or null > spans[0][0]


def teacher_windows(windows: Sequence[dict], k: int) -> list[dict]:
    """Teacher k's view of the pair's windows (its own start/end logits)."""
    return [
        {
            **w,
            "start_logits": np.asarray(w["teacher_start_logits"][k]),
            "end_logits": np.asarray(w["teacher_end_logits"][k]),
        }
        for w in windows
    ]


def disagreement_score(windows: Sequence[dict]) -> tuple[float, str]:
    divergence = max(
        0.5 * (js_divergence(np.stack(w["teacher_start_logits"])) + js_divergence(np.stack(w["teacher_end_logits"])))
        for w in windows
    )
    n = len(windows[0]["teacher_start_logits"])
    votes = [abstains(*pair_candidates(teacher_windows(windows, k))) for k in range(n)]
    split = 2.0 * min(sum(votes), n - sum(votes)) / n
    if split > divergence:
        return split, f"{sum(votes)} of {n} teachers abstain, {n - sum(votes)} answer"
    return divergence, f"teachers' start/end distributions diverge (JS {divergence:.2f})"


def random_score(pair_id: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{pair_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def by_entropy(windows: Sequence[dict], null: float, spans: list, seed: int) -> tuple[float, str]:
    score = max(window_entropy(w["start_logits"], w["end_logits"]) for w in windows)
    return score, f"the ensemble's start/end distributions are spread (normalised entropy {score:.2f})"


def by_margin(windows: Sequence[dict], null: float, spans: list, seed: int) -> tuple[float, str]:
    score = margin_score(null, spans)
    second = "abstaining" if spans and not abstains(null, spans) else "its second span"
    return score, f"the ensemble's best answer leads {second} by a margin of {1 - score:.2f}"


def by_disagreement(windows: Sequence[dict], null: float, spans: list, seed: int) -> tuple[float, str]:
    return disagreement_score(windows)


def by_random(windows: Sequence[dict], null: float, spans: list, seed: int) -> tuple[float, str]:
    return random_score(windows[0]["id"], seed), f"random pick (seed {seed})"


@dataclass(frozen=True)
class Strategy:
    """(a pair's windows, its null score, its best spans, the seed) -> (score in [0, 1], the reason)."""

    score: Callable[[Sequence[dict], float, list, int], tuple[float, str]]
    per_teacher: bool = False  # reads `teacher_start_logits`/`teacher_end_logits`: --keep-teacher-logits, 2+ teachers


STRATEGIES: dict[str, Strategy] = {
    "disagreement": Strategy(by_disagreement, per_teacher=True),
    "entropy": Strategy(by_entropy),
    "margin": Strategy(by_margin),
    "random": Strategy(by_random),
}


def score_pair(windows: Sequence[dict], context: str | None, strategy: str, seed: int = 0) -> dict:
    """One pair's windows (`id`, `offsets`, `start_logits`, `end_logits`, and per-teacher logits for
    `disagreement`) -> its score, the reason in words, and the ensemble's answer (the pre-fill)."""
    null, spans = pair_candidates(windows)
    abstain = abstains(null, spans)
    answer = {"start": -1, "end": -1} if abstain else {"start": spans[0][1], "end": spans[0][2]}
    no_answer = 1.0 / (1.0 + math.exp(-max(min(null - (spans[0][0] if spans else -math.inf), 700.0), -700.0)))
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    score, reason = STRATEGIES[strategy].score(windows, null, spans, seed)
    text = "" if abstain or context is None else context[answer["start"] : answer["end"]]
    return {
        "id": windows[0]["id"],
        "score": float(score),
        "reason": reason,
        "prediction": {**answer, "text": text, "no_answer_probability": no_answer},
        "windows": len(windows),
    }


def group_windows(rows: Iterable[dict]) -> Iterable[list[dict]]:
    """Consecutive windows of one pair (a shard keeps a pair's windows together and in order)."""
    group: list[dict] = []
    for row in rows:
        if group and row["id"] != group[0]["id"]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group
