"""The one exception type that means "the user's input or config is wrong" (exit code 2), and how
to find it again when Ray has wrapped it (raised in a Ray task, actor or Train worker)."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad usage, config or input. The message is one line naming the file, key or row and the fix."""


USER_ERROR_MARK = f"{UserError.__module__}.{UserError.__qualname__}: "


def user_error_in(error: BaseException, depth: int = 0) -> UserError | None:
    """The innermost UserError behind `error`: what a Ray task, actor or Train worker raised (Ray
    wraps it: RayTaskError.cause, WorkerGroupError.worker_failures, ...), a cause, or `error` itself."""
    if depth > 8:
        return None
    inner: list[Any] = [getattr(error, "cause", None), getattr(error, "controller_failure", None), error.__cause__]
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict):
        inner += list(failures.values())
    inner.append(error.__context__)
    for e in inner:
        if isinstance(e, BaseException) and e is not error:
            found = user_error_in(e, depth + 1)
            if found is not None:
                return found
    if isinstance(error, UserError):
        return error
    # An actor whose __init__ raised (a teacher that cannot load) reaches the driver as ActorDiedError,
    # which keeps its cause only as formatted text: the UserError's line is read back from it.
    text = str(error)
    at = text.rfind(USER_ERROR_MARK)
    return UserError(first_line(text[at + len(USER_ERROR_MARK) :])) if at >= 0 else None


def first_line(text: str) -> str:
    """A message's first line: up to the first "\n" only. `str.splitlines()` would also cut at U+2028,
    U+0085 or a form feed inside a quoted value (a question, an id, a path) and lose the rest."""
    return text.split("\n", 1)[0].rstrip("\r")


def one_line(error: UserError) -> str:
    """A UserError's own message (a Ray wrapper's class may carry a traceback in str())."""
    text = str(error.args[0]) if error.args else str(error)
    return first_line(text.strip()) if text.strip() else type(error).__name__
