"""What a person sees while a stage runs: a banner, one progress bar, a one-line summary.

Everything else (qadist's own INFO logs, Ray's driver logs, every line a Ray worker prints, Ray
Data's split bars inside training) goes to a log file beside the output; `--verbose` brings it
back to the terminal. Warnings and errors always reach the terminal, the raylet's error notices
included ("a worker died", "killed for memory", "cannot be scheduled").

Ray forwards worker output to the driver through one handler of its stdstream dispatcher
(`ray_print_logs`); `route_ray_output` swaps it, for the command's duration, for one that writes
those lines to the log file and draws, as one plain tqdm bar on the driver, the progress that
qadist's own bars in workers report (the training bar, `BAR_PREFIXES`; Ray's distributed tqdm
redraws every bar whenever any line is printed, and keeps bars it has closed). Ray's loggers are
pointed at the log file with plain `logging` handlers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

from qadist import storage

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BAR_PREFIXES = ("epoch ", "train")  # descriptions of qadist's own bars drawn from Ray workers
RAY_HANDLER, OUR_HANDLER = "ray_print_logs", "qadist_console"  # handlers of Ray's stdstream dispatcher
# Loggers that keep their own terminal handlers (propagate=False): their output is re-pointed too.
OWN_HANDLER_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")

_state: dict = {"log_file": None, "verbose": True, "handlers": [], "show": True, "echoed": set(), "ray_print": None}
_lock = threading.Lock()
_bars: dict[str, object] = {}  # uuid of a worker's bar -> the driver's tqdm drawing it


class RayChatter(logging.Filter):
    """Ray's own driver-side logs (token auth, "started a local Ray instance", dataset execution
    plans, the tracebacks it logs before raising) and libraries' deprecation warnings belong in the
    log file: what fails reaches the terminal as the command's own error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] not in ("ray", "py")


def log_file_for(stage: str, out: str | None) -> str:
    """Beside a local output: `<out folder>.log`, or `<out file without its extension>.log`. An s3://
    output (or none) logs under the temp dir: a log is for the machine the command runs on. Beside
    and not inside, so a command that fails before any work leaves no output folder behind."""
    if out and not storage.is_s3(out):
        path = storage.resolve(out)[1]
        stem, ext = os.path.splitext(path)
        return f"{stem if ext else path}.log"
    return os.path.join(tempfile.gettempdir(), "qadist-logs", f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}.log")


def start(stage: str, out: str | None, verbose: bool) -> str:
    """Point logging at the stage's log file (and at the terminal for qadist's warnings, or
    everything with `verbose`); returns the log file's path.

    Quiet, the process's file descriptor 2 goes to the log file too: Ray's C++ core worker in this
    process writes its notices there directly, past Python; `sys.stderr` keeps the terminal.
    """
    path = log_file_for(stage, out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stop()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    file_handler.setLevel(logging.INFO)  # Ray Data's logger passes DEBUG records (its whole context, per dataset)
    if not verbose:
        redirect_fd2(file_handler.stream)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter(LOG_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s"))
    terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        terminal.addFilter(RayChatter())
    root = logging.getLogger()
    _state["root_level"] = root.level
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(terminal)
    _state.update(log_file=path, verbose=verbose, handlers=[file_handler, terminal], file=file_handler.stream)
    if not verbose:
        logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the log file
        quiet_own_handler_loggers()
        quiet_transformers()
    return path


def quiet_transformers() -> None:
    """No weight-loading bars and load reports (a fresh QA head is "MISSING" by design): set for
    this process and, through the environment, for the Ray workers it starts."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def redirect_fd2(log_stream) -> None:
    """fd 2 -> the log file; `sys.stderr` (when it is the real one) -> a new descriptor of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log_stream.fileno(), 2)
    _state["fd2"] = (saved, sys.stderr)
    if sys.stderr is sys.__stderr__:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(sys.__stderr__, "encoding", None))


def restore_fd2() -> None:
    if not _state.get("fd2"):
        return
    saved, stderr = _state.pop("fd2")
    sys.stderr.flush()
    if sys.stderr is not stderr:
        sys.stderr.close()
        sys.stderr = stderr
    os.dup2(saved, 2)
    os.close(saved)


def stop() -> None:
    root = logging.getLogger()
    with _lock:  # Ray's log thread may be writing a worker's line to the file
        handlers = _state["handlers"]
        _state.update(log_file=None, file=None)
    for h in handlers:
        root.removeHandler(h)
        for name in OWN_HANDLER_LOGGERS:
            logging.getLogger(name).removeHandler(h)
        h.close()
    if handlers:
        root.setLevel(_state.get("root_level", logging.WARNING))
        logging.captureWarnings(False)
    unroute_ray_output()
    for bar in _bars.values():
        bar.close()
    _bars.clear()
    restore_fd2()
    _state.update(log_file=None, verbose=True, handlers=[], file=None, echoed=set())


def quiet_own_handler_loggers() -> None:
    """Ray's loggers print to the terminal through handlers of their own: send them to our handlers."""
    for name in OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        if logger.handlers or not logger.propagate:
            for h in _state["handlers"]:
                if h not in logger.handlers:
                    logger.addHandler(h)


def quiet() -> bool:
    return _state["log_file"] is not None and not _state["verbose"]


@contextmanager
def ray_init_output():
    """While Ray starts, what it prints (its logging handlers are made inside ray.init) goes to the log file."""
    if not quiet():
        yield
        return
    from contextlib import redirect_stderr, redirect_stdout

    quiet_own_handler_loggers()  # the handlers Ray made on import
    with redirect_stderr(_state["file"]), redirect_stdout(_state["file"]):
        yield


def route_ray_output() -> None:
    """Once Ray is up on this driver: worker lines to the log file, qadist's bars to the terminal.

    Ray's supported settings decide whether worker output reaches the driver (`log_to_driver`),
    its prefix and its level (`ray.LoggingConfig`), not where the driver prints it: that is a handler
    of Ray's stdstream dispatcher (`ray_print_logs`, which prints to `sys.stdout`/`sys.stderr`).
    Turning forwarding off would lose what qadist needs from it (the training bar and the workers'
    `[qadist]` notes), so the handler is swapped for ours while the command runs and put back after.
    """
    if not quiet():
        return
    import ray.data  # noqa: F401 (Ray Data configures its loggers on import: quieten them after)
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    quiet_own_handler_loggers()
    ray_handlers = [h for name, h in list(dispatcher.handlers) if name == RAY_HANDLER]
    if ray_handlers:  # absent with log_to_driver=False: nothing is forwarded, nothing to route
        _state["ray_print"] = ray_handlers[0]
    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.remove_handler(OUR_HANDLER)
    dispatcher.add_handler(OUR_HANDLER, _print_worker_lines)


def unroute_ray_output() -> None:
    """The command ended: Ray's own handler back, if the Ray lives on (a notebook, a test session)."""
    if "ray" not in sys.modules:
        return
    import ray
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(OUR_HANDLER)
    ray_print, _state["ray_print"] = _state["ray_print"], None
    if ray_print is not None and ray.is_initialized():
        if not any(name == RAY_HANDLER for name, _ in list(dispatcher.handlers)):
            dispatcher.add_handler(RAY_HANDLER, ray_print)


def _print_worker_lines(data: dict) -> None:
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    with _lock:
        if not quiet():  # between stop() and unroute_ray_output(): Ray's own printing
            if _state["ray_print"] is not None:
                _state["ray_print"](data)
            return
        sink = _state["file"]
        name = data.get("actor_name") or data.get("task_name") or ""
        for line in data.get("lines", []):
            if RAY_TQDM_MAGIC in line:
                try:
                    state = json.loads(line)
                except ValueError:
                    continue
                if str(state.get("desc", "")).startswith(BAR_PREFIXES):
                    draw(state)
                continue
            if line.startswith("[qadist] ") and line not in _state["echoed"]:  # a worker's note for the user (a resume)
                _state["echoed"].add(line)  # once, also if Ray Train's print patch is on (it forwards it twice)
                print(line, flush=True)
            sink.write(f"({name} pid={data.get('pid')}) {line}\n")
        sink.flush()


def draw(state: dict) -> None:
    """A worker bar's state update (tqdm_ray's JSON) -> the driver's own tqdm bar for it."""
    from tqdm import tqdm

    bar = _bars.get(state["uuid"])
    if bar is None:
        if state.get("closed"):
            return
        bar = _bars[state["uuid"]] = tqdm(total=state.get("total"), unit=state.get("unit") or "it", dynamic_ncols=True)
    bar.total = state.get("total")
    bar.set_description_str(state.get("desc", ""), refresh=False)
    bar.update(int(state.get("x", 0)) - bar.n)
    if state.get("closed"):
        bar.close()
        del _bars[state["uuid"]]


def banner(text: str, logger: logging.Logger = log) -> None:
    """What the stage is about to do: how much, with what, where (printed, and logged by the stage's `logger`)."""
    if _state["show"]:
        print(text, flush=True)
    logger.info(text)


def rate(count: float, seconds: float, unit: str) -> str:
    """How fast, readable at any size: "12.3 pairs/s" from one per second up, "30.5 s/pair" below
    (a big teacher labels 8 pairs in 244 s, which one decimal of pairs/s shows as 0.0)."""
    per_s = count / seconds if seconds > 0 else float("inf")
    if per_s >= 1:
        return f"{per_s:,.1f} {unit}s/s"
    if per_s == 0:
        return f"0 {unit}s/s"
    return f"{1 / per_s:,.3g} s/{unit}"


def summary(text: str, logger: logging.Logger = log) -> None:
    """What the stage did, and in how long."""
    banner(text, logger)


@contextmanager
def session(stage: str, out: str | None, verbose: bool, show: bool = True):
    """The console of one command: logging pointed at the stage's log file for its duration.
    `show=False` keeps banners and summaries in the log file only (stdout carries the command's
    result, as `qadist evaluate`'s metrics JSON)."""
    path = start(stage, out, verbose)
    _state["show"] = show
    try:
        yield path
        if show and not verbose:
            print(f"qadist {stage}: log -> {path} (--verbose shows it here)", flush=True)
    finally:
        stop()
        _state["show"] = True
