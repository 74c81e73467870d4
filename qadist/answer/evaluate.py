"""`qadist evaluate`: the official SQuAD 2.0 metric on a gold file and a predictions file.

With `--model`, the model answers the gold file first (the code of `qadist predict`), as a Ray
task on a GPU worker when `--use-gpu` (a cluster job's driver sits on the CPU head node), else in
this process; predictions and no-answer probabilities are written where `--predictions` and
`--na-probs` say, and scored.
"""

from __future__ import annotations

import json
import logging

from qadist import storage
from qadist.config import EvaluateConfig
from qadist.errors import UserError
from qadist.squad.io import gold_answers, read_pairs
from qadist.squad.metrics import squad_v2_metrics

log = logging.getLogger(__name__)


def read_json_mapping(uri: str, value_types: tuple[type, ...], what: str) -> dict:
    """A JSON object of id -> value (predictions or no-answer probabilities), checked."""
    try:
        data = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as e:
        raise UserError(f"{uri}: malformed JSON at line {e.lineno}; {what} must be a JSON object of id -> value") from e
    if not isinstance(data, dict):
        raise UserError(f"{uri}: {what} must be a JSON object of id -> value, not {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(value, value_types) or isinstance(value, bool):
            raise UserError(
                f"{uri}: id {key!r}: {what} value {value!r} must be {' or '.join(t.__name__ for t in value_types)}"
            )
    return data


def predict_for(cfg: EvaluateConfig) -> tuple[dict[str, str], dict[str, float]]:
    """`cfg.model`'s answers to `cfg.data`, written where `--predictions` / `--na-probs` say."""
    from qadist.answer.predict import answer_where_asked, write_answers

    predictions, na_probs = answer_where_asked(cfg, cfg.model, cfg.data)
    write_answers(predictions, na_probs, cfg.predictions, cfg.na_probs)
    return predictions, na_probs


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """The SQuAD 2.0 metrics of `cfg.predictions` (or of `cfg.model`'s answers) on `cfg.data`."""
    pairs, _ = read_pairs(cfg.data, strict=True)
    gold = gold_answers(pairs, cfg.data)
    if cfg.model:
        predictions, na_probs = predict_for(cfg)
    else:
        predictions = read_json_mapping(cfg.predictions, (str,), "predictions")
        na_probs = read_json_mapping(cfg.na_probs, (int, float), "na_probs") if cfg.na_probs else None
    try:
        metrics = squad_v2_metrics(gold, predictions, na_probs, cfg.na_prob_thresh)
    except ValueError as e:
        raise UserError(f"{cfg.predictions}: {e}") from e
    text = json.dumps(metrics, indent=2)
    print(text)
    if cfg.out:
        storage.write_bytes(cfg.out, text.encode("utf-8"))
    log.info(
        "evaluate: %d questions: exact %.2f, f1 %.2f%s",
        metrics["total"],
        metrics["exact"],
        metrics["f1"],
        f" -> {cfg.out}" if cfg.out else "",
    )
    return metrics
