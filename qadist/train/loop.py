"""The per-worker training loop of `qadist distill` / `qadist finetune` (run by Ray Train workers).

Each worker streams its shard of the windows dataset (with `length_group` > 1, that many
micro-batches at a time, re-cut into micro-batches of similar window length and served in shuffled
order: less padding), pads each micro-batch to its longest window, and makes one optimizer step
per `grad_accum` micro-batches (fused AdamW, linear warm-up and decay, gradient clipping, autocast
at the configured `precision`, DDP through `prepare_model`). Every
`checkpoint_every` steps and at the end, rank 0 writes a checkpoint: a `save_pretrained` folder
(model, tokenizer, `qadist_config.json`) with `training_state.pt` beside the weights (optimizer,
scheduler, scaler, step and data position), reported with `ray.train.report`. A restarted worker
group (or a re-run of the same job) resumes at the saved step and skips the batches its epoch had
already consumed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from qadist.inference import to_device, training_memory
from qadist.train.batches import MODEL_INPUTS, Plan, collate_windows, group_counts, length_grouped
from qadist.train.checkpoint import load_state, save_checkpoint, unwrap
from qadist.train.losses import DistillationLoss

log = logging.getLogger(__name__)


def worker_node_ids() -> list[str]:
    """The Ray node id of every training worker, by rank: shows how workers were placed on nodes."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [node]
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def training_device() -> torch.device:
    """The worker's device: Ray Train's (its GPU, or the CPU); the CPU for a GPU worker of the
    simulated GPU cluster (qadist/runtime.py's test hook), which has no CUDA device behind it."""
    import ray.train.torch

    from qadist.runtime import simulated_gpus

    if simulated_gpus() and not torch.cuda.is_available():
        return torch.device("cpu")
    return ray.train.torch.get_device()


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
    """One optimizer step over `grad_accum` micro-batches (the same update as one batch holding them all).

    Each term of the loss is normalised by its window count over the whole group, so the summed
    gradients equal those of the concatenated batch; DDP all-reduces only on the last micro-batch.
    The counts come from the CPU batches and the loss statistics add up on the device: the host
    waits for the GPU once per step, not once per micro-batch.
    """
    model.train()
    n_kd, n_hard = group_counts(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=device)  # loss, kd summed over windows, hard summed over windows
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, device)
        last = i == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(**{k: mb[k] for k in MODEL_INPUTS if k in mb})
            res = loss_fn(
                out.start_logits,
                out.end_logits,
                mb["attention_mask"],
                mb["teacher_start"],
                mb["teacher_end"],
                mb["has_teacher"],
                mb["start_positions"],
                mb["end_positions"],
                n_kd=n_kd,
                n_hard=n_hard,
            )
            scaler.scale(res.loss).backward()
        sums += torch.stack([res.loss.detach(), res.kd_sum, res.hard_sum]).float()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    loss_sum, kd_sum, hard_sum, grad_norm = torch.cat([sums, grad_norm.detach().float().reshape(1)]).tolist()
    return {
        "loss": loss_sum,
        "kd_loss": kd_sum / max(n_kd, 1),
        "hard_loss": hard_sum / max(n_hard, 1),
        "grad_norm": grad_norm,
        "kd_windows": n_kd,
        "gold_windows": n_hard,
    }


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


def evaluate_model(
    model: torch.nn.Module, tokenizer: Any, pairs: list[dict], eval_cfg: dict, device: torch.device
) -> dict[str, float]:
    """SQuAD 2.0 EM/F1 of the model on labelled pairs, with the shared windows and post-processing."""
    from qadist.config import AnswerSettings
    from qadist.inference import predict_pairs
    from qadist.squad.io import gold_answers
    from qadist.squad.metrics import squad_v2_metrics

    settings = AnswerSettings(**{k: eval_cfg[k] for k in ("max_seq_len", "doc_stride", "max_query_len", "batch_size")})
    inner = unwrap(model)
    inner.eval()
    try:
        predictions, na_probs = predict_pairs(pairs, inner, tokenizer, settings, device)
    finally:
        inner.train()
    metrics = squad_v2_metrics(gold_answers(pairs, eval_cfg["file"]), predictions, na_probs)
    return {f"eval/{k}": float(v) for k, v in metrics.items()}


class _Bar:
    """Rank 0's progress bar (Ray's tqdm inside a Ray worker, so the driver renders it)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if not enabled:
            return
        try:
            import ray
            from ray.experimental.tqdm_ray import tqdm as bar_cls

            if not ray.is_initialized():
                raise ImportError
        except ImportError:
            from tqdm import tqdm as bar_cls
        self.bar = bar_cls(total=total, desc="train")
        self.bar.update(initial)

    def update(self, epoch: int, step: int, total: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch} step {step}/{total} loss {loss:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            sys.stdout.flush()  # Ray's bar travels through stdout; the worker may exit right after


class WorkerTrainer:
    """One Ray Train worker: model, optimizer and data shard, restored from the last checkpoint if any.

    `config` holds plain values (see `qadist.train.launch.launch`): model, plan, loss, train, eval,
    qadist_config.
    """

    def __init__(self, config: dict):
        started = time.perf_counter()
        self.setup_context(config)
        checkpoint_model = self.restore_state()
        self.model = self.setup_model(checkpoint_model)
        self.optimizer, self.scheduler, self.scaler = self.setup_optimizer()
        self.setup_task()
        self.window: list[dict[str, float]] = []  # step stats since the last report
        self.timings = {"setup_s": time.perf_counter() - started, "steps_s": 0.0, "checkpoint_s": 0.0}

    def setup_context(self, config: dict) -> None:
        """Rank, device, precision, the run's settings and the tokenizer."""
        import ray.train
        import ray.train.torch

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

    # --- what the task decides: the model class, batches, the step's loss, evaluation ---------------

    STAT_KEYS = ("loss", "kd_loss", "hard_loss", "grad_norm")  # step stats averaged into each report

    def load_model(self, folder: str) -> torch.nn.Module:
        from qadist.models import load_qa_model

        # fp32 master weights whatever dtype the checkpoint was saved in (autocast does the rest).
        return load_qa_model(folder, trust_remote_code=self.train["trust_remote_code"], dtype=torch.float32)

    def setup_task(self) -> None:
        """The distillation loss, and the evaluation pairs on rank 0 (it alone evaluates)."""
        from qadist.squad.io import read_pairs

        loss = self.config["loss"]
        self.loss_fn = DistillationLoss(loss["temperature"], loss["alpha_kd"], loss["alpha_hard"])
        self.eval_cfg = self.config.get("eval")
        on_rank0 = self.eval_cfg and self.rank == 0
        self.eval_pairs = read_pairs(self.eval_cfg["file"], strict=True)[0] if on_rank0 else None

    def collate(self, raw: dict[str, Any], index: int) -> dict[str, torch.Tensor]:
        """Micro-batch `index` of the epoch (numpy rows) -> tensors."""
        return collate_windows(raw, self.tokenizer.pad_token_id)

    def train_step(self, group: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        return train_step(
            self.model,
            group,
            self.loss_fn,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.train["max_grad_norm"],
            self.device,
            self.amp_dtype,
        )

    def evaluate(self, epoch_end: bool, done: bool) -> dict[str, float]:
        """SQuAD EM/F1 on the evaluation file after each epoch and at the end (rank 0)."""
        if self.eval_pairs is None or not (epoch_end or done):
            return {}
        metrics = evaluate_model(self.model, self.tokenizer, self.eval_pairs, self.eval_cfg, self.device)
        self.log(f"step {self.step}: eval exact {metrics['eval/exact']:.2f} f1 {metrics['eval/f1']:.2f}")
        return metrics

    # --- the run ---------------------------------------------------------------------------------

    def restore_state(self) -> Any:
        """The training state of the last reported checkpoint (step, data position, optimizer, ...), and
        its model; (fresh state, None) without one."""
        import ray.train

        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "resumed_at": []}
        checkpoint, model = ray.train.get_checkpoint(), None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                model = self.load_model(folder)
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
            model = self.load_model(self.start_model)
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

    def run(self) -> None:
        import ray.train

        if self.step >= self.plan.total_steps:
            self.log(f"the run already finished its {self.plan.total_steps} steps; nothing to train")
            return
        shard = ray.train.get_dataset_shard("train")
        self.bar = _Bar(self.plan.total_steps, self.step, self.rank == 0)
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

    def run_epoch(self, shard: Any) -> None:
        """The rest of the current epoch (from `position` micro-batches in), or up to the last step."""
        plan, group, seen = self.plan, [], 0
        # A seeded local shuffle over an ordered stream: the same order again after a resume.
        shuffle = {
            "local_shuffle_buffer_size": self.train["shuffle_buffer"],
            "local_shuffle_seed": self.train["seed"] + self.epoch,
        }
        group_size = self.train["length_group"]
        chunks = shard.iter_batches(
            batch_size=plan.batch_size * group_size,
            batch_format="numpy",
            prefetch_batches=2,
            drop_last=False,
            **(shuffle if self.train["shuffle_buffer"] else {}),
        )
        rng = np.random.default_rng([self.train["seed"], self.epoch])  # the same micro-batch order after a resume
        batches = (mb for chunk in chunks for mb in length_grouped(chunk, plan.batch_size, rng))
        for i, raw in enumerate(batches):
            seen += 1
            if i < self.position:  # consumed before the checkpoint we resumed from
                continue
            group.append(self.collate(raw, i))
            if len(group) < plan.grad_accum and i + 1 < plan.micro_batches_per_epoch:
                continue
            self.optimizer_step(group)
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
            self.optimizer_step(group)
        self.report(epoch_end=True)

    def optimizer_step(self, group: list[dict[str, torch.Tensor]]) -> None:
        with training_memory(self.plan.batch_size, self.plan.grad_accum):  # out of memory: exit 2, no retries
            stats = self.train_step(group)
        self.step += 1
        self.window.append(stats)
        self.bar.update(self.epoch, self.step, self.plan.total_steps, stats["loss"])

    def task_state(self) -> dict[str, Any]:
        """What the task keeps in a checkpoint's training state beyond the loop's own."""
        return {}

    def report(self, epoch_end: bool) -> None:
        """Metrics (and at checkpoint steps a checkpoint, written by rank 0); every worker reports."""
        import ray.train

        done = self.step >= self.plan.total_steps
        metrics = {
            "train/step": self.step,
            "train/epoch": round(self.step / self.plan.steps_per_epoch, 4),
            "train/lr": self.scheduler.get_last_lr()[0],
            "workers/node_ids": ",".join(self.worker_nodes),
        }
        if self.window:
            metrics.update({f"train/{k}": float(np.mean([w[k] for w in self.window])) for k in self.STAT_KEYS})
        self.window.clear()
        metrics.update(self.evaluate(epoch_end, done))
        if self.step % self.train["checkpoint_every"] != 0 and not done:
            ray.train.report(metrics)
            return
        folder = tempfile.mkdtemp(prefix="qadist-ckpt-") if self.rank == 0 else None
        started = time.perf_counter()
        try:
            if folder:
                epoch, position = (self.epoch + 1, 0) if epoch_end else (self.epoch, self.position)
                save_checkpoint(
                    folder,
                    self.model,
                    self.tokenizer,
                    self.config["qadist_config"],
                    {
                        "step": self.step,
                        "epoch": epoch,
                        "batches_in_epoch": position,
                        "plan": asdict(self.plan),
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict() if self.use_scaler else None,
                        "metrics": metrics,
                        "resumed_at": self.state["resumed_at"],
                        **self.task_state(),
                    },
                )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            self.timings["checkpoint_s"] += time.perf_counter() - started


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point."""
    WorkerTrainer(config).run()
