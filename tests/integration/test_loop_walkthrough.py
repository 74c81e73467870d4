"""docs/loop.md's walk-through, run as written (slow): the `bash` blocks of its "Walk-through"
section, in order, in one shell, in a scratch folder holding the repository's `jobs/` (the doc runs
from the repository root). Two substitutions only: port 8000 -> a free loopback port, and, when
`QADIST_WALKTHROUGH_DEMO` names a finished `qadist demo --quick` output, that folder is linked as
`qadist-demo` instead of running the demo again (it takes 5-20 minutes on 2 busy cores).

It is the whole loop with the daily job: the demo's student served with a question log, logged
questions sent over HTTP, `qadist pipeline --config jobs/configs/daily-demo.yaml` (the log -> pairs
-> label generation -> distill -> predict / evaluate -> promote) while the service runs, and the
service answering with the promoted version without a restart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from test_serve import free_port

from qadist.registry import ObjectRegistry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DEMO_LINE = "qadist demo --quick --out qadist-demo"


def walkthrough_blocks(doc: Path = REPO / "docs" / "loop.md") -> list[str]:
    text = doc.read_text()
    section = text[text.index("## Walk-through") :]
    section = section[: section.index("\n## ", 3)]
    return re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S)


def test_the_doc_has_the_walkthrough_blocks():
    blocks = walkthrough_blocks()
    assert len(blocks) == 4 and DEMO_LINE in blocks[0]
    assert "qadist pipeline --config jobs/configs/daily-demo.yaml" in blocks[2]
    assert (REPO / "jobs" / "configs" / "daily-demo.yaml").exists()


def test_docs_loop_walkthrough_runs_as_written(tmp_path):
    port = str(free_port())
    script = "\n".join(b.replace("8000", port) for b in walkthrough_blocks())
    demo = os.environ.get("QADIST_WALKTHROUGH_DEMO")
    if demo:
        assert (Path(demo) / "models" / "student-distilled" / "final" / "config.json").exists(), demo
        script = script.replace(DEMO_LINE, f"ln -s {demo} qadist-demo")
    (tmp_path / "jobs").symlink_to(REPO / "jobs")
    (tmp_path / "walkthrough.sh").write_text("set -euo pipefail\nset -x\n" + script)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(["bash", "walkthrough.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=3000)  # fmt: skip
    finally:
        pid_file = tmp_path / "loop-demo" / "serve.pid"
        if pid_file.exists():  # the script's own `kill` did not run (it failed part way): stop the service
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stderr[-6000:] + (tmp_path / "loop-demo" / "serve.log").read_text()[-3000:]
    registry = ObjectRegistry(str(tmp_path / "loop-demo" / "registry"))
    assert registry.current()["version"] == 2 and registry.current()["previous"] == [1]
    verdict = json.loads((tmp_path / "loop-demo" / "eval" / "gen-1" / "verdict.json").read_text())
    assert verdict["promoted"] and verdict["day_metrics"]["total"] == 80
    pairs = json.loads((tmp_path / "loop-demo" / "pairs" / "_manifest.json").read_text())["counts"]
    print(f"[walkthrough] question log -> pairs: {pairs}; verdict: {verdict['reason']}")
    assert pairs["questions_in"] == pairs["questions_matched"] + pairs["questions_duplicate"] + pairs[
        "questions_rejected"]  # fmt: skip
    assert pairs["questions_in"] >= 40
    assert json.loads((tmp_path / "loop-demo" / "reply.json").read_text())["model_version"] == "2"
