"""The one training loop, run by every Ray Train worker of `distill`, `finetune` and `pretrain`.

The loop holds a task (`qadist.train.task`: QA distillation/fine-tuning in `qa.py`, masked LM in
`masked_lm.py`), which gives the model, the batches, the loss step and the evaluation; the loop does
the rest once. Each worker streams its shard of the dataset (with `length_group` > 1, that many
micro-batches at a time, re-cut into micro-batches of similar length and served in shuffled order:
less padding) and makes one optimizer step per `grad_accum` micro-batches (fused AdamW, linear
warm-up and decay, gradient clipping, autocast at the configured `precision` with a GradScaler for
fp16, DDP through `prepare_model`). Every `checkpoint_every` steps and at the end, rank 0 writes a
checkpoint: a `save_pretrained` folder (model, tokenizer, `qadist_config.json`) with
`training_state.pt` beside the weights (optimizer, scheduler, scaler, step and data position, and
the task's own state), reported with `ray.train.report`. A restarted worker group (or a re-run of
the same job) resumes at the saved step and skips the batches its epoch had already consumed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from qadist.inference import to_device, training_memory
from qadist.train.batches import Plan, length_grouped
from qadist.train.checkpoint import load_state, save_checkpoint
from qadist.train.losses import DistillationLoss
from qadist.train.masked_lm import MaskedLMTask
from qadist.train.qa import QATask
from qadist.train.task import Task, WorkerContext
from qadist.train.worker import ProgressBar, training_device, worker_node_ids

# The objectives, by `TaskSpec.kind`: each builds its task from its settings and the worker's context.
TASKS = {"qa": QATask.from_settings, "masked_lm": MaskedLMTask.from_settings}


def optimizer_step(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimizer step over `grad_accum` micro-batches (the same update as one batch holding them all).

    The task normalises its loss by counts over the whole group (`task.group_counts`, from the CPU
    batches), so the summed gradients equal those of the concatenated batch; DDP all-reduces only on
    the last micro-batch. The loss statistics add up on the device: the host waits for the GPU once
    per step, not once per micro-batch.
    """
    model.train()
    counts = task.group_counts(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    sums = None  # the loss and the task's sums, on the device
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, device)
        last = i == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = task.forward(model, mb)
            loss, parts = task.loss(out, mb, counts)
            scaler.scale(loss).backward()
        stats = torch.stack([loss.detach(), *parts]).float()
        if sums is None:
            sums = torch.zeros(len(stats), device=device)
        sums += stats
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    loss_sum, *part_sums, grad_norm = torch.cat([sums, grad_norm.detach().float().reshape(1)]).tolist()
    return task.step_stats(loss_sum, part_sums, grad_norm, counts)


def train_step(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    loss_fn: DistillationLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """`optimizer_step` of the QA task with `loss_fn` (the distillation/fine-tuning step, for
    benchmarks and tests that drive it without a worker)."""
    task = QATask(loss_fn)
    return optimizer_step(model, micro_batches, task, optimizer, scheduler, scaler, max_grad_norm, device, amp_dtype)


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and normalisation weights (the BERT recipe).

    The fused kernel (CPU and CUDA) updates all parameters in one pass: on a CPU the per-tensor
    loop took ~15% of a MiniLM training step."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay) or None
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        fused=fused,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, plan: Plan) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)


class TrainLoop:
    """One Ray Train worker: its task, model, optimizer and data shard, restored from the last
    checkpoint if any.

    `config` holds plain values (see `qadist.train.launch.launch`): model, plan, train, task
    (a `TaskSpec` as a dict), qadist_config.
    """

    def __init__(self, config: dict):
        started = time.perf_counter()
        self.setup_context(config)
        checkpoint_model = self.restore_state()
        self.model = self.setup_model(checkpoint_model)
        self.optimizer, self.scheduler, self.scaler = self.setup_optimizer()
        self.task.setup(self.model, self.state)
        self.window: list[dict[str, float]] = []  # step stats since the last report
        self.timings = {"setup_s": time.perf_counter() - started, "steps_s": 0.0, "checkpoint_s": 0.0}

    # --- setup -----------------------------------------------------------------------------------

    def setup_context(self, config: dict) -> None:
        """Rank, device, precision, the run's settings, the tokenizer and the task."""
        import ray.train

        from qadist.inference import autocast_dtype
        from qadist.models import load_tokenizer, local_model

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.rank = ray.train.get_context().get_world_rank()
        self.worker_nodes = worker_node_ids()
        self.config, self.plan, self.train = config, Plan(**config["plan"]), config["train"]
        self.device = training_device()
        self.amp_dtype = autocast_dtype(self.device, self.train["precision"])
        self.start_model = local_model(config["model"])
        self.tokenizer = load_tokenizer(self.start_model, self.train["trust_remote_code"])
        ctx = WorkerContext(self.rank, self.device, self.amp_dtype, self.tokenizer, self.train, self.log)
        self.task: Task = TASKS[config["task"]["kind"]](config["task"]["settings"], ctx)

    def restore_state(self) -> Any:
        """The training state of the last reported checkpoint (step, data position, optimizer, ...), and
        its model; (fresh state, None) without one."""
        import ray.train

        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "resumed_at": []}
        checkpoint, model = ray.train.get_checkpoint(), None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                model = self.task.load_model(folder)
                self.state = load_state(folder)
            if self.state["step"] < self.plan.total_steps:
                self.state["resumed_at"] = [*self.state.get("resumed_at", []), self.state["step"]]
                self.log(
                    f"resuming from step {self.state['step']} (epoch {self.state['epoch']}, "
                    f"batch {self.state['batches_in_epoch']} of it)"
                )
        self.step, self.epoch, self.position = self.state["step"], self.state["epoch"], self.state["batches_in_epoch"]
        return model

    def setup_model(self, checkpoint_model: Any) -> torch.nn.Module:
        """The checkpoint's model, or the start model (seeded head); wrapped for DDP and moved to the device."""
        import ray.train.torch

        model = checkpoint_model
        if model is None:
            torch.manual_seed(self.train["seed"])
            model = self.task.load_model(self.start_model)
        torch.manual_seed(
            self.train["seed"] + 1000 * self.rank + self.step
        )  # dropout differs by rank and after a resume
        return ray.train.torch.prepare_model(model, move_to_device=self.device)  # the simulated cluster: the CPU

    def setup_optimizer(self) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
        """AdamW, the schedule and the fp16 loss scaler, with their restored state."""
        optimizer = build_optimizer(self.model, self.train["learning_rate"], self.train["weight_decay"])
        scheduler = build_scheduler(optimizer, self.plan)
        self.use_scaler = self.amp_dtype == torch.float16  # bf16 needs no loss scaling
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)
        if "optimizer" in self.state:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            if self.use_scaler and self.state.get("scaler"):
                scaler.load_state_dict(self.state["scaler"])
        return optimizer, scheduler, scaler

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[qadist] {message}", flush=True)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        import ray.train

        if self.step >= self.plan.total_steps:
            self.log(f"the run already finished its {self.plan.total_steps} steps; nothing to train")
            return
        shard = ray.train.get_dataset_shard("train")
        self.bar = ProgressBar(self.plan.total_steps, self.step, self.rank == 0)
        started, first = time.perf_counter(), self.step
        try:
            while self.step < self.plan.total_steps:
                self.run_epoch(shard)
                self.epoch, self.position = self.epoch + 1, 0
        finally:
            self.bar.close()
        t = self.timings
        t["steps_s"] = time.perf_counter() - started - t["checkpoint_s"]
        if self.rank == 0:  # to the log file (console.py): a detail, not a note for the terminal
            print(
                f"worker timings: setup {t['setup_s']:.1f}s, {self.step - first} steps {t['steps_s']:.1f}s "
                f"(data wait included), checkpoints {t['checkpoint_s']:.1f}s",
                flush=True,
            )

    def epoch_batches(self, shard: Any) -> Any:
        """The current epoch's micro-batches (numpy rows), in the same order on every run."""
        # A seeded local shuffle over an ordered stream: the same order again after a resume.
        shuffle = {
            "local_shuffle_buffer_size": self.train["shuffle_buffer"],
            "local_shuffle_seed": self.train["seed"] + self.epoch,
        }
        chunks = shard.iter_batches(
            batch_size=self.plan.batch_size * self.train["length_group"],
            batch_format="numpy",
            prefetch_batches=2,
            drop_last=False,
            **(shuffle if self.train["shuffle_buffer"] else {}),
        )
        rng = np.random.default_rng([self.train["seed"], self.epoch])  # the same micro-batch order after a resume
        return (mb for chunk in chunks for mb in length_grouped(chunk, self.plan.batch_size, rng))

    def run_epoch(self, shard: Any) -> None:
        """The rest of the current epoch (from `position` micro-batches in), or up to the last step."""
        plan, group, seen = self.plan, [], 0
        for i, raw in enumerate(self.epoch_batches(shard)):
            seen += 1
            if i < self.position:  # consumed before the checkpoint we resumed from
                continue
            group.append(self.task.collate(raw, self.epoch, i))
            if len(group) < plan.grad_accum and i + 1 < plan.micro_batches_per_epoch:
                continue
            self.take_step(group)
            group, self.position = [], i + 1
            epoch_end = self.position >= plan.micro_batches_per_epoch
            if epoch_end or self.step % self.train["checkpoint_every"] == 0 or self.step >= plan.total_steps:
                self.report(epoch_end)
            if epoch_end or self.step >= plan.total_steps:
                return
        if seen == 0:
            raise RuntimeError(
                f"worker {self.rank} got no training data in epoch {self.epoch}; use fewer workers or more data"
            )
        if group:  # the shard held fewer rows than planned: the short group still makes a step
            self.take_step(group)
        self.report(epoch_end=True)

    def take_step(self, group: list[dict[str, torch.Tensor]]) -> None:
        with training_memory(self.plan.batch_size, self.plan.grad_accum):  # out of memory: exit 2, no retries
            stats = optimizer_step(
                self.model,
                group,
                self.task,
                self.optimizer,
                self.scheduler,
                self.scaler,
                self.train["max_grad_norm"],
                self.device,
                self.amp_dtype,
            )
        self.step += 1
        self.window.append(stats)
        self.bar.update(self.epoch, self.step, self.plan.total_steps, stats["loss"])

    # --- reports and checkpoints -------------------------------------------------------------------

    def metrics(self, epoch_end: bool, done: bool) -> dict[str, Any]:
        """The step, the schedule, the step statistics since the last report, and the task's evaluation."""
        metrics = {
            "train/step": self.step,
            "train/epoch": round(self.step / self.plan.steps_per_epoch, 4),
            "train/lr": self.scheduler.get_last_lr()[0],
            "workers/node_ids": ",".join(self.worker_nodes),
        }
        if self.window:
            metrics.update({f"train/{k}": float(np.mean([w[k] for w in self.window])) for k in self.task.stat_keys})
        self.window.clear()
        metrics.update(self.task.evaluate(self.model, self.step, epoch_end, done))
        return metrics

    def report(self, epoch_end: bool) -> None:
        """Metrics (and at checkpoint steps a checkpoint, written by rank 0); every worker reports."""
        import ray.train

        done = self.step >= self.plan.total_steps
        metrics = self.metrics(epoch_end, done)
        if self.step % self.train["checkpoint_every"] != 0 and not done:
            ray.train.report(metrics)
            return
        folder = tempfile.mkdtemp(prefix="qadist-ckpt-") if self.rank == 0 else None
        started = time.perf_counter()
        try:
            if folder:
                state = self.training_state(epoch_end, metrics)
                save_checkpoint(folder, self.model, self.tokenizer, self.config["qadist_config"], state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            self.timings["checkpoint_s"] += time.perf_counter() - started

    def training_state(self, epoch_end: bool, metrics: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint's training_state.pt holds: where to resume, the optimizer's state, the task's."""
        epoch, position = (self.epoch + 1, 0) if epoch_end else (self.epoch, self.position)
        return {
            "step": self.step,
            "epoch": epoch,
            "batches_in_epoch": position,
            "plan": asdict(self.plan),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_scaler else None,
            "metrics": metrics,
            "resumed_at": self.state["resumed_at"],
            **self.task.state(),
        }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point (every training stage)."""
    TrainLoop(config).run()
