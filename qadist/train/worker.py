"""A Ray Train worker's surroundings, for the loop (`qadist.train.loop`): its device, where its
peers run, and rank 0's progress bar."""

from __future__ import annotations

import sys

import torch


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


class ProgressBar:
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
