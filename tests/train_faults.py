"""Fault-test helpers for training runs (distill, finetune, pretrain) started as CLI processes:
their process trees, Ray Train's committed checkpoints, and the check that a run resumed once,
from the latest committed checkpoint, with steps only going forward.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from qadist.train.checkpoint import STATE_FILE


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc): the CLI run, its Ray processes and workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def start_cli(config: Path, log: Path, stage: str = "distill") -> subprocess.Popen:
    env = {**os.environ, "QADIST_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)  # its own embedded Ray, not the test session's
    return subprocess.Popen(
        [sys.executable, "-m", "qadist.cli", stage, "--config", str(config)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a CLI run we started and everything below it (its embedded Ray included)."""
    pids = descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def checkpoints(run: Path, stage: str = "distill") -> list[Path]:
    return sorted(p for p in (run / stage).glob("checkpoint_*") if (p / STATE_FILE).exists())


def committed_step(run: Path, stage: str = "distill") -> int:
    """The step of the latest checkpoint Ray Train has committed (its snapshot), 0 if none.

    A checkpoint folder in storage is not a checkpoint until the controller records the report.
    """
    try:
        snapshot = json.loads((run / stage / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["train/step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def committed_steps(run: Path, stage: str = "distill") -> list[int]:
    """The step of every checkpoint Ray Train committed, in report order (its snapshot)."""
    snapshot = json.loads((run / stage / "checkpoint_manager_snapshot.json").read_text())
    return [int(r["metrics"]["train/step"]) for r in snapshot["checkpoint_results"]]


def folder_steps(run: Path, stage: str = "distill") -> list[int]:
    """The step of every checkpoint folder in storage, oldest first (Ray names them by time)."""
    return [int(torch.load(p / STATE_FILE, weights_only=True)["step"]) for p in checkpoints(run, stage)]


def check_resumed(run: Path, log: Path, committed: int, before: list[int], stage: str = "distill") -> None:
    """Resumed once, from the latest committed checkpoint at the fault or later, and steps only went forward.

    `before`: the committed steps when the fault was injected. Committed steps must rise strictly
    (a restart from step 0 would repeat them); checkpoint folders whose reports the fault cut off
    (never committed) may be redone once, at the same steps, never an earlier one.
    """
    final = json.loads((run / "final" / "qadist_config.json").read_text())
    last = torch.load(checkpoints(run, stage)[-1] / STATE_FILE, weights_only=True)
    total = last["plan"]["total_steps"]
    steps, folders = committed_steps(run, stage), folder_steps(run, stage)
    print(
        f"\nfault after committed checkpoints at steps {before}; resumed at step(s) {last['resumed_at']}; "
        f"committed steps {steps}; checkpoint folders by time {folders}; "
        f"finished at step {final['step']} of {total} planned"
    )
    assert final["step"] == last["step"] == total
    assert len(last["resumed_at"]) == 1
    resumed = last["resumed_at"][0]
    assert committed <= resumed < total and resumed % 5 == 0, log.read_text()[-3000:]
    assert resumed in steps and steps[: len(before)] == before, (steps, before)
    assert all(a < b for a, b in zip(steps, steps[1:])), steps
    # Checkpoint folders by time: the first run's, then (after one restart) the rerun's from the
    # resumed step on. Folders the fault left uncommitted (one, or several when reports lag behind
    # the writes on a busy machine) are redone once each, never one at or before the resumed step.
    restarts = [i for i in range(1, len(folders)) if folders[i] <= folders[i - 1]]
    assert len(restarts) <= 1, folders
    first, second = (folders[: restarts[0]], folders[restarts[0] :]) if restarts else (folders, [])
    for part in (first, second):
        assert all(a < b for a, b in zip(part, part[1:])), folders
    assert all(f > resumed for f in second), (folders, resumed)


def kill_a_worker_and_check_resume(config: Path, run: Path, log: Path, stage: str = "distill") -> None:
    """Start the stage, SIGKILL one of its two Ray Train workers after two committed checkpoints,
    let the run finish, and check it resumed once from the latest committed checkpoint."""
    proc = start_cli(config, log, stage)
    try:
        wait_for(lambda: committed_step(run, stage) >= 10 or proc.poll() is not None, 300, "two committed checkpoints")
        assert proc.poll() is None, log.read_text()[-3000:]
        committed, before = committed_step(run, stage), committed_steps(run, stage)
        workers = [p for p in descendants(proc.pid) if "RayTrainWorker" in cmdline(p)]
        assert len(workers) == 2, [cmdline(p) for p in descendants(proc.pid)]
        os.kill(workers[-1], signal.SIGKILL)
        assert proc.wait(timeout=480) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    check_resumed(run, log, committed, before, stage)
