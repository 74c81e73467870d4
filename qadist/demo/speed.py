"""Speed per architecture, not per row: models of one architecture share one set of figures.

Each architecture is measured once, with one of its models (weights do not change the cost):
latency at batch 1 (ms per question, one question at a time) and throughput at a serving batch
(answers/s over the test questions, `batch_size` windows per forward pass), each the median of
`repeats` rounds in which the architectures take turns (a busy machine slows them alike), after
a warm-up; and forward FLOPs on the same windows (torch.utils.flop_counter), so a speed ratio can
be read beside the compute ratio it should follow.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from qadist.config import AnswerSettings
from qadist.inference import collate, predict_pairs


@dataclass
class Speed:
    latency_ms: float  # batch 1, median over questions and rounds
    answers_per_s: float  # serving batch, median of rounds
    flops_per_window: float  # forward FLOPs per window of the test questions
    threads: int
    batch_size: int


def forward_flops(model: Any, tokenizer: Any, pairs: list[dict], cfg: AnswerSettings) -> float:
    """Forward FLOPs per window, over the windows of `pairs`."""
    from torch.utils.flop_counter import FlopCounterMode

    from qadist.squad.features import make_windows

    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    w = make_windows(batch, tokenizer, cfg.max_seq_len, cfg.doc_stride, cfg.max_query_len)
    inputs = collate(w["input_ids"], w.get("token_type_ids"), tokenizer.pad_token_id)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(**inputs)
    return counter.get_total_flops() / len(w["input_ids"])


def measure(
    models: dict[str, tuple[Any, Any]],
    pairs: list[dict],
    cfg: AnswerSettings,
    latency_questions: int = 24,
    repeats: int = 3,
) -> dict[str, Speed]:
    """`models`: architecture -> (a model of it, its tokenizer). Returns each architecture's Speed."""
    cpu = torch.device("cpu")
    one = cfg.model_copy(update={"batch_size": 1})
    few = pairs[:latency_questions]
    latencies: dict[str, list[float]] = {k: [] for k in models}
    seconds: dict[str, list[float]] = {k: [] for k in models}
    for model, tokenizer in models.values():  # warm-up: allocator, kernels
        predict_pairs(pairs[:16], model, tokenizer, cfg, cpu, progress=False)
    for _ in range(repeats):
        for name, (model, tokenizer) in models.items():
            for pair in few:
                started = time.perf_counter()
                predict_pairs([pair], model, tokenizer, one, cpu, progress=False)
                latencies[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            predict_pairs(pairs, model, tokenizer, cfg, cpu, progress=False)
            seconds[name].append(time.perf_counter() - started)
    return {
        name: Speed(
            latency_ms=1000 * statistics.median(latencies[name]),
            answers_per_s=len(pairs) / statistics.median(seconds[name]),
            flops_per_window=forward_flops(model, tokenizer, pairs[:16], cfg),
            threads=torch.get_num_threads(),
            batch_size=cfg.batch_size,
        )
        for name, (model, tokenizer) in models.items()
    }
