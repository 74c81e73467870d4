"""Launching a training run on Ray Train: the banner, the TorchTrainer, the final model.

Checkpoints go to `<out>/<stage>/` (a local folder or an s3:// prefix, Ray Train's storage);
re-running the same command resumes from the last reported checkpoint; the final model is copied
to `<out>/final`. The run's settings are claimed in `<out>/_qadist_<stage>.json`, so another
job's settings into the same folder are refused instead of corrupting the run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
from ray.train import UserCallback

from qadist import console, storage
from qadist.capacity import Demand, check_capacity
from qadist.config import OptimizerSettings, to_dict
from qadist.errors import UserError, user_error_in
from qadist.outputs import claim, claim_file
from qadist.runtime import WORKER_ENV, simulated_gpu_cluster
from qadist.train.batches import Plan, plan_steps
from qadist.train.checkpoint import QADIST_CONFIG_VERSION, export_final
from qadist.train.loop import train_loop_per_worker
from qadist.train.task import TaskSpec

log = logging.getLogger(__name__)

WINDOW_KEYS = ("max_seq_len", "doc_stride", "max_query_len")
# The run's settings every worker gets, whatever its task.
SHARED_SETTINGS = (
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "checkpoint_every",
    "seed",
    "shuffle_buffer",
    "length_group",
    "precision",
    "trust_remote_code",
)
# What makes two runs into one --out the same run (so the second continues the first).
RUN_FINGERPRINT_KEYS = (
    "labels",
    "student",
    "train_file",
    "model",
    "batch_size",
    "grad_accum",
    "num_workers",
    "shuffle_buffer",
    "length_group",
    "precision",
    "seed",
    "epochs",
    "learning_rate",
    "warmup_ratio",
    "temperature",
    "alpha_kd",
    "alpha_hard",
    "documents",
    "mask_prob",
    "whole_word",
    "masking",
    "heldout_share",
    "heldout_sequences",
    "head_warmup_steps",
    "head_learning_rate",
    *WINDOW_KEYS,
)


class StopOnUserError(UserCallback):
    """A UserError in a worker (bad input, or a step out of GPU memory: `inference.training_memory`)
    fails the run at once instead of restarting the worker group into the same error.

    Ray 2.60's DefaultFailurePolicy (ray/train/v2/_internal/execution/failure_handling/default.py)
    retries every WorkerGroupError up to `max_failures`, whatever the worker raised, and offers no
    public way to plug in another policy. It never retries a ControllerError other than a worker
    group startup failure, and an exception raised by a callback on the controller becomes one (the
    controller's control loop wraps it). So this callback, which Ray calls with the workers'
    exceptions before the failure policy sees them, raises the UserError itself: the driver gets a
    ControllerError whose `controller_failure` is that UserError (`errors.user_error_in` finds it).
    """

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            user = user_error_in(error)
            if user is not None:
                raise user


def quiet(dataset: Any) -> Any:
    """No Ray Data progress bars for the training ingest (a split bar per epoch per worker): the
    training bar shows progress. A dataset carries its own context, so this touches no other."""
    dataset.context.enable_progress_bars = False
    return dataset


def run_storage(out: str) -> tuple[str, pafs.FileSystem | None]:
    """RunConfig's storage_path and storage_filesystem for a local folder or an s3:// prefix."""
    if storage.is_s3(out):
        return out[len("s3://") :].rstrip("/"), storage.s3_filesystem()
    storage.makedirs(out)
    return storage.resolve(out)[1], None


def check_same_run(cfg: OptimizerSettings, stage: str) -> None:
    """Re-running a job continues it; a *different* job into the same --out would corrupt it.
    Only a run with a committed checkpoint is continued; before that, new settings replace it."""
    started = storage.exists(storage.join(cfg.out, stage, "checkpoint_manager_snapshot.json"))
    settings = {k: v for k, v in to_dict(cfg).items() if k in RUN_FINGERPRINT_KEYS}
    claim(
        cfg.out,
        claim_file(stage),
        settings,
        what=f"a {stage} run",
        overwrite=not started,
        foreign=(),
        fix=f"give a new --out, or delete {storage.join(cfg.out, stage)} to start over",
    )


def banner(stage: str, plan: Plan, cfg: OptimizerSettings, what: str, run_dir: str) -> str:
    return (
        f"qadist {stage}: {what} | "
        f"global batch {plan.global_batch} = {plan.batch_size} per worker x {plan.num_workers} workers x "
        f"{plan.grad_accum} accumulation | {plan.steps_per_epoch} steps/epoch x {cfg.epochs:g} epochs = "
        f"{plan.total_steps} steps (warm-up {plan.warmup_steps}) | "
        f"checkpoints every {cfg.checkpoint_every} steps -> {run_dir}"
    )


def windows_described(soft: int, gold: int) -> str:
    parts = [f"{soft:,} soft-labelled" if soft else "", f"{gold:,} gold" if gold else ""]
    return f"{soft + gold:,} windows ({', '.join(p for p in parts if p)})"


def simulated_gpu_torch_config(use_gpu: bool) -> Any:
    """gloo instead of NCCL for GPU workers that compute on the CPU (the simulated GPU cluster's hook,
    qadist/runtime.py); None (Ray Train's choice: NCCL on GPUs) otherwise."""
    import torch

    if use_gpu and simulated_gpu_cluster() and not torch.cuda.is_available():
        from ray.train.torch import TorchConfig

        return TorchConfig(backend="gloo")
    return None


def worker_resources(cfg: OptimizerSettings) -> dict[str, float]:
    """One Train worker's resources as Ray Train asks for them: a GPU (and no CPU: Ray Train's default,
    so CPUs stay for data tasks) with --use-gpu, else a CPU; plus --resource NAME=N."""
    return {"GPU": 1.0} | cfg.resources_per_worker if cfg.use_gpu else {"CPU": 1.0} | cfg.resources_per_worker


def demands(cfg: OptimizerSettings) -> list[Demand]:
    """What the Train worker group asks Ray for, all at once (one placement group)."""
    fix = (
        "lower --num-workers (one per GPU; raise --grad-accum to keep the global batch) or add such nodes"
        if cfg.use_gpu
        else "lower --num-workers or add such nodes"
    )
    return [Demand(f"{cfg.num_workers} Train worker(s)", worker_resources(cfg), cfg.num_workers, fix)]


def check_workers_fit(ray, stage: str, cfg: OptimizerSettings) -> None:
    """Exit 2 now when the worker group can never be placed (Ray Train would wait for it forever)."""
    check_capacity(ray, stage, demands(cfg))


@dataclass
class TrainJob:
    """One training run as a stage describes it to `launch`."""

    stage: str  # distill, finetune, pretrain: the run folder `<out>/<stage>/` and the banner's name
    cfg: OptimizerSettings
    model: str  # the start model (a local folder)
    dataset: Any  # the training rows (a Ray dataset)
    counts: dict[str, int]  # the training rows by kind; their sum is the plan's
    task: TaskSpec  # the workers' objective (qadist.train.task)
    what: str  # the training rows, described for the banner
    provenance: dict = field(default_factory=dict)  # recorded in every checkpoint's qadist_config.json
    windows: dict[str, int] = field(default_factory=dict)  # window lengths, recorded likewise (QA)


def plan_job(job: TrainJob) -> Plan:
    cfg = job.cfg
    rows = sum(job.counts.values())
    plan = plan_steps(rows, cfg.num_workers, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.warmup_ratio)
    if plan.windows_per_worker == 0:
        raise UserError(
            f"{plan.windows} training windows cannot be split across --num-workers {cfg.num_workers}; use fewer workers"
        )
    return plan


def loop_config(job: TrainJob, plan: Plan) -> dict:
    """What every worker gets (`qadist.train.loop.TrainLoop`): plain values."""
    cfg = job.cfg
    qadist_config = {
        "schema_version": QADIST_CONFIG_VERSION,
        "stage": job.stage,
        "config": to_dict(cfg),
        "windows": job.windows,
        **job.provenance,
    }
    return {
        "model": job.model,
        "plan": asdict(plan),
        "train": {k: getattr(cfg, k) for k in SHARED_SETTINGS},
        "qadist_config": qadist_config,
        "task": asdict(job.task),
    }


PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def worker_env() -> dict[str, str]:
    """Environment of every training worker. Ray Train 2.60's print patch sends a worker's print() to
    its logger and, since Ray wraps the worker's stdout, to stdout as well: every line twice in the
    job's log. Off unless the user turned it on (its value on the driver is kept). The rest is
    `WORKER_ENV`, which a joined cluster's workers would not get from the job otherwise."""
    return {**WORKER_ENV, PRINT_PATCH: os.environ.get(PRINT_PATCH, "0")}


def torch_trainer(job: TrainJob, plan: Plan, storage_path: str, filesystem: pafs.FileSystem | None) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = job.cfg
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same order on every run, so a resume skips exactly what was consumed
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(job, plan),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=worker_resources(cfg),
            placement_strategy=cfg.placement_strategy,
        ),
        torch_config=simulated_gpu_torch_config(cfg.use_gpu),
        run_config=ray.train.RunConfig(
            name=job.stage,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env()},
            callbacks=[StopOnUserError()],
        ),
        datasets={"train": quiet(job.dataset)},
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )


def launch(job: TrainJob) -> dict:
    """Run the TorchTrainer and export the final model; returns final path, metrics and plan."""
    stage, cfg = job.stage, job.cfg
    plan = plan_job(job)
    check_same_run(cfg, stage)
    storage_path, filesystem = run_storage(cfg.out)
    console.banner(banner(stage, plan, cfg, job.what, storage.join(cfg.out, stage)), log)
    trainer = torch_trainer(job, plan, storage_path, filesystem)
    started = time.perf_counter()
    result = trainer.fit()
    fitted = time.perf_counter()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} finished without a checkpoint in {storage.join(cfg.out, stage)}")
    final = export_final(result.checkpoint, cfg.out)
    log.info("%s: Ray Train fit %.1fs, final export %.1fs", stage, fitted - started, time.perf_counter() - fitted)
    metrics = {k: v for k, v in (result.metrics or {}).items() if "/" in k}
    shown = ", ".join(
        f"{k} {v:.4g}"
        for k, v in metrics.items()
        if k in ("train/step", "train/loss", "eval/exact", "eval/f1", "eval/mlm_loss")
    )
    console.summary(
        f"qadist {stage}: done in {time.perf_counter() - started:.1f}s ({shown}); final model -> {final}", log
    )
    checkpoint = ("s3://" if storage.is_s3(cfg.out) else "") + result.checkpoint.path
    return {"final": final, "metrics": metrics, "plan": asdict(plan), "checkpoint": checkpoint}
