"""Training batches: the step arithmetic of a run, length-grouped micro-batches, and collation.

Pure functions on plain batches (numpy from Ray Data, or lists), so unit tests and the worker run
the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qadist.train.losses import real_at

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Plan:
    """Step arithmetic, known before training starts (for the scheduler and the banner)."""

    windows: int
    num_workers: int
    batch_size: int
    grad_accum: int
    windows_per_worker: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_workers * self.grad_accum


def plan_steps(
    windows: int, num_workers: int, batch_size: int, grad_accum: int, epochs: float, warmup_ratio: float
) -> Plan:
    """Ray Train splits the dataset into equal shards (`streaming_split(equal=True)`), so every
    worker sees `windows // num_workers` windows per epoch; the last micro-batch may be short."""
    per_worker = windows // num_workers
    micro = math.ceil(per_worker / batch_size)
    per_epoch = math.ceil(micro / grad_accum)
    total = max(1, math.ceil(epochs * per_epoch))
    return Plan(
        windows, num_workers, batch_size, grad_accum, per_worker, micro, per_epoch, total, round(warmup_ratio * total)
    )


def length_grouped(chunk: dict[str, Any], batch_size: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """A chunk of window rows -> micro-batches of `batch_size` rows of similar length, in random order.

    Rows are sorted by window length (stable, so ties keep stream order) and cut into consecutive
    micro-batches (only the last may be short), so a chunk of n rows gives ceil(n / batch_size)
    micro-batches, as an ungrouped stream would. Less padding, less compute: with short pages
    and long ones mixed, a batch padded to its longest window wastes a third of its tokens.
    """
    lengths = np.fromiter((len(x) for x in chunk["input_ids"]), dtype=np.int64, count=len(chunk["input_ids"]))
    order = np.argsort(lengths, kind="stable")
    pieces = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [
        {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in chunk.items()}
        for idx in (pieces[j] for j in rng.permutation(len(pieces)))
    ]


def collate_windows(batch: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of window rows (numpy from Ray Data, or lists) -> tensors padded to its longest window.

    Output: input_ids, attention_mask, token_type_ids (when present) [B, L] long; teacher_start,
    teacher_end [B, L] float32 (0 where padded); has_teacher [B] bool (the row carries soft labels,
    i.e. its logits are as long as its window); start_positions, end_positions [B] long (-1 = no gold).
    """
    ids = list(batch["input_ids"])
    lengths = [len(x) for x in ids]
    n, longest = len(ids), max(lengths)
    out = {
        "input_ids": torch.full((n, longest), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, longest), dtype=torch.long),
        "teacher_start": torch.zeros((n, longest), dtype=torch.float32),
        "teacher_end": torch.zeros((n, longest), dtype=torch.float32),
        "has_teacher": torch.zeros(n, dtype=torch.bool),
    }
    types = list(batch["token_type_ids"]) if batch.get("token_type_ids") is not None else None
    if types is not None:
        out["token_type_ids"] = torch.zeros((n, longest), dtype=torch.long)
    starts = list(batch["start_logits"]) if "start_logits" in batch else [()] * n
    ends = list(batch["end_logits"]) if "end_logits" in batch else [()] * n
    for row, length in enumerate(lengths):
        out["input_ids"][row, :length] = torch.from_numpy(np.asarray(ids[row], dtype=np.int64))
        out["attention_mask"][row, :length] = 1
        if types is not None:
            out["token_type_ids"][row, :length] = torch.from_numpy(np.asarray(types[row], dtype=np.int64))
        if (
            starts[row] is not None
            and len(starts[row]) == length
            and ends[row] is not None
            and len(ends[row]) == length
        ):
            out["teacher_start"][row, :length] = torch.from_numpy(np.asarray(starts[row], dtype=np.float32))
            out["teacher_end"][row, :length] = torch.from_numpy(np.asarray(ends[row], dtype=np.float32))
            out["has_teacher"][row] = True
    out["start_positions"] = torch.as_tensor(np.asarray(batch["start_position"], dtype=np.int64))
    out["end_positions"] = torch.as_tensor(np.asarray(batch["end_position"], dtype=np.int64))
    return out


def group_counts(micro_batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    """Windows with soft labels and windows with gold labels over an accumulation group."""
    n_kd = n_hard = 0
    for mb in micro_batches:
        mask = mb["attention_mask"].bool()
        n_kd += int((mb["has_teacher"] & mask.any(-1)).sum())
        n_hard += int((real_at(mask, mb["start_positions"]) & real_at(mask, mb["end_positions"])).sum())
    return n_kd, n_hard
