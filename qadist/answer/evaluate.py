"""`qadist evaluate`: the official SQuAD 2.0 metric on a gold file and a predictions file."""

from __future__ import annotations

import json
import logging

from qadist import storage
from qadist.config import EvaluateConfig
from qadist.errors import UserError
from qadist.squad.io import read_pairs
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
            raise UserError(f"{uri}: id {key!r}: {what} value {value!r} must be {' or '.join(t.__name__ for t in value_types)}")
    return data


def gold_answers(pairs: list[dict], source: str) -> dict[str, list[str]]:
    if not any("answers" in p for p in pairs):
        raise UserError(f"{source}: no row has 'answers'; evaluate needs SQuAD JSON or pairs with answers")
    return {p["id"]: list(p.get("answers", {}).get("text", [])) for p in pairs}


def run_evaluate(cfg: EvaluateConfig) -> dict:
    pairs, _ = read_pairs(cfg.data, strict=True)
    gold = gold_answers(pairs, cfg.data)
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
    return metrics
