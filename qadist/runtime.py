"""The one way qadist starts (or joins) Ray.

- Ray already initialised (a test session, a notebook, the demo): reused as it is.
- `RAY_ADDRESS` set (`ray job submit` sets it): join that cluster.
- Otherwise an embedded, single-node Ray in this process, with at least `min_cpus` logical CPUs:
  with every CPU held by training workers or teacher actors, Ray Data's read and write tasks
  would never run and the pipeline would stall (ray#44687).
"""

from __future__ import annotations

import contextlib
import logging
import os

from qadist import console

log = logging.getLogger(__name__)

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}
# The test hook of the simulated GPU cluster (tests/integration/test_simulated_gpu_cluster.py): with
# this set to 1 in the environment of a Ray cluster whose nodes declare GPUs they do not have, the work
# Ray schedules on a GPU computes on the CPU: in a process Ray gave GPUs, `inference.pick_device`
# gives the CPU for --use-gpu and Ray Train's workers use the CPU with the gloo backend. The driver
# holds no GPU, so there the hook changes nothing: a driver that reached for CUDA still fails.
# Placement, resource checks and the driver's independence from CUDA are real; only the arithmetic moves.
SIMULATED_GPUS = "QADIST_SIMULATED_GPUS"


def simulated_gpu_cluster() -> bool:
    """Whether this is the simulated GPU cluster of the tests (its GPUs declared, not real)."""
    return os.environ.get(SIMULATED_GPUS) == "1"


def simulated_gpus() -> bool:
    """Whether this process holds simulated GPUs (a Ray worker given GPUs on the simulated cluster),
    so its GPU work computes on the CPU."""
    if not simulated_gpu_cluster():
        return False
    import ray

    return ray.is_initialized() and bool(ray.get_gpu_ids())


_started: list[bool] = []  # whether this process started the Ray it uses (and so ends it)


def ensure_ray(min_cpus: int = 0, threads: int | None = None, dedicated: bool = False):
    """Start or join Ray; returns the `ray` module. `threads`: torch threads of each worker (Ray
    gives a 1-CPU worker one), for an embedded Ray whose few workers do all the work. `dedicated`:
    the machine is the run's (the demo): workers at normal priority, Ray Train polling faster."""
    import ray

    if not ray.is_initialized():
        env = dict(WORKER_ENV)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        address = os.environ.get("RAY_ADDRESS")
        with console.ray_init_output():
            _init(ray, address, min_cpus, env, dedicated)
        _started.append(True)
    console.route_ray_output()
    return ray


def _init(ray, address: str | None, min_cpus: int, env: dict[str, str], dedicated: bool) -> None:
    if address:
        # A submitted job's runtime env is the job's (`ray job submit --runtime-env`): adding ours would
        # conflict with it; qadist's workers set what they need themselves (TOKENIZERS_PARALLELISM).
        ray.init(address=address)
        return
    if dedicated:
        # Embedded, the workers do all of the run's work: at Ray's default niceness (15) they would
        # wait behind every other process. One node, no spot instances: Ray Train's controller polls
        # every 0.5 s instead of 2 s and starts no preemption watcher (each training run starts ~3 s sooner).
        os.environ.setdefault("RAY_worker_niceness", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, min_cpus),
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": env},
    )


def release_ray() -> None:
    """End the Ray this process started (a command's embedded or joined Ray), so that nothing of it
    outlives the command (an embedded Ray's workers that do not exit are killed: `reap`); a Ray
    started by someone else (a test session, a notebook) stays."""
    if _started:
        import ray

        _started.clear()
        workers = embedded_workers()
        ray.shutdown()
        if killed := reap(workers):
            log.info("killed %d Ray worker processes stuck in their exit after ray.shutdown(): %s", len(killed), killed)


REAP_GRACE_S = 5.0  # a worker whose raylet has ended exits within about half a second


def embedded_workers() -> list:
    """The worker processes of the Ray this process started on this machine (its raylet's
    descendants); none for a joined cluster, whose raylet is not this process's child."""
    import psutil

    workers = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "raylet":
                workers += child.children(recursive=True)
    return workers


def reap(processes: list, grace_s: float = REAP_GRACE_S) -> list[int]:
    """Kill those of `processes` still running `grace_s` after their Ray ended; their pids.

    Ray 2.60's core worker can deadlock in its exit handler once its raylet is gone (seen in a
    TrainController: ~CoreWorkerProcessImpl -> asio shutdown -> ~Publisher, waiting on a lock for
    good), and the process (~400 MB) would outlive the command that started it."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return [process.pid for process in alive]
