"""fp32 vs bf16 autocast on this CPU: training steps and teacher inference, side by side in one run.

The same model (the packaged all-MiniLM-L6-v2 encoder with a QA head, 6 layers as the demo's
teachers and its first 2 as the demo's student), the same windows (real SQuAD 2.0 questions and
contexts from tests/data, cut as the demo cuts them), the same step function
(`qadist.train.loop.train_step`) and forward pass (`qadist.inference.run_windows`). The two
precisions take turns round by round, so a busy machine slows both alike; the ratio is printed.

    python benchmarks/cpu_precision.py [--rounds 3] [--threads 2]

bf16 pays only where the CPU computes it natively (AVX512-BF16 or AMX; `cpu_has_bf16()`);
elsewhere PyTorch emulates it and it is slower than fp32. The script says which case it measured.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from qadist.inference import cpu_has_bf16, run_windows
from qadist.models import load_tokenizer, minilm_path
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.train.batches import collate_windows
from qadist.train.loop import build_optimizer, train_step
from qadist.train.losses import DistillationLoss

SQUAD = Path(__file__).resolve().parents[1] / "tests" / "data" / "squad-v2-dev-sample.json"


def squad_windows(tokenizer, n: int) -> dict:
    pairs = read_pairs(str(SQUAD))[0][:n]
    batch = {k: [p[k] for p in pairs] for k in ("id", "question", "context")}
    return make_windows(batch, tokenizer, 160, 64, 32)


def model(layers: int):
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    return AutoModelForQuestionAnswering.from_pretrained(minilm_path(), num_hidden_layers=layers)


def time_training(layers: int, batch_size: int, windows: dict, pad_id: int, precision: str, steps: int) -> float:
    m = model(layers)
    optimizer = build_optimizer(m, 1e-4, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = DistillationLoss(2.0, 0.0, 1.0)
    dtype = torch.bfloat16 if precision == "bf16" else None
    n = len(windows["input_ids"])
    batches = []
    for i in range(steps + 1):
        idx = [(i * batch_size + j) % n for j in range(batch_size)]
        raw = {
            "input_ids": [windows["input_ids"][k] for k in idx],
            "token_type_ids": [windows["token_type_ids"][k] for k in idx],
            "start_position": np.zeros(batch_size, dtype=np.int64),
            "end_position": np.zeros(batch_size, dtype=np.int64),
        }
        batches.append(collate_windows(raw, pad_id))
    train_step(m, [batches[0]], loss, optimizer, scheduler, scaler, 1.0, torch.device("cpu"), dtype)  # warm-up
    started = time.perf_counter()
    for b in batches[1:]:
        train_step(m, [b], loss, optimizer, scheduler, scaler, 1.0, torch.device("cpu"), dtype)
    return (time.perf_counter() - started) / steps


def time_inference(layers: int, windows: dict, pad_id: int, precision: str) -> tuple[float, np.ndarray]:
    m = model(layers).eval()
    run_windows(
        m, windows["input_ids"][:64], windows["token_type_ids"][:64], pad_id, 64, torch.device("cpu"), precision
    )  # warm-up
    started = time.perf_counter()
    out = run_windows(m, windows["input_ids"], windows["token_type_ids"], pad_id, 64, torch.device("cpu"), precision)
    return len(windows["input_ids"]) / (time.perf_counter() - started), np.concatenate([s for s, _ in out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--windows", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(minilm_path())
    windows = squad_windows(tokenizer, args.windows)
    pad = tokenizer.pad_token_id
    native = cpu_has_bf16()
    print(
        f"CPU: {os.cpu_count()} cores, torch threads {args.threads}, native bf16: {native}; "
        f"{len(windows['input_ids'])} SQuAD windows (max_seq_len 160)"
    )
    cases = {
        "train step, 6 layers, batch 8": lambda p: time_training(6, 8, windows, pad, p, args.steps),
        "train step, 2 layers, batch 16": lambda p: time_training(2, 16, windows, pad, p, args.steps),
    }
    results: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for name, run in cases.items():
            for precision in ("fp32", "bf16"):
                results.setdefault(name, {}).setdefault(precision, []).append(run(precision))
        for layers in (6, 2):
            name = f"inference, {layers} layers (windows/s)"
            rates = {}
            for precision in ("fp32", "bf16"):
                rate, logits = time_inference(layers, windows, pad, precision)
                results.setdefault(name, {}).setdefault(precision, []).append(rate)
                rates[precision] = logits
            if r == 0:
                diff = np.abs(rates["fp32"] - rates["bf16"])
                print(
                    f"  {layers}-layer start logits, bf16 vs fp32: max |diff| {diff.max():.3f}, mean {diff.mean():.4f} "
                    f"(logit range {rates['fp32'].min():.1f} .. {rates['fp32'].max():.1f})"
                )
    print(f"\n{'case':<40} {'fp32':>10} {'bf16':>10} {'bf16 speed-up':>14}   (median of {args.rounds} rounds)")
    for name, by in results.items():
        fp32, bf16 = float(np.median(by["fp32"])), float(np.median(by["bf16"]))
        speedup = bf16 / fp32 if "windows/s" in name else fp32 / bf16
        unit = "" if "windows/s" in name else " s"
        print(f"{name:<40} {fp32:>8.3f}{unit:2} {bf16:>8.3f}{unit:2} {speedup:>13.2f}x")


if __name__ == "__main__":
    main()
