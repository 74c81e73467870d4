"""What a person sees while a stage runs: a banner, one progress bar, a one-line summary.

Everything else (qadist's own INFO logs, Ray's driver logs, every line a Ray worker prints, Ray
Data's split bars inside training) goes to a log file beside the output; `--verbose` brings it
back to the terminal. Warnings and errors always reach the terminal.

Ray forwards worker output to the driver through one handler of its stdstream dispatcher
(`ray_print_logs`); `route_ray_output` swaps it for one that writes those lines to the log file and
lets through only the progress bars qadist draws itself (the training bar, `BAR_PREFIXES`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager

from qadist import storage

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BAR_PREFIXES = ("epoch ", "train")  # descriptions of qadist's own bars drawn from Ray workers
# Loggers that keep their own terminal handlers (propagate=False): their output is re-pointed too.
OWN_HANDLER_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")

_state: dict = {"log_file": None, "verbose": True, "handlers": []}


def log_file_for(stage: str, out: str | None) -> str:
    """`<out>/_qadist-<stage>.log` for a local output folder (the folder of an output file), else
    a file under the temp dir: a log is for the machine the command runs on, never written to S3."""
    if out and not storage.is_s3(out):
        path = storage.resolve(out)[1]
        folder = os.path.dirname(path) if os.path.splitext(path)[1] else path
        return os.path.join(folder, f"_qadist-{stage}.log")
    return os.path.join(tempfile.gettempdir(), "qadist-logs", f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}.log")


def start(stage: str, out: str | None, verbose: bool) -> str:
    """Point logging at the stage's log file (and at the terminal for warnings, or everything with
    `verbose`); returns the log file's path."""
    path = log_file_for(stage, out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stop()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter(LOG_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s"))
    terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):  # logging.basicConfig of an embedding program, or a previous command
        root.removeHandler(h)
    root.addHandler(file_handler)
    root.addHandler(terminal)
    _state.update(log_file=path, verbose=verbose, handlers=[file_handler, terminal], file=file_handler.stream)
    if not verbose:
        quiet_own_handler_loggers()
    return path


def stop() -> None:
    root = logging.getLogger()
    for h in _state["handlers"]:
        root.removeHandler(h)
        for name in OWN_HANDLER_LOGGERS:
            logging.getLogger(name).removeHandler(h)
        h.close()
    _state.update(log_file=None, verbose=True, handlers=[], file=None)


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


def route_ray_output() -> None:
    """Once Ray is up on this driver: worker lines to the log file, qadist's bars to the terminal."""
    from ray._private import worker as ray_worker

    if not quiet():
        return
    quiet_own_handler_loggers()
    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("qadist_console")
    dispatcher.add_handler("qadist_console", _print_worker_lines)


def _print_worker_lines(data: dict) -> None:
    from ray._private import worker as ray_worker
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    if not quiet():  # the command ended but Ray lives on (a notebook, a test session): Ray's own printing
        ray_worker.print_to_stdstream(data, ignore_prefix=False)
        return
    sink = _state["file"]
    name = data.get("actor_name") or data.get("task_name") or ""
    for line in data.get("lines", []):
        if RAY_TQDM_MAGIC in line:
            try:
                desc = json.loads(line).get("desc", "")
            except ValueError:
                continue
            if desc.startswith(BAR_PREFIXES):
                ray_worker.process_tqdm(line)
            continue
        if line.startswith("[qadist]"):
            print(line, flush=True)
        if sink is not None:
            sink.write(f"({name} pid={data.get('pid')}) {line}\n")
    if sink is not None:
        sink.flush()


def banner(text: str) -> None:
    """What the stage is about to do: how much, with what, where."""
    print(text, flush=True)
    log.info(text)


def summary(text: str) -> None:
    print(text, flush=True)
    log.info(text)


@contextmanager
def session(stage: str, out: str | None, verbose: bool):
    """The console of one command: logging pointed at the stage's log file for its duration."""
    path = start(stage, out, verbose)
    if not verbose:
        print(f"qadist {stage}: details in {path} (--verbose shows them here)", flush=True)
    try:
        yield path
    finally:
        stop()
