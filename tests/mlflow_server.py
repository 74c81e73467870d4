"""A real `mlflow server` on 127.0.0.1 for the slow tests, run from its own virtual environment.

The full `mlflow` package pins `pyarrow<26` and qadist needs pyarrow 26, so the server never goes
into the project's environment: it lives in a venv created once under
`$QADIST_TEST_MLFLOW_HOME` (default `~/.cache/qadist-test-mlflow`). The project's side talks to it
with `mlflow-skinny` (the `mlflow` extra), which pins no pyarrow.

    python tests/mlflow_server.py            # create the venv if missing (needs the package index once)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOME = Path(os.environ.get("QADIST_TEST_MLFLOW_HOME", Path.home() / ".cache" / "qadist-test-mlflow"))
VENV = HOME / "venv"
MLFLOW = "mlflow>=3,<4"


def server_binary() -> Path:
    return VENV / "bin" / "mlflow"


def ensure_venv() -> Path:
    """The venv's `mlflow` executable; the venv is created (python -m venv; pip install mlflow) if missing."""
    exe = server_binary()
    if exe.exists():
        return exe
    HOME.mkdir(parents=True, exist_ok=True)
    # `bin/mlflow` appears only when the install finished: a broken half-made venv is made again.
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", MLFLOW], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """Start `mlflow server` (sqlite backend, artifacts served under `root`) on a free loopback port;
    (process, tracking URI) once it answers /health."""
    exe = ensure_venv()
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"mlflow server did not start: see {root / 'server.log'}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server by its process group (it was started in a session of its own)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    print(ensure_venv())
