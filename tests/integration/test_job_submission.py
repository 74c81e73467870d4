"""A real Ray head with its dashboard (`ray start --head --block`, 127.0.0.1 only, a temporary
folder), `jobs/label.py` submitted through the job submission client with a `working_dir`, waited
for until SUCCEEDED, its shards and manifest checked. The head is stopped by its pid at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch):
    """`ray start --head --block` in its own process group; yields the dashboard URL.

    Token authentication on (Ray's default for new clusters): the head and this client both use
    the local token in ~/.ray, as a user's `ray start` / `ray job submit` would.
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    temp = tempfile.mkdtemp(prefix="qr-")  # short: Ray's socket paths must fit in 107 bytes
    gcs_port, dash_port = free_port(), free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS")
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            "--include-dashboard=true",
            "--num-cpus=4",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{dash_port}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception as err:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not come up (exit {head.poll()})") from err
                time.sleep(2)
        yield url
    finally:
        # Stop what we started, by its pid: SIGTERM lets `ray start --block` stop its own daemons.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_label_job_submitted_to_a_real_head_succeeds(ray_head, tmp_path, squad_pairs, tiny_models):
    from ray.job_submission import JobStatus, JobSubmissionClient

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(json.dumps({k: v for k, v in p.items() if k != "answers"}) for p in squad_pairs[:300]) + "\n"
    )
    out = tmp_path / "labels"
    client = JobSubmissionClient(ray_head)
    job = client.submit_job(
        entrypoint=(
            f"python jobs/label.py --pairs {pairs} --out {out} --teacher {tiny_models['teacher_a']} "
            f"--teacher {tiny_models['teacher_b']} --rows-per-shard 100 --max-seq-len 128 --doc-stride 32"
        ),
        runtime_env={
            "working_dir": str(REPO),
            "excludes": [".git", "out", "qadist-demo", "*.egg-info", ".hypothesis"],
            "env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
        },
    )
    deadline = time.monotonic() + LIMIT_S
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job still {status} after {LIMIT_S}s:\n{client.get_job_logs(job)[-3000:]}")
        time.sleep(3)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["pairs_in"] == 300 == manifest["counts"]["pairs_labeled"]
    assert len(manifest["shards"]) == 3
    assert sorted(p.name for p in (out / "shards").glob("*.parquet")) == sorted(
        Path(s["path"]).name for s in manifest["shards"]
    )
    print(f"job {job}: {status}; {manifest['counts']}")
