"""The label run's progress deadline.

Ray Data restarts lost teacher actors and retries their blocks without limit, which is right for a
preempted node and wrong for a teacher that hangs or actors that die faster than they restart: the
run would wait forever. `within_deadline` fails the run when no block finishes for `deadline_s`
seconds while blocks are pending; `stall_cause` says which of the two it looks like, from Ray's
actor table. Finished shards stay, and a re-run resumes from them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from qadist.errors import UserError

TEACHER_ACTOR = "BlockTeacher"


class RunStalled(UserError):
    """No progress within the deadline: an operational failure, not bad input (exit code 3)."""

    exit_code = 3


def within_deadline(rows: Iterable[Any], deadline_s: float, cause: Callable[[], str]) -> Iterator[Any]:
    """`rows`, failing with RunStalled when `deadline_s` passes without one (0: no deadline).

    The rows are pulled in a daemon thread, so the wait can time out; the pipeline behind them is
    torn down when the process ends (the CLI exits on the error)."""
    if not deadline_s:
        yield from rows
        return
    arrived: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for row in rows:
                arrived.put(("row", row))
            arrived.put(("end", None))
        except BaseException as e:  # handed to the caller's thread, raised there
            arrived.put(("error", e))

    threading.Thread(target=pump, name="qadist-label-rows", daemon=True).start()
    while True:
        try:
            kind, item = arrived.get(timeout=deadline_s)
        except queue.Empty:
            raise RunStalled(
                f"no block finished in {deadline_s:g}s (--progress-deadline-s): {cause()}; finished shards are kept "
                "and re-running the command resumes; raise --progress-deadline-s if a block legitimately takes longer"
            ) from None
        if kind == "end":
            return
        if kind == "error":
            raise item
        yield item


def teacher_actors() -> list[tuple[str, int]]:
    """(state, restarts) of this job's teacher actors, from the GCS actor table (a long-lived
    cluster also lists the finished actors of earlier jobs).

    `ray.util.state.list_actors` needs the dashboard, which an embedded Ray (the CLI on one machine)
    does not start; the GCS table behind it is read directly then (a private API: best effort)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    try:
        from ray.util.state import list_actors

        found = list_actors(filters=[("job_id", "=", job)], detail=True, limit=10_000, raise_on_missing_output=False)
        return [(a.state, a.num_restarts or 0) for a in found if TEACHER_ACTOR in (a.class_name or "")]
    except Exception:
        from ray._private.state import state

        table = state.actor_table(None)
        return [(a["State"], int(a.get("NumRestarts") or 0)) for a in table.values()
                if TEACHER_ACTOR in str(a.get("ActorClassName", "")) and a.get("JobID") == job]  # fmt: skip


def stall_cause(pending: int) -> str:
    """What the teacher actors are doing, in words, from Ray's actor table."""
    try:
        actors = teacher_actors()
    except Exception as e:  # the actor table is best effort; the deadline's message must still come out
        return f"{pending} block(s) pending; the actor table could not be read ({type(e).__name__})"
    restarts = sum(r for _, r in actors)
    dead = sum(state == "DEAD" for state, _ in actors)
    alive = sum(state == "ALIVE" for state, _ in actors)
    if restarts or dead:
        return (
            f"{pending} block(s) pending and the teacher actors keep dying ({restarts} restart(s), {dead} dead, "
            f"{alive} alive): they die faster than they restart; the actors' logs (`ray logs`) say why"
        )
    if alive:
        return (
            f"{pending} block(s) pending on {alive} live teacher actor(s) that returned nothing: a teacher hangs "
            "(a stuck GPU, a deadlock in model code) or a block is far slower than the deadline"
        )
    return (
        f"{pending} block(s) pending and no teacher actor started (waiting for resources: check --num-gpus-per-actor)"
    )
