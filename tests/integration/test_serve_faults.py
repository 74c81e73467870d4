"""Faults under load (slow): a real Serve app on 127.0.0.1 with 2 model replicas, a registry and a
question log, driven by a closed loop of concurrent clients (bounded in count and time). Prints the
figures (docs/loop.md quotes them); asserts behaviour, not timings.

- a version that cannot load, promoted mid-load: 0 failed requests, the old version keeps serving,
  /healthz says why;
- a model replica SIGKILLed mid-load (its pid from Ray's state API, that pid only): no 500, clients
  that retry once see no failure, the time until 2 replicas run again; and its question log: the
  rows lost are rows answered within the last roll window before the kill, none is duplicated, and
  every row answered after the kill is in the log after a clean stop.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from test_loop import logged_rows
from test_serve import WINDOWS, free_port, get

from qadist.registry import ObjectRegistry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

APP, ROLL_S = "faults", 2.0
BODY = {"question": "Which mount does the camera use?", "context": "The camera uses the RF mount and a 24 MP sensor."}
# A long context (many windows): each request stays in its replica long enough that a kill finds some in flight.
LONG = {
    **BODY,
    "context": " ".join(["The camera uses the RF mount and a 24 MP sensor; its battery lasts 450 shots."] * 60),
}


def ask(url: str, body: dict = BODY) -> tuple[int, dict, dict]:
    """(status, reply, headers); a connection failure is status -1."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, {}, dict(e.headers)
    except OSError:
        return -1, {}, {}


class Load:
    """`clients` threads asking back to back until `stop()` (or `max_requests`, or `limit_s`). A
    client whose request fails retries it once, after the reply's Retry-After (at most 2 s)."""

    def __init__(self, url: str, clients: int = 4, body: dict = BODY, max_requests: int = 4000, limit_s: float = 300):
        self.url, self.body, self.max_requests, self.deadline = url, body, max_requests, time.monotonic() + limit_s
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.first: dict[int, int] = {}  # status of each request's first attempt -> count
        self.failed_after_retry: list[int] = []
        self.answered: list[tuple[float, dict]] = []  # (when, reply) of every 200
        self.sent = 0
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            status, reply, headers = ask(self.url, self.body)
            with self.lock:
                self.first[status] = self.first.get(status, 0) + 1
            if status != 200:
                time.sleep(min(2.0, float(headers.get("Retry-After", headers.get("retry-after", 0)) or 0)))
                status, reply, _ = ask(self.url, self.body)
                if status != 200:
                    with self.lock:
                        self.failed_after_retry.append(status)
                    continue
            with self.lock:
                self.answered.append((time.monotonic(), reply))

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()


def model_replicas() -> dict[str, int]:
    """Actor id -> pid of the app's live QAService replicas, from Ray's state API (the dashboard's
    server) or, when this Ray runs without a dashboard, the GCS's actor table it reads."""
    import ray

    try:
        from ray.util.state import list_actors

        rows = [(a.class_name, a.actor_id, a.pid) for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)]
    except Exception:  # noqa: BLE001 (no dashboard in the test session's Ray)
        actors = ray._private.state.actors()
        rows = [(a["ActorClassName"], k, a["Pid"]) for k, a in actors.items() if a["State"] == "ALIVE"]
    return {actor: pid for cls, actor, pid in rows if f":{APP}:" in cls and cls.endswith("QAService")}


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.deployments["QAService"].replica_states.get("RUNNING", 0) if app else 0


@pytest.fixture(scope="module")
def faults(tiny_models, tmp_path_factory):
    from ray import serve

    from qadist.answer.serve import build_app, kill_collector, wait_ready
    from qadist.config import ServeConfig

    root = tmp_path_factory.mktemp("faults")
    registry = ObjectRegistry(str(root / "registry"))
    registry.move(None, registry.publish(tiny_models["teacher_a"], {"verdict": "seed"}), "seed")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=registry.uri, registry_poll_s=0.5, log_questions=str(root / "log"), log_roll_s=ROLL_S, replicas=2,
        num_cpus_per_replica=0.25, **WINDOWS,
    )  # fmt: skip
    serve.run(build_app(cfg), name=APP, route_prefix=f"/{APP}")
    base = f"http://127.0.0.1:{port}/{APP}"
    wait_ready(base, timeout_s=180)
    yield {"base": base, "registry": registry, "log": str(root / "log"), "root": root}
    kill_collector(APP)
    serve.shutdown()


def test_a_version_that_cannot_load_promoted_mid_load(faults):
    reg, base = faults["registry"], faults["base"]
    broken = faults["root"] / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    load = Load(f"{base}/answer")
    time.sleep(3)
    reg.move(1, reg.publish(str(broken), {"verdict": "forced, for the test"}), "a version that cannot load")
    moved, health = time.monotonic(), {}
    while time.monotonic() - moved < 60:
        health = get(f"{base}/healthz")[1]
        if "registry_error" in health:
            break
        time.sleep(0.3)
    said_s = time.monotonic() - moved
    time.sleep(3)
    load.stop()
    versions = {}
    for _, reply in load.answered:
        versions[reply["model_version"]] = versions.get(reply["model_version"], 0) + 1
    failed = sum(n for s, n in load.first.items() if s != 200)
    print(f"\n[faults] a version that cannot load, promoted mid-load (4 clients): {load.sent} sent, "
          f"{len(load.answered)} answered, {failed} failed, versions {versions}; /healthz said why {said_s:.1f}s "
          f"after the pointer moved (poll 0.5s): {health.get('registry_error', '')[:90]}")  # fmt: skip
    assert failed == 0 and not load.failed_after_retry
    assert versions == {"1": len(load.answered)}
    assert "version 2 failed to load, still serving 1" in health["registry_error"], health


def test_a_replica_sigkilled_under_load(faults):
    """503 (never 500) for what the ingress could not re-send, no failure for a client that retries
    once, the time until 2 replicas run again; the killed replica's question log loses at most its
    last roll window, nothing is duplicated, and a clean stop writes everything else."""
    from ray import serve

    from qadist.answer.serve import kill_collector

    base = faults["base"]
    before = model_replicas()
    assert len(before) == 2 and running_replicas() == 2, before
    victim_actor, victim = sorted(before.items())[0]
    load = Load(f"{base}/answer", clients=6, body=LONG)
    time.sleep(4)
    os.kill(victim, signal.SIGKILL)  # that replica's process only
    killed = time.monotonic()
    whole_s = None
    while time.monotonic() - killed < 240:
        alive = model_replicas()
        if len(alive) == 2 and victim_actor not in alive and running_replicas() == 2:
            whole_s = time.monotonic() - killed
            break
        time.sleep(0.25)
    time.sleep(3)  # the whole service under load a little longer
    load.stop()
    from test_loop import metric, metrics_text

    retried = metric(metrics_text(base), "qadist_requests_retried_total")
    codes = dict(sorted(load.first.items()))
    print(f"\n[faults] replica pid {victim} SIGKILLed under 6 closed-loop clients (long contexts), 2 replicas: "
          f"{load.sent} sent, first attempts {codes}, re-sent by the ingress {retried:.0f}, failed after one client "
          f"retry {len(load.failed_after_retry)}; whole again (2 replicas running) {whole_s and round(whole_s, 1)}s "
          f"after the kill")  # fmt: skip
    assert codes.get(500, 0) == 0 and set(codes) <= {200, 503}
    assert not load.failed_after_retry
    assert whole_s is not None
    # current still names the version that cannot load: the replacement serves what the others serve
    assert {reply["model_version"] for _, reply in load.answered} == {"1"}

    serve.delete(APP)  # a clean stop: the surviving and new replicas write everything they hold
    kill_collector(APP)
    rows = logged_rows(faults["log"])
    ids = [r["request_id"] for r in rows]
    answered = {reply["request_id"]: when for when, reply in load.answered}
    lost = {i: answered[i] for i in set(answered) - set(ids)}
    window = [i for i, when in answered.items() if killed - ROLL_S - 1.0 <= when <= killed + 1.0]
    print(f"[faults] question log: {len(answered)} answered, {len(set(ids) & set(answered))} of them logged, "
          f"{len(lost)} lost (answered within the roll window of {ROLL_S:.0f}s before the kill, by both "
          f"replicas: {len(window)}), {len(ids) - len(set(ids))} duplicated, rows answered after the kill "
          f"missing: {sum(when > killed + 1.0 for when in lost.values())}")  # fmt: skip
    assert len(ids) == len(set(ids))  # none duplicated
    assert set(lost) <= set(window)  # only the killed replica's last window; a clean stop lost nothing
