"""The round trip through a real Label Studio server on 127.0.0.1: `qadist select`'s tasks and
labelling config imported with label-studio-sdk, a few annotated through the API, the export read
back by `qadist finetune`.

Label Studio pins other versions of some packages than qadist, so it usually lives in its own
environment: set QADIST_LABEL_STUDIO_PYTHON to that environment's python (with `label-studio` and
`label-studio-sdk` installed; `python -m venv ls && ls/bin/pip install label-studio label-studio-sdk`).
Without it the test uses this Python if it has both, and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_select import labelled, qadist, read_selected  # noqa: F401 (the fixture is shared)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
HERE = Path(__file__).resolve().parent


def label_studio_python() -> str | None:
    given = os.environ.get("QADIST_LABEL_STUDIO_PYTHON")
    if given:
        return given
    probe = subprocess.run([sys.executable, "-c", "import label_studio, label_studio_sdk"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    python = label_studio_python()
    if python is None:
        pytest.skip("no Label Studio: set QADIST_LABEL_STUDIO_PYTHON to a python with label-studio and its SDK")
    data = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": "qadist@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    exe = str(Path(python).parent / "label-studio")
    log = open(data / "server.log", "w")
    server = subprocess.Popen(
        [exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
         "--enable-legacy-api-token"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the first start migrates a fresh database
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Label Studio did not start:\n" + (data / "server.log").read_text()[-3000:])
            time.sleep(2)
        yield {"url": url, "token": token, "python": python}
    finally:
        server.terminate()  # the server this fixture started, by its pid
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_select_annotate_in_label_studio_export_finetune(label_studio, labelled, tiny_models, tmp_path):  # noqa: F811
    sel = str(tmp_path / "sel")
    assert (
        qadist("select", "--labels", labelled["both"], "--budget", "12", "--strategy", "margin", "--out", sel)[0] == 0
    )
    gold = {p["id"]: p["answers"] for p in labelled["pairs"]}
    gold_file = tmp_path / "gold.json"
    gold_file.write_text(json.dumps({r["id"]: gold[r["id"]] for r in read_selected(sel)}))
    export = tmp_path / "export.json"
    proc = subprocess.run(
        [
            label_studio["python"], str(HERE / "label_studio_client.py"), "--url", label_studio["url"],
            "--token", label_studio["token"], "--tasks", f"{sel}/label_studio_tasks.json",
            "--config", f"{sel}/label_studio_config.xml", "--gold", str(gold_file), "--annotate", "8",
            "--export", str(export),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    tasks = json.loads(export.read_text())
    assert len(tasks) == 12 and sum(1 for t in tasks if t["annotations"]) == 8
    from qadist.squad.io import read_pairs

    pairs, rejects = read_pairs(str(export), strict=False)
    assert len(pairs) == 8 and len(rejects) == 4 and all("not annotated yet" in r["reason"] for r in rejects)
    for p in pairs:  # Label Studio's offsets are the passage's characters: the gold span comes back as it went
        first = {k: v[:1] for k, v in gold[p["id"]].items()}  # the annotator marked SQuAD's first answer
        assert p["answers"] == first, (p["id"], p["answers"], first)
    ft = str(tmp_path / "ft")
    code, _ = qadist(
        "finetune", "--train-file", str(export), "--model", tiny_models["student"], "--out", ft, "--epochs", "1",
        "--batch-size", "4", "--max-seq-len", "128", "--doc-stride", "32",
    )  # fmt: skip
    assert code == 0 and (Path(ft) / "final" / "config.json").exists()
