"""`qadist serve`: a QA model behind HTTP, as a Ray Serve application with a FastAPI ingress.

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
Unicode, 413 over the context or batch limit); a full queue gets 503 from Serve itself
(`max_ongoing_requests` per replica, `max_queued_requests` in front). Serve replaces a replica
that dies. Every answer names the `model_version` that gave it and its `request_id`.

--log-questions URI: each answered question is queued for the question log (qadist/question_log.py),
written by a thread off the request path. --registry URI: the replica serves the registry's current
version and polls the pointer every --registry-poll-s; a new version is loaded beside the old one and
swapped in between batches (a batch is answered by one version); one that fails to load leaves the
old one serving, and /healthz says why. On a cluster, deploy `jobs/configs/serve-deploy.yaml` with
`serve deploy` (`app_builder`).
"""

import asyncio
import logging
import sys
import threading
import time
import uuid
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

from qadist.capacity import Demand, bundle, check_capacity
from qadist.config import ServeConfig
from qadist.rows import lone_surrogate

log = logging.getLogger(__name__)


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="The question.")
    context: str | None = Field(
        None, min_length=1, description="The text to answer from; omit it when the service has --documents."
    )

    @field_validator("question", "context")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("must not be blank")
            at = lone_surrogate(value)
            if at is not None:
                raise ValueError(f"is not valid Unicode (a lone surrogate at character {at}); send UTF-8 text")
        return value


class Answer(BaseModel):
    answer: str = Field(description='The answer span ("" when the model abstains).')
    start: int = Field(description="Character offset of the answer in the context (-1 when abstaining).")
    end: int = Field(description="Character offset just past the answer (-1 when abstaining).")
    score: float = Field(description="The span's start + end logit (higher: surer; comparable within one model).")
    no_answer_probability: float = Field(description="sigmoid(null score - best span score).")
    doc_id: str | None = Field(None, description="The document answered from (only when looked up in --documents).")
    model_version: str = Field(description="The model version that gave this answer.")
    request_id: str = Field(description="This answer's id (the question log's request_id).")


app = FastAPI(
    title="qadist",
    description="Extractive question answering by a distilled student (qadist serve).",
    version="1",
)


FIGURES: Any = None  # this replica's counts (answer/metrics.py), set when the replica starts


@app.middleware("http")
async def _count(request: Request, call_next: Any) -> Any:
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        # Through sys.modules: Serve may ship this function to the replica by value, with a copy of globals.
        figures = getattr(sys.modules[__name__], "FIGURES", None)
        if figures is not None and not request.url.path.endswith("/metrics"):
            figures.observe(route_of(request.url.path), status, time.perf_counter() - started)


def route_of(path: str) -> str:
    """A request path -> its route, for the metrics' labels (unknown paths are one label, `other`)."""
    return next((r for r in ("/answer/batch", "/answer", "/healthz") if path.endswith(r)), "other")


@app.exception_handler(RequestValidationError)
async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable `detail` line naming the field; the errors under `errors` without the inputs
    (a body's lone surrogate cannot be written back as UTF-8)."""
    errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return JSONResponse(status_code=400, content={"detail": f"body: malformed JSON ({message})", "errors": errors})
    return JSONResponse(status_code=422, content={"detail": f"{where}: {message}", "errors": errors})


def check_limits(questions: list[Question], cfg: ServeConfig, has_documents: bool, prefix: str) -> None:
    """413 for a context over --max-context-chars, 422 for a missing context without documents."""
    for i, q in enumerate(questions):
        where = f"{prefix}{i}." if prefix else "body."
        if q.context is None and not has_documents:
            raise HTTPException(422, f"{where}context: required (this service has no --documents to look it up in)")
        if q.context is not None and len(q.context) > cfg.max_context_chars:
            raise HTTPException(
                413, f"{where}context: {len(q.context):,} characters, over the limit of {cfg.max_context_chars:,}"
            )


@serve.deployment(name="QAService")
@serve.ingress(app)
class QAService:
    def __init__(self, settings: dict[str, Any]):
        import torch

        from qadist.answer.metrics import Figures
        from qadist.question_log import QuestionLog, replica_tag

        self.cfg = ServeConfig(**settings)
        torch.set_num_threads(max(1, round(self.cfg.num_cpus_per_replica)))  # ONNX Runtime follows torch's count
        self.tag = replica_tag()
        self.figures = sys.modules[__name__].FIGURES = Figures(self.tag)
        self.registry, self.registry_error, self.refused = None, None, None
        if self.cfg.registry:
            from qadist.registry import open_registry

            self.registry = open_registry(self.cfg.registry)
            pointer = self.registry.current()
            if pointer is None:
                raise RuntimeError(f"{self.cfg.registry}: no current version yet; run qadist promote first")
            self.load(str(pointer["version"]), pointer["model"])
        else:
            from qadist.answer.service import model_version_of

            self.load(model_version_of(self.cfg.model), self.cfg.model)
        self.qlog = None
        if self.cfg.log_questions:
            self.qlog = QuestionLog(
                self.cfg.log_questions, self.cfg.log_roll_rows, self.cfg.log_roll_s, self.cfg.log_buffer_rows, self.tag
            )
        self.batched.set_max_batch_size(self.cfg.max_batch_size)
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000)
        self.stopping = threading.Event()
        self.collector = None
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

    def background(self) -> None:
        """Every second: counts to the metrics collector; every --registry-poll-s: a new current?"""
        next_poll = time.monotonic() + self.cfg.registry_poll_s
        while not self.stopping.wait(1.0):
            self.push_metrics()
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

    def push_metrics(self) -> None:
        try:
            if self.collector is None:
                from qadist.answer.metrics import collector

                self.collector = collector(serve.get_replica_context().app_name)
            self.collector.report.remote(self.tag, self.figures.snapshot(self.qlog.counts() if self.qlog else None))
        except Exception as e:  # noqa: BLE001 (metrics never fail the replica)
            log.debug("metrics push failed: %s", e)

    def __del__(self):
        """Serve calls this on a graceful shutdown: the question log writes what it holds."""
        if getattr(self, "stopping", None) is not None:
            self.stopping.set()
        if getattr(self, "qlog", None) is not None:
            counts = self.qlog.close()
            log.info("question log closed: %s", counts)
            self.push_metrics()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def batched(self, items: list[tuple[str, str | None]]) -> list[dict]:
        answerer, version = self.current  # the whole batch is answered by one version
        # In a thread: the event loop keeps taking requests (and forming the next batch) meanwhile.
        answers = await asyncio.to_thread(answerer.answer, items)
        return [{**a, "model_version": version} for a in answers]

    async def reply(self, q: Question) -> dict:
        from qadist.question_log import log_row

        out = {**await self.batched((q.question, q.context)), "request_id": uuid.uuid4().hex}
        if self.qlog is not None:
            self.qlog.append(
                log_row(out["request_id"], q.question, q.context, out, out["model_version"], self.cfg.log_contexts)
            )
        return out

    @app.post("/answer", response_model=Answer, response_model_exclude_none=True)
    async def answer(self, body: Question = Body()) -> dict:
        check_limits([body], self.cfg, self.current[0].index is not None, "")
        return await self.reply(body)

    @app.post("/answer/batch", response_model=list[Answer], response_model_exclude_none=True)
    async def answer_batch(self, body: list[Question] = Body()) -> list[dict]:
        if len(body) > self.cfg.max_batch_questions:
            raise HTTPException(413, f"body: {len(body)} questions, over the limit of {self.cfg.max_batch_questions}")
        check_limits(body, self.cfg, self.current[0].index is not None, "body.")
        return list(await asyncio.gather(*(self.reply(q) for q in body)))

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {
            "status": "ok",
            **self.about,
            **({"registry_error": self.registry_error} if self.registry_error else {}),
        }

    @app.get("/metrics")
    async def metrics(self) -> Response:
        from qadist.answer.metrics import render

        self.push_metrics()
        try:
            text = await self.collector.render.remote()
        except Exception:  # noqa: BLE001 (no collector: this replica's own figures)
            text = render([self.figures.snapshot(self.qlog.counts() if self.qlog else None)])
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def build_app(cfg: ServeConfig) -> Any:
    """The Serve application for `cfg`: replicas, their resources and the bounded queues."""
    resources: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_replica}
    if cfg.num_gpus_per_replica:
        resources["num_gpus"] = cfg.num_gpus_per_replica
    if cfg.resources_per_replica:
        resources["resources"] = dict(cfg.resources_per_replica)
    return QAService.options(
        num_replicas=cfg.replicas,
        ray_actor_options=resources,
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        health_check_period_s=2,
    ).bind(cfg.model_dump(mode="json"))


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
