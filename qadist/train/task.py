"""What a training objective gives the one loop (`qadist.train.loop`): a task object.

torchtune's recipes in shape: the loop owns setup, resume, epochs, accumulation, precision, the
optimizer step, checkpoints and reporting; a task owns what differs between objectives:

    load_model(folder)                  the model class (fp32 weights: training's master copy)
    setup(model, state)                 after the model is in place: evaluation data (rank 0), and
                                        whatever the task restores from a checkpoint's `state`
    collate(raw, epoch, index)          micro-batch `index` of `epoch` (numpy rows) -> tensors (CPU)
    group_counts(group)                 the accumulation group's normalisers, counted on the CPU
    forward(model, mb)                  the model's output (the loop runs it under autocast)
    loss(out, mb, counts)               (loss to backpropagate, detached per-step sums to report)
    step_stats(loss, sums, grad_norm, counts)   one optimizer step's statistics (plain floats)
    evaluate(model, step, epoch_end, done)      metrics for the report (rank 0; {} elsewhere)
    state()                             what the task keeps in a checkpoint beyond the loop's own
    stat_keys                           the step statistics averaged into each report

The driver names a task by a `TaskSpec` (its kind in `qadist.train.loop.TASKS` and plain settings);
every worker builds it with a `WorkerContext`. A new objective is one module with such a class,
one entry in `TASKS`, and its stage building a `TaskSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class TaskSpec:
    """A task as the driver names it: `kind` (a key of `qadist.train.loop.TASKS`) and the plain values
    its workers need beyond the shared settings (sent to every worker)."""

    kind: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerContext:
    """What the loop knows about its worker that a task may use."""

    rank: int
    device: torch.device
    amp_dtype: torch.dtype | None
    tokenizer: Any
    train: dict[str, Any]  # the run's shared settings (seed, trust_remote_code, ...)
    log: Callable[[str], None]  # rank 0's console line


class Task(Protocol):
    stat_keys: tuple[str, ...]

    def load_model(self, folder: str) -> torch.nn.Module: ...

    def setup(self, model: torch.nn.Module, state: dict[str, Any]) -> None: ...

    def collate(self, raw: dict[str, Any], epoch: int, index: int) -> dict[str, torch.Tensor]: ...

    def group_counts(self, group: list[dict[str, torch.Tensor]]) -> dict[str, int]: ...

    def forward(self, model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> Any: ...

    def loss(
        self, out: Any, mb: dict[str, torch.Tensor], counts: dict[str, int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def step_stats(
        self, loss: float, sums: list[float], grad_norm: float, counts: dict[str, int]
    ) -> dict[str, float]: ...

    def evaluate(self, model: torch.nn.Module, step: int, epoch_end: bool, done: bool) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...
