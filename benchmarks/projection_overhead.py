"""What carrying soft labels to another tokenizer costs a distillation, side by side in one run.

The projection (`qadist.train.cross_tokenizer.project_shard`) runs once per distillation, in the
Ray Data tasks that read the shards, and its result is kept; training then reads projected
windows as it reads stored ones. So its cost is one pass over the labels, set here against one
epoch of training steps on the same windows (the student's forward, backward and optimizer step,
`qadist.train.loop.train_step`, batch 16): overhead = projection seconds / epoch seconds, and the
per-window figures. Both are timed in this process, alternating shard by shard and batch by batch
so a busy machine slows both alike.

Teacher windows: WordPiece (MiniLM's tokenizer) over the SQuAD sample, with random float16 logits
(the projection's cost does not depend on their values). Student: ALBERT-shaped, 2 layers, hidden
128 (the demo's student size), with a Unigram tokenizer trained on the sample's contexts; or
`--student-tokenizer bpe` for a byte-level BPE one.

    python benchmarks/projection_overhead.py                 # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from qadist.models import (
    build_tiny_model,
    load_qa_model,
    load_tokenizer,
    minilm_path,
    train_albert_tokenizer,
    train_byte_level_bpe_tokenizer,
)
from qadist.shards import list_array
from qadist.squad.features import make_windows
from qadist.squad.io import read_pairs
from qadist.train.batches import collate_windows, plan_steps
from qadist.train.cross_tokenizer import project_shard
from qadist.train.loop import build_optimizer, build_scheduler, train_step
from qadist.train.losses import DistillationLoss

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "squad-v2-dev-sample.json"
WINDOWS = {"max_seq_len": 384, "doc_stride": 128, "max_query_len": 64}
SHARD_PAIRS = 200
T = 2.0


def teacher_shards(pairs: list[dict], rng: np.random.Generator) -> list[pa.Table]:
    """Shards of the columns projection reads, SHARD_PAIRS pairs each, WordPiece windows."""
    tok = load_tokenizer(minilm_path())
    shards = []
    for i in range(0, len(pairs), SHARD_PAIRS):
        chunk = pairs[i : i + SHARD_PAIRS]
        w = make_windows({k: [p[k] for p in chunk] for k in ("id", "question", "context")}, tok, **WINDOWS)
        by_id = {p["id"]: p for p in chunk}
        logits = [rng.normal(0, 3, len(x)).astype(np.float16) for x in w["input_ids"]]
        shards.append(
            pa.table(
                {
                    "id": w["id"],
                    "window": w["window"],
                    "offsets": pa.array(w["offsets"], type=pa.list_(pa.list_(pa.int32()))),
                    "start_logits": list_array(logits),
                    "end_logits": list_array([x[::-1].copy() for x in logits]),
                    "question": [by_id[i]["question"] for i in w["id"]],
                    "context": [by_id[i]["context"] for i in w["id"]],
                }
            )
        )
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--student-tokenizer", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    all_pairs = read_pairs(str(SAMPLE))[0]
    pairs = all_pairs[: args.pairs]
    contexts = sorted({p["context"] for p in all_pairs})
    tokenizer = (
        train_albert_tokenizer(contexts)
        if args.student_tokenizer == "unigram"
        else train_byte_level_bpe_tokenizer(contexts + [p["question"] for p in pairs])
    )
    with tempfile.TemporaryDirectory() as tmp:
        student_dir = build_tiny_model("albert", Path(tmp) / "student", seed=0, tokenizer=tokenizer, hidden=128)
        shards = teacher_shards(pairs, np.random.default_rng(0))
        project_shard(shards[0].slice(0, 8), student_dir, WINDOWS, T)  # load the tokenizer once, untimed
        model = load_qa_model(student_dir).train()
        optimizer = build_optimizer(model, 1e-4, 0.01)
        projected, projection_s = [], 0.0
        train_s, steps = 0.0, 0
        loss_fn, device = DistillationLoss(temperature=T), torch.device("cpu")
        scheduler = build_scheduler(optimizer, plan_steps(10_000, 1, 1, 1, 1.0, 0.0))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        pad = load_tokenizer(student_dir).pad_token_id

        def train_on(table: pa.Table) -> None:
            nonlocal train_s, steps
            rows = table.drop_columns(["skipped"]).to_pydict()
            for i in range(0, table.num_rows, args.batch_size):
                started = time.perf_counter()
                batch = collate_windows({k: v[i : i + args.batch_size] for k, v in rows.items()}, pad)
                train_step(model, [batch], loss_fn, optimizer, scheduler, scaler, 1.0, device, None)
                train_s += time.perf_counter() - started
                steps += 1

        for shard in shards:  # alternate: project a shard, train an epoch's share of steps on it
            started = time.perf_counter()
            table = project_shard(shard, student_dir, WINDOWS, T)
            projection_s += time.perf_counter() - started
            projected.append(table)
            train_on(table)
    teacher_windows = sum(s.num_rows for s in shards)
    student_windows = sum(t.num_rows for t in projected)
    print(
        f"{len(pairs)} pairs: {teacher_windows} teacher windows (WordPiece) -> {student_windows} student windows "
        f"({args.student_tokenizer}); windows of {WINDOWS['max_seq_len']}, stride {WINDOWS['doc_stride']}\n"
        f"projection, once: {projection_s:.2f} s ({1e3 * projection_s / student_windows:.2f} ms per student window)\n"
        f"one epoch of training, batch {args.batch_size}: {train_s:.2f} s over {steps} steps "
        f"({1e3 * train_s / student_windows:.2f} ms per window)\n"
        f"overhead: projection = {projection_s / train_s:.1%} of one epoch's step time "
        f"(the goal: under 10%); of a 2-epoch run, {projection_s / (2 * train_s):.1%}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
