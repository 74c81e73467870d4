"""The SQuAD 2.0 metric, a faithful port of the official ``evaluate-v2.0.py``.

Keys, key order and values match the official script's JSON output. The official script
crashes (``KeyError``) when a gold question has no prediction; here such a question is logged
("Missing prediction for <qid>") and left out of every count, which is exactly what the
official script reports for a data file without that question.
"""

from __future__ import annotations

import collections
import logging
import re
import string

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def get_tokens(s: str) -> list[str]:
    """Tokens of the normalized answer (none for an empty answer)."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalized answers are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-overlap F1; 1 if both are no-answer, 0 if only one is."""
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def gold_from_squad(dataset: dict) -> dict[str, list[str]]:
    """Question id -> gold answer texts from an official SQuAD JSON file ([] = unanswerable)."""
    return {
        qa["id"]: [] if qa.get("is_impossible") else [a["text"] for a in qa["answers"]]
        for article in dataset["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }


def _raw_scores(gold: dict[str, list[str]], predictions: dict[str, str]) -> tuple[dict[str, int], dict[str, float]]:
    """Best exact and F1 over the gold answers, per predicted question."""
    exact: dict[str, int] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in predictions:
            logger.warning("Missing prediction for %s", qid)
            continue
        pred = predictions[qid]
        exact[qid] = max(compute_exact(a, pred) for a in golds)
        f1[qid] = max(compute_f1(a, pred) for a in golds)
    return exact, f1


def _apply_threshold(scores: dict, na_probs: dict[str, float], has_ans: dict[str, bool], thresh: float) -> dict:
    """A question whose no-answer probability exceeds thresh is answered with ''."""
    return {q: float(not has_ans[q]) if na_probs[q] > thresh else s for q, s in scores.items()}


def _eval_dict(exact: dict, f1: dict, qids: list[str]) -> dict[str, float | int]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[k] for k in qids) / total,
        "f1": 100.0 * sum(f1[k] for k in qids) / total,
        "total": total,
    }


def _best_thresh(
    predictions: dict[str, str], scores: dict, na_probs: dict[str, float], has_ans: dict[str, bool]
) -> tuple[float, float]:
    """Best score over no-answer thresholds (sweep in ascending probability), and its threshold."""
    cur_score = sum(1 for k in has_ans if not has_ans[k])
    best_score, best_thresh = cur_score, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            cur_score += scores[qid]
        elif predictions[qid]:
            cur_score -= 1
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def squad_v2_metrics(
    gold: dict[str, list[str]],
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float | int]:
    """The official SQuAD 2.0 metrics; best_* keys only when na_probs is given."""
    exact_raw, f1_raw = _raw_scores(gold, predictions)
    if not exact_raw:
        raise ValueError("no prediction matches any gold question id")
    # Questions without a prediction are left out of every count (see module docstring).
    has_ans = {q: bool(answers) for q, answers in gold.items() if q in exact_raw}
    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    missing = [q for q in exact_raw if q not in probs]
    if missing:
        raise ValueError(f"no-answer probability missing for {len(missing)} question(s), e.g. {missing[0]!r}")
    exact = _apply_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    out = _eval_dict(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, v in has_ans.items() if v is wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _eval_dict(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(predictions, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(predictions, f1_raw, probs, has_ans)
    return out
