"""The console's routing of Ray's forwarded worker output, without starting Ray: while a quiet command
runs, worker lines go to the log file (a worker's `[qadist]` note to the terminal too); when it ends,
Ray's own handler is back for a Ray that lives on (a notebook, a test session)."""

from __future__ import annotations

import ray
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

from qadist import console


def test_worker_lines_go_to_the_log_file_while_a_quiet_command_runs(tmp_path, capsys, monkeypatch):
    printed_by_ray = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    dispatcher.add_handler(console.RAY_HANDLER, printed_by_ray.append)
    try:
        with console.session("demo", str(tmp_path / "out"), verbose=False) as log_path:
            console.route_ray_output()
            dispatcher.emit({"lines": ["loading weights", "[qadist] resumed at step 4"], "pid": 7, "actor_name": "W"})
            assert printed_by_ray == []
        names = [name for name, _ in dispatcher.handlers]
        assert console.RAY_HANDLER in names and console.OUR_HANDLER not in names
        dispatcher.emit({"lines": ["after the command"], "pid": 7})
        assert [d["lines"] for d in printed_by_ray] == [["after the command"]]
    finally:
        dispatcher.remove_handler(console.RAY_HANDLER)
        dispatcher.remove_handler(console.OUR_HANDLER)
    log = open(log_path, encoding="utf-8").read()
    assert "(W pid=7) loading weights" in log and "after the command" not in log
    out = capsys.readouterr().out
    assert "[qadist] resumed at step 4" in out and "loading weights" not in out


def test_verbose_leaves_ray_printing(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    dispatcher.add_handler(console.RAY_HANDLER, print)
    try:
        with console.session("demo", str(tmp_path / "out"), verbose=True):
            console.route_ray_output()
            assert [name for name, _ in dispatcher.handlers].count(console.RAY_HANDLER) == 1
            assert console.OUR_HANDLER not in [name for name, _ in dispatcher.handlers]
    finally:
        dispatcher.remove_handler(console.RAY_HANDLER)
