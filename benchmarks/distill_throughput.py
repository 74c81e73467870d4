"""Training steps/s with precomputed soft labels vs online distillation, side by side in one run.

Online distillation (Hugging Face's `run_squad_w_distillation.py`) runs the teacher's forward pass
on every training step; qadist labels once (`qadist label`) and trains from the stored logits.
Both variants here train the same student (same initial weights) on the same batches in the same
order with the same loss and step function (`qadist.train.loop.train_step`); the only difference
is where the teacher logits come from: float16 columns of a Parquet shard (read back from disk),
or the teacher's forward pass (inference mode, autocast on GPU) inside the step. The variants
take turns step by step, so a busy machine slows both alike; only the steps after the warm-up
are timed (collate + teacher forward where online + forward/backward/optimizer step).

FLOPs of one forward pass of each model are measured with `torch.utils.flop_counter` on the same
batch; the teacher must be at least 8x the student (the script refuses otherwise).

    python benchmarks/distill_throughput.py                     # CPU: BERT 6L-h384 teacher, 2L-h128 student
    python benchmarks/distill_throughput.py --preset albert     # GPU: ALBERT-xxlarge vs ALBERT-base shapes

Models are randomly initialised from configs (no downloads): throughput does not depend on weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qadist.inference import autocast_dtype, qa_logits, run_windows
from qadist.models import load_tokenizer, minilm_path
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.train.batches import collate_windows, plan_steps
from qadist.train.loop import build_optimizer, build_scheduler, train_step
from qadist.train.losses import DistillationLoss

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "squad-v2-dev-sample.json"
# name -> (family, teacher shape, student shape, max_seq_len, batch size); shape = (layers, hidden)
PRESETS = {
    "tiny": ("bert", (6, 384), (2, 128), 192, 16),  # MiniLM-L6-sized teacher
    "albert": ("albert", (12, 4096), (12, 768), 384, 32),  # ALBERT-xxlarge vs ALBERT-base
}


def build(family: str, layers: int, hidden: int, vocab: int, seed: int) -> torch.nn.Module:
    from transformers import AlbertConfig, AutoModelForQuestionAnswering, BertConfig

    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=hidden * 4,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = AlbertConfig(embedding_size=128, **common) if family == "albert" else BertConfig(**common)
    torch.manual_seed(seed)
    return AutoModelForQuestionAnswering.from_config(config)


def forward_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


def soft_label_table(
    windows: dict[str, list], teacher: torch.nn.Module, pad_id: int, device: torch.device, folder: Path
) -> pa.Table:
    """Label every window once (untimed, as `qadist label` would), store as a shard, read it back."""
    logits = run_windows(teacher, windows["input_ids"], windows.get("token_type_ids"), pad_id, 64, device)
    table = pa.table(
        {
            "input_ids": pa.array(windows["input_ids"], pa.list_(pa.int32())),
            "token_type_ids": pa.array(windows["token_type_ids"], pa.list_(pa.int8())),
            "start_logits": pa.array([s.astype(np.float16) for s, _ in logits], pa.list_(pa.float16())),
            "end_logits": pa.array([e.astype(np.float16) for _, e in logits], pa.list_(pa.float16())),
            "start_position": pa.array(windows["start_position"], pa.int32()),
            "end_position": pa.array(windows["end_position"], pa.int32()),
        }
    )
    pq.write_table(table, folder / "shard.parquet")
    return pq.read_table(folder / "shard.parquet")


class Variant:
    """One way of getting teacher logits, with its own copy of the student and optimizer."""

    def __init__(
        self,
        name: str,
        student0: torch.nn.Module,
        teacher: torch.nn.Module,
        rows: dict[str, list],
        pad_id: int,
        device: torch.device,
        total_steps: int,
    ):
        self.name, self.teacher, self.rows, self.pad_id, self.device = name, teacher, rows, pad_id, device
        self.student = copy.deepcopy(student0).to(device)
        self.optimizer = build_optimizer(self.student, 5e-5, 0.01)
        self.scheduler = build_scheduler(self.optimizer, plan_steps(total_steps, 1, 1, 1, 1.0, 0.0))
        self.dtype = autocast_dtype(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = DistillationLoss(temperature=2.0)
        self.columns = list(rows) if name == "precomputed" else [c for c in rows if not c.endswith("_logits")]
        self.seconds, self.losses = 0.0, []

    def step(self, idx: np.ndarray, timed: bool) -> None:
        """One training step: collate (stored logits, or none), teacher forward if online, train_step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        batch = collate_windows({c: [self.rows[c][i] for i in idx] for c in self.columns}, self.pad_id)
        if self.name == "online":
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            start, end = qa_logits(self.teacher, inputs, self.device)
            batch["teacher_start"], batch["teacher_end"] = torch.from_numpy(start), torch.from_numpy(end)
            batch["has_teacher"] = torch.ones(len(idx), dtype=torch.bool)
        stats = train_step(
            self.student,
            [batch],
            self.loss_fn,
            self.optimizer,
            self.scheduler,
            self.scaler,
            1.0,
            self.device,
            self.dtype,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.seconds += time.perf_counter() - started
        self.losses.append(stats["loss"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=str(SAMPLE), help="SQuAD JSON or pairs to cut windows from")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    family, (t_layers, t_hidden), (s_layers, s_hidden), seq_len, default_batch = PRESETS[args.preset]
    batch_size, device = args.batch_size or default_batch, torch.device(args.device)

    tokenizer = load_tokenizer(minilm_path())
    total = (args.steps + args.warmup) * batch_size
    pairs = read_pairs(args.data)[0]
    windows: dict[str, list] = {}
    for i in range(0, len(pairs), 200):
        chunk = pairs[i : i + 200]
        w = make_windows(
            {k: [p.get(k) for p in chunk] for k in ("id", "question", "context", "answers")},
            tokenizer,
            seq_len,
            128,
            64,
        )
        for k, v in w.items():
            windows.setdefault(k, []).extend(v)
        if len(windows["input_ids"]) >= total:
            break
    windows = {k: v[:total] for k, v in windows.items()}
    if len(windows["input_ids"]) < total:
        sys.exit(f"{args.data}: only {len(windows['input_ids'])} windows; lower --steps or --batch-size")

    teacher = build(family, t_layers, t_hidden, len(tokenizer), seed=1).to(device).eval()
    student0 = build(family, s_layers, s_hidden, len(tokenizer), seed=2)
    sample = collate_windows(
        {k: windows[k][:batch_size] for k in ("input_ids", "token_type_ids", "start_position", "end_position")},
        tokenizer.pad_token_id,
    )
    t_flops, s_flops = forward_flops(teacher, sample, device), forward_flops(student0.to(device), sample, device)
    student0 = student0.cpu()
    print(
        f"teacher {family} {t_layers}L h{t_hidden}: {t_flops / 1e9:.2f} GFLOP/forward; "
        f"student {s_layers}L h{s_hidden}: {s_flops / 1e9:.3f} GFLOP/forward "
        f"(batch {batch_size} x up to {seq_len} tokens); ratio {t_flops / s_flops:.1f}x"
    )
    if t_flops < 8 * s_flops:
        sys.exit("the teacher must have at least 8x the student's forward FLOPs; pick another preset")

    with tempfile.TemporaryDirectory() as tmp:
        rows = soft_label_table(windows, teacher, tokenizer.pad_token_id, device, Path(tmp)).to_pydict()
    order = np.random.default_rng(0).permutation(total)
    batches = [order[i : i + batch_size] for i in range(0, total, batch_size)]
    # The two variants take turns, step by step (alternating which goes first), so that load from
    # anything else on the machine falls on both alike.
    variants = [
        Variant(name, student0, teacher, rows, tokenizer.pad_token_id, device, len(batches))
        for name in ("precomputed", "online")
    ]
    for n, idx in enumerate(batches):
        for v in variants if n % 2 == 0 else variants[::-1]:
            v.step(idx, timed=n >= args.warmup)
    results = {}
    for v in variants:
        steps_per_s = args.steps / v.seconds
        results[v.name] = {
            "steps_per_s": steps_per_s,
            "windows_per_s": steps_per_s * batch_size,
            "first_loss": v.losses[0],
            "last_loss": v.losses[-1],
        }
    ratio = results["precomputed"]["steps_per_s"] / results["online"]["steps_per_s"]
    print(f"\n{'variant':<36}{'steps/s':>9}{'windows/s':>11}{'loss first':>12}{'loss last':>11}")
    for variant, label in (
        ("precomputed", "precomputed soft labels (qadist)"),
        ("online", "online (teacher forward each step)"),
    ):
        r = results[variant]
        print(
            f"{label:<36}{r['steps_per_s']:>9.2f}{r['windows_per_s']:>11.1f}{r['first_loss']:>12.4f}{r['last_loss']:>11.4f}"
        )
    print(
        f"\nprecomputed / online: {ratio:.2f}x the training steps per second on {device} "
        f"({args.steps} timed steps each, batch {batch_size}, teacher/student FLOPs {t_flops / s_flops:.1f}x)"
    )
    out = {
        "device": str(device),
        "preset": args.preset,
        "batch_size": batch_size,
        "steps": args.steps,
        "teacher_flops": t_flops,
        "student_flops": s_flops,
        **results,
        "ratio": ratio,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
