"""`qadist predict`: answer SQuAD-style questions with any Hugging Face QA model folder.

Transformers 5 removed its question-answering pipeline; this is the batched replacement: the same
windows and post-processing as training and labelling, on CPU or GPU.
"""

from __future__ import annotations

import json
import logging
import time

from qadist import console, storage
from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import AnswerSettings, PredictConfig
from qadist.inference import place, predict_pairs
from qadist.models import load_qa_model, load_tokenizer, local_model
from qadist.squad.io import read_pairs

log = logging.getLogger(__name__)


def answer(cfg: AnswerSettings, model_uri: str, data: str) -> tuple[dict[str, str], dict[str, float]]:
    """`model_uri`'s answers to every question of `data`: (id -> answer, id -> no-answer probability)."""
    pairs, _ = read_pairs(data, strict=True)
    folder = local_model(model_uri)
    tokenizer = load_tokenizer(folder, cfg.trust_remote_code)
    model, device = place(load_qa_model(folder, trust_remote_code=cfg.trust_remote_code), cfg.use_gpu)
    console.banner(f"qadist predict: {len(pairs):,} questions from {data} with {model_uri} on {device}", log)
    started = time.perf_counter()
    predictions, na_probs = predict_pairs(pairs, model, tokenizer, cfg, device)
    elapsed = time.perf_counter() - started
    answered = sum(1 for a in predictions.values() if a)
    console.summary(
        f"qadist predict: {len(predictions):,} questions ({answered:,} answered, "
        f"{len(predictions) - answered:,} no answer) "
        f"in {elapsed:.1f}s ({console.rate(len(predictions), elapsed, 'question')} on {device})",
        log,
    )
    return predictions, na_probs


def demands(cfg: AnswerSettings) -> list[Demand]:
    """The answering task's request: one GPU with --use-gpu (nothing to ask for on the CPU)."""
    fix = "drop --use-gpu (answer on the CPU), or add a GPU node"
    return [Demand("1 answering task", bundle(1, 1), 1, fix)] if cfg.use_gpu else []


def answer_where_asked(cfg: AnswerSettings, model_uri: str, data: str) -> tuple[dict[str, str], dict[str, float]]:
    """`answer`, as a Ray task holding one GPU with --use-gpu (a submitted job's driver runs on the
    cluster's CPU head: it must never need CUDA itself), else in this process."""
    if not cfg.use_gpu:
        return answer(cfg, model_uri, data)
    from qadist.runtime import ensure_ray

    ray = ensure_ray()
    check_capacity(ray, "predict", demands(cfg))
    return ray.get(ray.remote(answer).options(num_cpus=1, num_gpus=1).remote(cfg, model_uri, data))


def write_answers(predictions: dict[str, str], na_probs: dict[str, float], out: str | None, na_out: str | None) -> None:
    if out:
        storage.write_bytes(out, json.dumps(predictions, indent=2, ensure_ascii=False).encode("utf-8"))
    if na_out:
        storage.write_bytes(na_out, json.dumps(na_probs, indent=2).encode("utf-8"))


def run_predict(cfg: PredictConfig) -> dict[str, str]:
    """Answer every question of `cfg.data`; writes predictions (and no-answer probabilities)."""
    predictions, na_probs = answer_where_asked(cfg, cfg.model, cfg.data)
    write_answers(predictions, na_probs, cfg.out, cfg.na_probs)
    log.info("predictions -> %s%s", cfg.out, f", no-answer probabilities -> {cfg.na_probs}" if cfg.na_probs else "")
    return predictions
