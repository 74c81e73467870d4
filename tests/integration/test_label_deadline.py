"""`qadist label --progress-deadline-s`: a run that stops making progress fails instead of waiting forever.

Two stalls Ray Data would otherwise wait out without end: a teacher whose forward hangs (a tiny
BERT whose remote code sleeps while a flag file exists) and teacher actors SIGKILLed every second.
Each run is a CLI subprocess with its own Ray (slow); each must fail within its deadline with a
message naming the cause, keep its finished shards, and a re-run must complete exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_label_faults import _cli, _finish, _our_teacher_pids, exactly_once, label_args, put_pairs, small_pairs

pytestmark = pytest.mark.slow
DEADLINE_S = 20

SLEEPY_MODELING = '''
import os
import time

from transformers import BertForQuestionAnswering


class SleepyQA(BertForQuestionAnswering):
    """A BERT QA model whose forward sleeps while the file named in its config exists (a hung GPU)."""

    def forward(self, *args, **kwargs):
        while os.path.exists(self.config.hang_file):
            time.sleep(0.5)
        return super().forward(*args, **kwargs)
'''


@pytest.fixture
def sleepy_teacher(tmp_path, tiny_models) -> tuple[str, Path]:
    """A copy of the tiny teacher whose forward hangs while `hang` exists."""
    import shutil

    folder, hang = tmp_path / "sleepy-teacher", tmp_path / "HANG"
    shutil.copytree(tiny_models["teacher_a"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForQuestionAnswering": "modeling_sleepy.SleepyQA"}
    config["hang_file"] = str(hang)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_sleepy.py").write_text(SLEEPY_MODELING)
    return str(folder), hang


def test_a_hanging_teacher_fails_within_the_deadline_and_a_rerun_completes(tmp_path, squad_pairs, sleepy_teacher):
    teacher, hang = sleepy_teacher
    pairs = small_pairs(squad_pairs, 120)
    put_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "labels"
    args = [*label_args(str(tmp_path / "pairs.jsonl"), str(out), teacher), "--trust-remote-code",
            "--progress-deadline-s", str(DEADLINE_S)]  # fmt: skip
    proc = _cli(args)
    started = time.time()
    while not list(out.glob("shards/*.parquet")) and time.time() - started < 180 and proc.poll() is None:
        time.sleep(0.05)
    hang.touch()  # from now on every forward pass hangs
    hung_at = time.time()
    code, err = _finish(proc)
    failed_after = time.time() - hung_at
    kept = len(list(out.glob("shards/*.parquet")))
    line = next((x for x in err.splitlines() if x.startswith("qadist: error:")), err[-500:])
    print(f"\nhung teacher: exit {code} {failed_after:.0f}s after the hang began, {kept} shards kept; {line}")
    assert code == 3, err[-3000:]
    assert "no block finished in 20s" in line and "a teacher hangs" in line and "re-running the command resumes" in line
    assert failed_after < DEADLINE_S + 30 and 1 <= kept < 6
    assert not (out / "_manifest.json").exists()

    hang.unlink()
    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]
    manifest, _ = exactly_once(str(out), pairs)
    print(f"re-run: {manifest['run']['shards_skipped']} shards reused, {manifest['run']['shards_computed']} computed")
    assert manifest["run"]["shards_skipped"] == kept


def test_actors_killed_every_second_fail_within_the_deadline_and_a_rerun_completes(tmp_path, squad_pairs, tiny_models):
    pairs = small_pairs(squad_pairs, 120)
    put_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "labels"
    args = [*label_args(str(tmp_path / "pairs.jsonl"), str(out), tiny_models["teacher_a"]),
            "--progress-deadline-s", str(DEADLINE_S)]  # fmt: skip
    proc = _cli(args)
    kills: list[float] = []
    stop = threading.Event()

    def killer() -> None:  # a teacher actor SIGKILLed every second, from the first one on
        while not stop.is_set() and proc.poll() is None:
            for pid in _our_teacher_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(time.time())
                except ProcessLookupError:
                    pass
            stop.wait(1.0)

    thread = threading.Thread(target=killer, daemon=True)
    started = time.time()
    thread.start()
    code, err = _finish(proc)
    stop.set()
    thread.join(5)
    elapsed = time.time() - started
    line = next((x for x in err.splitlines() if x.startswith("qadist: error:")), err[-500:])
    print(f"\nactors killed every second: {len(kills)} kills, exit {code} after {elapsed:.0f}s; {line}")
    assert kills and code == 3, err[-3000:]
    assert "no block finished in 20s" in line and "keep dying" in line
    assert not (out / "_manifest.json").exists()

    code, err = _finish(_cli(args))
    assert code == 0, err[-3000:]
    exactly_once(str(out), pairs)
