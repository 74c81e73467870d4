"""`GET /metrics`: the service's figures in Prometheus text format, summed over its replicas.

Each replica counts (`Figures`): the ingress replica the requests by path and status, their latency
histogram and errors (a 503 for a replica that died included); each model replica its question-log
rows written / dropped / failed. Each pushes its cumulative counts (`Pusher`) to one small named Ray
actor per application (`Collector`, no CPU) every second and before rendering. `/metrics`,
whichever replica it reaches, renders the sum over every replica that ever reported (a replaced
replica's last counts stay in: counters never go down). Requests the proxy turns away itself (503
when every queue is full) never reach a replica and are not counted here; Ray Serve's own metrics
(`ray_serve_*`, on Ray's metrics port) have them.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Figures:
    """One replica's counts (thread-safe: the request path and the log writer both touch them)."""

    def __init__(self, replica: str):
        self.replica = replica
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (path, status) -> count
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.errors = 0
        self.retried = 0  # requests sent again because the replica answering them died
        self.log = {"written": 0, "dropped": 0, "failed": 0}

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (path, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.buckets[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
            self.latency_sum += seconds
            if status >= 500:
                self.errors += 1

    def retry(self) -> None:
        with self.lock:
            self.retried += 1

    def snapshot(self, log_counts: dict[str, int] | None) -> dict[str, Any]:
        with self.lock:
            if log_counts:
                self.log = {k: log_counts.get(k, 0) for k in self.log}
            return {
                "requests": [[p, s, n] for (p, s), n in self.requests.items()],
                "buckets": list(self.buckets),
                "latency_sum": self.latency_sum,
                "errors": self.errors,
                "retried": self.retried,
                "log": dict(self.log),
            }


@ray.remote(num_cpus=0, max_restarts=-1)
class Collector:
    """Each replica's latest cumulative snapshot; `render` sums them."""

    def __init__(self):
        self.snapshots: dict[str, dict] = {}

    def report(self, replica: str, snapshot: dict) -> None:
        self.snapshots[replica] = snapshot

    def render(self) -> bytes:
        return render(list(self.snapshots.values()))


def collector(app: str) -> Any:
    """The application's collector actor (created by the first replica that asks)."""
    return Collector.options(
        name=f"qadist-metrics-{app}", namespace="serve", get_if_exists=True, lifetime="detached"
    ).remote()


class Pusher:
    """A replica's `figures` (plus its question log's counts, `log_counts()`, or None) pushed to the
    application's collector; `render` gives the sum over the application's replicas."""

    def __init__(self, figures: Figures, log_counts: Any):
        self.figures, self.log_counts, self.collector = figures, log_counts, None

    def snapshot(self) -> dict[str, Any]:
        return self.figures.snapshot(self.log_counts())

    def push(self) -> None:
        try:
            if self.collector is None:
                from ray import serve

                self.collector = collector(serve.get_replica_context().app_name)
            self.collector.report.remote(self.figures.replica, self.snapshot())
        except Exception:  # noqa: BLE001 (metrics never fail the replica)
            pass

    def every_second(self, stopping: threading.Event) -> None:
        while not stopping.wait(1.0):
            self.push()

    async def render(self) -> bytes:
        self.push()
        try:
            return await self.collector.render.remote()
        except Exception:  # noqa: BLE001 (no collector: this replica's own figures)
            return render([self.snapshot()])


def render(snapshots: list[dict]) -> bytes:
    """Snapshots -> Prometheus text exposition (prometheus_client's own format writer)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    requests: dict[tuple[str, str], int] = {}
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    latency_sum, errors, retried = 0.0, 0, 0
    log = {"written": 0, "dropped": 0, "failed": 0}
    for snap in snapshots:
        for path, status, n in snap["requests"]:
            requests[(path, status)] = requests.get((path, status), 0) + n
        buckets = [a + b for a, b in zip(buckets, snap["buckets"])]
        latency_sum += snap["latency_sum"]
        errors += snap["errors"]
        retried += snap.get("retried", 0)
        for k in log:
            log[k] += snap["log"].get(k, 0)

    class Families:
        def collect(self):
            c = CounterMetricFamily(
                "qadist_requests", "HTTP requests answered by the replicas", labels=["path", "code"]
            )
            for (path, status), n in sorted(requests.items()):
                c.add_metric([path, status], n)
            yield c
            cumulative, acc = [], 0
            for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], buckets):
                acc += n
                cumulative.append((bound, acc))
            h = HistogramMetricFamily("qadist_request_latency_seconds", "Time in the replica per request")
            h.add_metric([], cumulative, latency_sum)
            yield h
            yield CounterMetricFamily("qadist_request_errors", "Requests answered with a 5xx", value=errors)
            yield CounterMetricFamily(
                "qadist_requests_retried", "Requests sent to another replica because theirs died", value=retried
            )
            for key, text in (
                ("written", "Question-log rows written to part files"),
                ("dropped", "Question-log rows dropped because the buffer was full"),
                ("failed", "Question-log rows lost to part writes that failed"),
            ):
                yield CounterMetricFamily(f"qadist_question_log_rows_{key}", text, value=log[key])

    registry = CollectorRegistry()
    registry.register(Families())
    return generate_latest(registry)
