"""Generations of a growing output, writer leases, and the pipeline's placeholders (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from qadist.errors import UserError
from qadist.leases import LEASES, Lease, check_writers
from qadist.outputs import committed_generations, delete_generations, generation_files, generation_uri
from qadist.pipeline import resolve_section


def write_generation(out, number: int) -> None:
    path = generation_uri(str(out), number)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"generation": number, "shards": [], "counts": {}}, f)


def test_generations_are_read_in_order_and_a_gap_is_an_error(tmp_path):
    for n in (1, 2, 3):
        write_generation(tmp_path, n)
    assert [g["generation"] for g in committed_generations(str(tmp_path))] == [1, 2, 3]
    os.unlink(generation_uri(str(tmp_path), 2))
    with pytest.raises(UserError, match=r"not contiguous \(1..1, then _manifest-000003.json\).*--overwrite"):
        committed_generations(str(tmp_path))
    delete_generations(str(tmp_path))
    assert generation_files(str(tmp_path)) == [] and committed_generations(str(tmp_path)) == []


def test_a_lease_of_a_process_that_is_gone_does_not_count(tmp_path):
    out = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Lease(out, "label") as mine:
            for pid in (int(done.stdout), alive.pid):
                holder = {**mine.holder, "pid": pid, "renewed": time.time()}
                (tmp_path / LEASES / f"other-{pid}.json").write_text(json.dumps(holder))
            assert [h["pid"] for h in mine.others()] == [alive.pid]  # the finished one is released...
            assert not (tmp_path / LEASES / f"other-{int(done.stdout)}.json").exists()  # ...and removed
            check_writers(out, mine)  # a plain run beside another plain run: fine
            with pytest.raises(UserError, match="another run is writing this output"):
                check_writers(out, mine, exclusive=True)
    finally:
        alive.kill()
        alive.wait()


def test_placeholders_and_continue_from(tmp_path):
    section = {"generation": "{generation}", "out": "s/gen-{generation}", "student": "base",
               "continue_from": str(tmp_path / "gen-{previous_generation}" / "final")}  # fmt: skip
    first = resolve_section("distill", section, 1)
    assert first == {"generation": "1", "out": "s/gen-1", "student": "base"}  # day 1: gen-0 does not exist
    (tmp_path / "gen-1" / "final").mkdir(parents=True)
    (tmp_path / "gen-1" / "final" / "config.json").write_text("{}")
    assert resolve_section("distill", section, 2)["student"] == str(tmp_path / "gen-1" / "final")
    with pytest.raises(UserError, match="generation 2's student never finished"):
        resolve_section("distill", section, 3)
    with pytest.raises(UserError, match="'continue_from' is a distill key"):
        resolve_section("finetune", {"continue_from": "x"}, 1)
