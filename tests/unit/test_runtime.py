"""`qadist.runtime.release_ray`: nothing of a command's embedded Ray outlives the command, also a
worker stuck in its exit (Ray 2.60's core worker can deadlock there once its raylet is gone)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from qadist.runtime import reap


def test_reap_kills_what_outlives_the_grace_and_waits_for_the_rest():
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed = reap([psutil.Process(quick.pid), psutil.Process(stuck.pid)], grace_s=2.0)
    assert killed == [stuck.pid]
    assert quick.wait(timeout=5) == 0  # left to exit by itself, not killed
    assert stuck.wait(timeout=5) == -9


def test_reap_of_nothing_returns_at_once():
    assert reap([], grace_s=60.0) == []


EMBEDDED = textwrap.dedent(
    """
    import atexit, os, time
    from qadist.runtime import embedded_workers, ensure_ray, release_ray

    ray = ensure_ray()

    @ray.remote
    class Held:
        def pid(self):
            return os.getpid()

        def leave(self):
            atexit.register(time.sleep, 600)  # an exit that does not end, as Ray's core worker's can
            ray.actor.exit_actor()

    held = Held.remote()
    pid = ray.get(held.pid.remote())
    assert pid in [w.pid for w in embedded_workers()]
    held.leave.remote()
    time.sleep(3)  # the raylet lets the worker go: ray.shutdown() alone leaves it running (600 s)
    release_ray()
    print("PID", pid)
    """
)


@pytest.mark.slow  # starts and ends a Ray of its own (about 15 s on 2 cores)
def test_a_worker_stuck_in_its_exit_does_not_outlive_the_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDED],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    pid = int(proc.stdout.split("PID ")[1].split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
