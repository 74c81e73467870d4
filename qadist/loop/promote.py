"""`qadist promote`: the gate between the daily job's candidate and the served model.

    qadist promote --candidate PATH --registry URI --eval-file GOLD [--silver-file PAIRS] [--min-gain X]
    qadist promote --registry URI --rollback

The candidate and the registry's current version answer the team's gold file (`f1`), and, with
`--silver-file`, held-out logged pairs whose `answers` are the teacher ensemble's (`silver_f1`: the
agreement with the teachers). The candidate is promoted when, on every figure, candidate - current
>= `--min-gain` (F1 points; a negative value is the loss tolerated). Promoted: the candidate becomes
a new immutable version and `current` moves to it by a conditional write (qadist/registry.py).
Refused: exit code 4 and one line naming the figure that failed. Another promotion that moved
`current` first: exit code 5 (run it again to compare with the new current). Every verdict is
written under the registry's `verdicts/` (and `--out`); with MLflow, logged as a run.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from qadist import storage
from qadist.config import PromoteConfig
from qadist.errors import UserError

log = logging.getLogger(__name__)


class NotPromoted(UserError):
    """The gate refused the candidate (exit code 4): one line naming the figure."""

    exit_code = 4


def score(model: str, data: str, cfg: PromoteConfig) -> float:
    """F1 (SQuAD 2.0 metric) of `model`'s answers to the pairs with answers in `data`."""
    from qadist.inference import place, predict_pairs
    from qadist.models import load_qa_model, load_tokenizer, local_model
    from qadist.squad.io import gold_answers, read_pairs
    from qadist.squad.metrics import squad_v2_metrics

    pairs, _ = read_pairs(data, strict=True)
    folder = local_model(model)
    tokenizer = load_tokenizer(folder, trust_remote_code=cfg.trust_remote_code)
    qa, device = place(load_qa_model(folder, trust_remote_code=cfg.trust_remote_code), cfg.use_gpu)
    predictions, na_probs = predict_pairs(pairs, qa, tokenizer, cfg, device, progress=False)
    return float(squad_v2_metrics(gold_answers(pairs, data), predictions, na_probs)["f1"])


def figures_of(model: str, cfg: PromoteConfig) -> dict[str, float]:
    out = {"f1": score(model, cfg.eval_file, cfg)}
    if cfg.silver_file:
        out["silver_f1"] = score(model, cfg.silver_file, cfg)
    return out


def verdict_of(candidate: dict[str, float], current: dict[str, float] | None, min_gain: float) -> tuple[bool, str]:
    """(promote?, one line): the first figure whose gain is below `min_gain` fails the candidate."""
    if current is None:
        return True, "first version: nothing to compare with"
    for name, value in candidate.items():
        gain = value - current[name]
        if gain < min_gain:
            was = current[name]
            return (
                False,
                f"{name} {value:.2f} vs current {was:.2f}: gain {gain:+.2f} is below --min-gain {min_gain:+.2f}",
            )
    gains = ", ".join(f"{k} {v:.2f} ({v - current[k]:+.2f})" for k, v in candidate.items())
    return True, f"not worse beyond --min-gain {min_gain:+.2f}: {gains}"


def run_promote(cfg: PromoteConfig) -> dict[str, Any]:
    from qadist import console
    from qadist.registry import RegistryConflict, open_registry

    registry = open_registry(cfg.registry)
    if cfg.rollback:
        pointer = registry.rollback()
        console.summary(f"qadist promote: rolled back; current is version {pointer['version']}", log)
        return pointer
    started = time.perf_counter()
    pointer = registry.current()
    console.banner(
        f"qadist promote: {cfg.candidate} vs {'version ' + str(pointer['version']) if pointer else 'nothing yet'} "
        f"of {cfg.registry} on {cfg.eval_file}{' and ' + cfg.silver_file if cfg.silver_file else ''}",
        log,
    )
    candidate = figures_of(cfg.candidate, cfg)
    current = figures_of(pointer["model"], cfg) if pointer else None
    promote, why = verdict_of(candidate, current, cfg.min_gain)
    verdict: dict[str, Any] = {
        "candidate": cfg.candidate,
        "current_version": pointer["version"] if pointer else None,
        "figures": {"candidate": candidate, "current": current},
        "min_gain": cfg.min_gain,
        "promoted": promote,
        "reason": why,
        "eval_file": cfg.eval_file,
        "silver_file": cfg.silver_file,
        "day_metrics": json.loads(storage.read_bytes(cfg.day_metrics)) if cfg.day_metrics else None,
        "time": time.time(),
    }
    if promote:
        version = registry.publish(cfg.candidate, {"figures": candidate, "verdict": verdict})
        verdict["version"] = version
        try:
            registry.move(pointer["version"] if pointer else None, version, why)
        except RegistryConflict as e:  # lost the race: the verdict is kept (and the MLflow run closed) all the same
            verdict["conflict"] = str(e)
            registry.write_verdict(verdict)
            raise
    verdict["verdict_uri"] = registry.write_verdict(verdict)
    if cfg.out:
        storage.write_bytes(cfg.out, json.dumps(verdict, indent=1).encode())
    took = time.perf_counter() - started
    if not promote:
        raise NotPromoted(f"not promoted: {why}")
    console.summary(f"qadist promote: version {verdict['version']} is current ({why}) in {took:.1f}s", log)
    return verdict
