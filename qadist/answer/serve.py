"""`qadist serve`: a QA model behind HTTP, as a Ray Serve application: a thin FastAPI ingress
(`answer/ingress.py`: validation, the HTTP API, 503 for a replica that died) calling the model
replicas (`QAService`, here) through a DeploymentHandle.

    POST /answer        {"question": str, "context": str}  -> {"answer", "start", "end", "score",
                        "no_answer_probability"} (+ "doc_id" when the service has documents and the
                        body has no context)
    POST /answer/batch  [{...}, ...] -> [{...}, ...]
    GET  /healthz       200 with what is served, once the replica has loaded its model
    GET  /metrics       Prometheus text: requests, latency, errors, question-log rows (answer/metrics.py)
    GET  /docs          the OpenAPI page

Requests are batched by `serve.batch` (up to --max-batch-size questions, waiting at most
--batch-wait-ms), windowed, length-sorted and answered as `qadist predict` answers them. Bad bodies
get 4xx with a `detail` naming the field (400 malformed JSON, 422 missing / wrong / empty / not
Unicode, 413 over the context or batch limit) from the ingress; a full queue gets 503
(`max_ongoing_requests` per replica, `max_queued_requests` in front). A request whose replica dies is
sent once more to another replica, else answered 503 (retryable); Serve replaces the dead replica.
Every answer names the `model_version` that gave it and its `request_id`.

--log-questions URI: each answered question is queued for the question log (qadist/question_log.py),
written by a thread off the request path. --registry URI: the replica serves the registry's current
version and polls the pointer every --registry-poll-s; a new version is loaded beside the old one and
swapped in between batches (a batch is answered by one version); one that fails to load leaves the
old one serving, and /healthz says why. On a cluster, deploy `jobs/configs/serve-deploy.yaml` with
`serve deploy` (`app_builder`).
"""

import asyncio
import logging
import threading
import time
from typing import Any

from ray import serve

from qadist.answer.ingress import QAIngress
from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import ServeConfig

log = logging.getLogger(__name__)


@serve.deployment(name="QAService")
class QAService:
    """A model replica: batches the questions the ingress (`answer/ingress.py`) sends, answers them
    with one model version per batch, logs them, follows the registry."""

    def __init__(self, settings: dict[str, Any]):
        import torch

        from qadist.answer.metrics import Figures, Pusher
        from qadist.question_log import QuestionLog, replica_tag

        self.cfg = ServeConfig(**settings)
        torch.set_num_threads(max(1, round(self.cfg.num_cpus_per_replica)))  # ONNX Runtime follows torch's count
        self.tag = replica_tag()
        self.registry, self.registry_error, self.refused = None, None, None
        if self.cfg.registry:
            from qadist.registry import open_registry

            self.registry = open_registry(self.cfg.registry)
            pointer = self.registry.current()
            if pointer is None:
                raise RuntimeError(f"{self.cfg.registry}: no current version yet; run qadist promote first")
            self.load_newest(pointer)
        else:
            from qadist.answer.service import model_version_of

            self.load(model_version_of(self.cfg.model), self.cfg.model)
        self.qlog = None
        if self.cfg.log_questions:
            self.qlog = QuestionLog(
                self.cfg.log_questions, self.cfg.log_roll_rows, self.cfg.log_roll_s, self.cfg.log_buffer_rows, self.tag
            )
        self.pusher = Pusher(Figures(self.tag), lambda: self.qlog.counts() if self.qlog else None)
        self.batched.set_max_batch_size(self.cfg.max_batch_size)
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000)
        self.stopping = threading.Event()
        threading.Thread(target=self.background, name="qadist-replica", daemon=True).start()

    def load(self, version: str, model: str) -> None:
        """Load `model` as `version` and swap it in (the batch running keeps the one it took)."""
        from qadist.answer.service import Answerer, describe

        started = time.perf_counter()
        answerer = Answerer(self.cfg.model_copy(update={"model": model, "registry": None}))
        about = {**describe(answerer), "model_version": version, "load_s": round(time.perf_counter() - started, 2)}
        self.current = (answerer, version)  # one assignment: a batch sees the old pair or the new
        self.about = about
        log.info("serving model version %s (%s), loaded in %.2fs", version, model, about["load_s"])

    def load_newest(self, pointer: dict[str, Any]) -> None:
        """Serve `current`; when it cannot load, the newest of `previous` that can (a replica that
        starts after a bad promotion, e.g. one replacing a dead replica, serves what the others
        still serve instead of failing to start for ever), saying why on /healthz."""
        tried = [str(pointer["version"]), *map(str, reversed(pointer.get("previous", [])))]
        errors = []
        for version in tried:
            model = pointer["model"] if version == tried[0] else self.registry.model_uri(int(version))
            try:
                self.load(version, model)
                break
            except Exception as e:  # noqa: BLE001 (a bad version must not keep the replica from starting)
                errors.append(f"version {version} failed to load: {e}")
                log.warning("registry: %s", errors[-1])
        else:
            raise RuntimeError(f"{self.cfg.registry}: no version loads ({'; '.join(errors)})")
        if errors:
            self.refused = tried[0]
            self.registry_error = f"{errors[0]}, serving {self.current[1]}"

    def background(self) -> None:
        """Every second: counts to the metrics collector; every --registry-poll-s: a new current?"""
        next_poll = time.monotonic() + self.cfg.registry_poll_s
        while not self.stopping.wait(1.0):
            self.pusher.push()
            if self.registry is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.cfg.registry_poll_s
                self.follow_registry()

    def follow_registry(self) -> None:
        try:
            pointer = self.registry.current()
        except Exception as e:  # noqa: BLE001 (storage unreachable: keep serving, say why)
            self.registry_error = f"reading {self.cfg.registry}: {e}"
            return
        version = str(pointer["version"]) if pointer else None
        if version is None or version == self.current[1] or version == self.refused:
            return
        try:
            self.load(version, pointer["model"])
            self.registry_error = self.refused = None
        except Exception as e:  # noqa: BLE001 (a bad version must not take the service down)
            self.refused = version
            self.registry_error = f"version {version} failed to load, still serving {self.current[1]}: {e}"
            log.warning("registry: %s", self.registry_error)

    def __del__(self):
        """Serve calls this on a graceful shutdown: the question log writes what it holds."""
        if getattr(self, "stopping", None) is not None:
            self.stopping.set()
        if getattr(self, "qlog", None) is not None:
            counts = self.qlog.close()
            log.info("question log closed: %s", counts)
            self.pusher.push()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def batched(self, items: list[tuple[str, str | None]]) -> list[dict]:
        answerer, version = self.current  # the whole batch is answered by one version
        # In a thread: the event loop keeps taking requests (and forming the next batch) meanwhile.
        answers = await asyncio.to_thread(answerer.answer, items)
        return [{**a, "model_version": version} for a in answers]

    async def reply(self, question: str, context: str | None, request_id: str) -> dict:
        from qadist.question_log import log_row

        out = {**await self.batched((question, context)), "request_id": request_id}
        if self.qlog is not None:
            self.qlog.append(log_row(request_id, question, context, out, out["model_version"], self.cfg.log_contexts))
        return out

    async def answer(self, items: list[tuple[str, str | None]], request_ids: list[str]) -> list[dict]:
        """(question, context) items, validated by the ingress, and their request ids -> replies."""
        return list(await asyncio.gather(*(self.reply(q, c, i) for (q, c), i in zip(items, request_ids))))

    async def health(self) -> dict:
        return {**self.about, **({"registry_error": self.registry_error} if self.registry_error else {})}


def build_app(cfg: ServeConfig) -> Any:
    """The Serve application for `cfg`: replicas, their resources and the bounded queues."""
    resources: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_replica}
    if cfg.num_gpus_per_replica:
        resources["num_gpus"] = cfg.num_gpus_per_replica
    if cfg.resources_per_replica:
        resources["resources"] = dict(cfg.resources_per_replica)
    settings = cfg.model_dump(mode="json")
    model = QAService.options(
        num_replicas=cfg.replicas,
        ray_actor_options=resources,
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        health_check_period_s=2,
    ).bind(settings)
    # One ingress, no CPU of its own: it only validates and awaits. It admits whatever the model
    # replicas can hold (running + queued), so the model deployment's bounds decide the 503s.
    admits = cfg.replicas * cfg.max_ongoing_requests + cfg.max_queued_requests + 8
    return QAIngress.options(
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=admits,
        max_queued_requests=cfg.max_queued_requests,
        health_check_period_s=2,
    ).bind(settings, model)


def app_builder(args: dict[str, Any]) -> Any:
    """`serve deploy` / `serve run` entry (jobs/configs/serve-deploy.yaml): `args` are ServeConfig keys."""
    from qadist.config import load_config

    return build_app(load_config(ServeConfig, "serve", None, args))


def wait_ready(url: str, timeout_s: float = 600.0) -> dict:
    """Poll /healthz until the service answers 200 (replicas loaded)."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_ray(cfg: ServeConfig) -> None:
    from qadist.runtime import ensure_ray

    ensure_ray(min_cpus=int(cfg.replicas * cfg.num_cpus_per_replica) + 1, threads=max(1, int(cfg.num_cpus_per_replica)))


def demands(cfg: ServeConfig) -> list[Demand]:
    """What the replicas ask Ray for, all at once."""
    each = bundle(cfg.num_cpus_per_replica, cfg.num_gpus_per_replica, cfg.resources_per_replica)
    fix = "lower --replicas or --num-gpus-per-replica (fractions share a GPU), or add such nodes"
    return [Demand(f"{cfg.replicas} replica(s)", each, cfg.replicas, fix)]


def check_replicas_fit(cfg: ServeConfig) -> None:
    """Exit 2 now when the replicas can never all start (serve.run would wait for them forever)."""
    import ray

    check_capacity(ray, "serve", demands(cfg))


def start(cfg: ServeConfig) -> str:
    """Start Serve on the Ray that `start_ray` started or joined and deploy the app; returns the base
    URL when it is ready."""
    check_replicas_fit(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name="qadist", route_prefix="/")
    url = f"http://{cfg.host if cfg.host != '0.0.0.0' else '127.0.0.1'}:{cfg.port}"
    wait_ready(url)
    return url


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_serve(cfg: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), then shut Serve down."""
    import signal

    from qadist import console

    what = cfg.model or f"registry {cfg.registry}"
    console.banner(
        f"qadist serve: {what} ({cfg.replicas} replica{'s' if cfg.replicas > 1 else ''}, batches of up to "
        f"{cfg.max_batch_size}{f', documents {cfg.documents}' if cfg.documents else ''}) on {cfg.host}:{cfg.port}",
        log,
    )
    start_ray(cfg)
    # After Ray starts (its own SIGTERM handler aborts the process); SIGINT too: a shell starts
    # background jobs ignoring it.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        url = start(cfg)
        console.summary(
            f"qadist serve: ready at {url} (POST /answer, POST /answer/batch, GET /healthz, docs at {url}/docs); "
            "Ctrl-C stops it",
            log,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("qadist serve: stopping")
    finally:
        serve.shutdown()  # replicas stop gracefully: each question log writes what it holds
        kill_collector("qadist")


def kill_collector(app_name: str) -> None:
    import ray

    try:
        ray.kill(ray.get_actor(f"qadist-metrics-{app_name}", namespace="serve"))
    except ValueError:
        pass
