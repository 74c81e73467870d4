"""The HTTP side of `qadist serve`: a thin FastAPI ingress deployment in front of the model replicas.

The ingress validates a request (4xx never reach a model), gives it its `request_id`, and calls the
model deployment (`serve.QAService`) through a `DeploymentHandle`. It holds no model and asks Ray
for no CPU. Why a second deployment: Ray Serve's proxy answers 500 when the replica running a
request dies (`RayActorError`, ray/serve/_private/http_util.py); here that error reaches our code
instead, and a request whose replica died is

- sent once more, to another replica (answering is idempotent: the same question, the same
  `request_id`; the dead replica's queued question-log row died with it), waiting at most
  `RETRY_WAIT_S` for a replica to take it;
- answered 503 with `Retry-After` when that retry fails too (a single replica being replaced),
  never 500.

A full model queue (`max_queued_requests`, raised at this handle as `BackPressureError`) is 503 with
`Retry-After` too, as Serve's proxy answers it. /metrics counts requests here (so a 503 for a dead
replica is counted) and question-log rows in the model replicas, summed by `answer/metrics.py`.
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

from qadist.config import ServeConfig
from qadist.rows import lone_surrogate

log = logging.getLogger(__name__)

RETRY_WAIT_S = 10.0  # how long the one retry of a request whose replica died waits for another replica
RETRY_AFTER_S = 1  # the Retry-After of a 503


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


FIGURES: Any = None  # this ingress replica's request counts (answer/metrics.py), set when it starts


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


def check_limits(questions: list[Question], cfg: ServeConfig, prefix: str) -> None:
    """413 for a context over --max-context-chars, 422 for a missing context without documents."""
    for i, q in enumerate(questions):
        where = f"{prefix}{i}." if prefix else "body."
        if q.context is None and not cfg.documents:
            raise HTTPException(422, f"{where}context: required (this service has no --documents to look it up in)")
        if q.context is not None and len(q.context) > cfg.max_context_chars:
            raise HTTPException(
                413, f"{where}context: {len(q.context):,} characters, over the limit of {cfg.max_context_chars:,}"
            )


class Unavailable(Exception):
    """Answered 503 with Retry-After: the model replicas cannot take the request now."""


def replica_gone(e: BaseException) -> bool:
    """Did the replica running the request die (or become unreachable)? RayActorError covers
    ActorDiedError and ActorUnavailableError; a RayTaskError may wrap one as its cause."""
    from ray.exceptions import RayActorError, RayTaskError

    return isinstance(e, RayActorError) or (
        isinstance(e, RayTaskError) and isinstance(getattr(e, "cause", None), RayActorError)
    )


async def call_model(call: Any, retry_wait_s: float = RETRY_WAIT_S, on_retry: Any = None) -> Any:
    """`await call()` (a DeploymentHandle call); when its replica dies, once more (the router has
    marked the dead replica, so the retry goes to another), waiting at most `retry_wait_s`. Raises
    Unavailable when the retry fails too or the queue is full; other errors propagate (500)."""
    from ray.serve.exceptions import BackPressureError

    try:
        return await call()
    except BackPressureError as e:
        raise Unavailable(f"every replica is busy: {e.message}") from e
    except Exception as e:
        if not replica_gone(e):
            raise
        log.warning("the replica answering a request died (%s); retrying once on another", type(e).__name__)
        first = e
    if on_retry is not None:
        on_retry()
    try:
        return await asyncio.wait_for(call(), retry_wait_s)
    except BackPressureError as e:
        raise Unavailable(f"every replica is busy: {e.message}") from e
    except asyncio.TimeoutError as e:
        raise Unavailable(f"the replica died ({type(first).__name__}) and no other took the request in time") from e
    except Exception as e:
        if replica_gone(e):
            raise Unavailable(f"the replica died ({type(first).__name__}), and so did the retry's") from e
        raise


@app.exception_handler(Unavailable)
async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
    return JSONResponse(
        status_code=503, content={"detail": f"{exc}; retry"}, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


@serve.deployment(name="QAIngress")
@serve.ingress(app)
class QAIngress:
    """The HTTP API; answers come from `model` (a handle to the QAService deployment)."""

    def __init__(self, settings: dict[str, Any], model: Any):
        from qadist.answer.metrics import Figures, Pusher
        from qadist.question_log import replica_tag

        self.cfg = ServeConfig(**settings)
        self.model = model
        self.figures = sys.modules[__name__].FIGURES = Figures(replica_tag())
        self.pusher = Pusher(self.figures, lambda: None)
        self.stopping = threading.Event()
        threading.Thread(
            target=self.pusher.every_second, args=(self.stopping,), name="qadist-ingress", daemon=True
        ).start()

    def __del__(self):
        if getattr(self, "stopping", None) is not None:
            self.stopping.set()

    async def ask(self, questions: list[Question]) -> list[dict]:
        items = [(q.question, q.context) for q in questions]
        ids = [uuid.uuid4().hex for _ in questions]  # kept by a retry: one request, one id
        return await call_model(lambda: self.model.answer.remote(items, ids), on_retry=self.figures.retry)

    @app.post("/answer", response_model=Answer, response_model_exclude_none=True)
    async def answer(self, body: Question = Body()) -> dict:
        check_limits([body], self.cfg, "")
        return (await self.ask([body]))[0]

    @app.post("/answer/batch", response_model=list[Answer], response_model_exclude_none=True)
    async def answer_batch(self, body: list[Question] = Body()) -> list[dict]:
        if len(body) > self.cfg.max_batch_questions:
            raise HTTPException(413, f"body: {len(body)} questions, over the limit of {self.cfg.max_batch_questions}")
        check_limits(body, self.cfg, "body.")
        return await self.ask(body)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """200 with what a model replica serves (its version, a registry error) once one answers."""
        return {"status": "ok", **await call_model(lambda: self.model.health.remote())}

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(await self.pusher.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
