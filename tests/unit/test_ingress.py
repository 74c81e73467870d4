"""The ingress's answer to a model replica that died: one retry on another replica, else 503 (retryable),
never the proxy's 500; a full queue is 503; any other error is left to be a 500."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError

from qadist.answer.ingress import Unavailable, call_model, replica_gone


def calls(*outcomes):
    """A fake handle call: each call gives the next outcome (an exception is raised)."""
    made = []

    async def call():
        outcome = outcomes[len(made)]
        made.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await asyncio.sleep(60)
        return outcome

    return call, made


def run(coro):
    return asyncio.run(coro)


def died() -> ActorDiedError:
    return ActorDiedError()


def test_what_counts_as_a_dead_replica():
    assert replica_gone(died()) and replica_gone(ActorUnavailableError("gone", None))
    wrapped = RayTaskError("answer", "traceback", died())
    assert replica_gone(wrapped)
    assert not replica_gone(RayTaskError("answer", "traceback", ValueError("bad input")))
    assert not replica_gone(ValueError("x"))


def test_a_dead_replica_is_retried_once_on_another():
    call, made = calls(died(), ["answer"])
    assert run(call_model(call)) == ["answer"] and len(made) == 2


@pytest.mark.parametrize("second", [ActorDiedError(), ActorUnavailableError("gone", None), "hang"])
def test_when_the_retry_fails_too_it_is_unavailable_503(second):
    call, made = calls(died(), second)
    with pytest.raises(Unavailable, match="replica died"):
        run(call_model(call, retry_wait_s=0.2))
    assert len(made) == 2


def test_a_full_queue_is_unavailable_and_not_retried():
    call, made = calls(BackPressureError(num_queued_requests=3, max_queued_requests=2), ["never"])
    with pytest.raises(Unavailable, match="busy"):
        run(call_model(call))
    assert len(made) == 1


def test_other_errors_are_not_retried_nor_hidden():
    call, made = calls(ValueError("a bug"), ["never"])
    with pytest.raises(ValueError, match="a bug"):
        run(call_model(call))
    assert len(made) == 1


def test_the_503_names_the_reason_and_says_when_to_retry():
    from fastapi.testclient import TestClient

    from qadist.answer.ingress import app

    @app.get("/_test_unavailable")
    async def _raise():
        raise Unavailable("the replica died (ActorDiedError), and so did the retry's")

    try:
        reply = TestClient(app).get("/_test_unavailable")
    finally:
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/_test_unavailable"]
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "replica died" in reply.json()["detail"]
