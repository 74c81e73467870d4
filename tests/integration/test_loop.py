"""The loop, served for real (Ray Serve on 127.0.0.1, HTTP): the question log written off the request
path, /metrics, the registry followed without a restart, the promote gate and rollback; and (slow)
the log read back by `qadist pairs` -> `label` -> `distill`, every logged question accounted for."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_cli import run_cli
from test_serve import WINDOWS, free_port, get, post

from qadist import storage
from qadist.registry import ObjectRegistry
from qadist.rows import read_jsonl

pytestmark = pytest.mark.usefixtures("ray_local")
FLAGS = ["--max-seq-len", "192", "--doc-stride", "64", "--batch-size", "8", "--cpu"]


def logged_rows(uri: str) -> list[dict]:
    if not storage.exists(uri):
        return []
    return [r for f in storage.list_files(uri, (".jsonl",)) for r in read_jsonl(f)]


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        return r.read().decode()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))  # fmt: skip


def wait_for_version(url: str, body: dict, version: str, timeout_s: float = 60) -> tuple[float, list[dict]]:
    started, seen = time.monotonic(), []
    while time.monotonic() - started < timeout_s:
        status, reply = post(url, body)
        assert status == 200, reply
        seen.append(reply)
        if reply["model_version"] == version:
            return time.monotonic() - started, seen
        time.sleep(0.2)
    raise AssertionError(f"still serving {seen[-1]['model_version']} after {timeout_s}s, not {version}")


@pytest.fixture(scope="module")
def loop(tiny_models, tmp_path_factory):
    from ray import serve

    from qadist.answer.serve import build_app, kill_collector, wait_ready
    from qadist.config import ServeConfig

    root = tmp_path_factory.mktemp("loop")
    registry = ObjectRegistry(str(root / "registry"))
    registry.move(None, registry.publish(tiny_models["teacher_a"], {"verdict": "seed"}), "seed")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=registry.uri, registry_poll_s=0.5, log_questions=str(root / "log"), log_roll_s=1.0,
        num_cpus_per_replica=0.25, max_context_chars=20_000, **WINDOWS,
    )  # fmt: skip
    serve.run(build_app(cfg), name="loop", route_prefix="/loop")
    base = f"http://127.0.0.1:{port}/loop"
    wait_ready(base, timeout_s=180)
    yield {"base": base, "registry": registry, "log": str(root / "log"), "root": root}
    kill_collector("loop")
    serve.shutdown()  # the next module's serve.start gets its own port


def test_answers_name_their_version_and_are_logged_off_the_request_path(loop, squad_pairs):
    asked = squad_pairs[:20]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: post(f"{loop['base']}/answer", {k: p[k] for k in ("question", "context")}),
                                asked))  # fmt: skip
    assert all(status == 200 for status, _ in replies)
    ids = {r["request_id"] for _, r in replies}
    assert len(ids) == 20 and {r["model_version"] for _, r in replies} == {"1"}
    status, batch = post(f"{loop['base']}/answer/batch", [{"question": "Which mount?", "context": "The RF mount."}])
    assert status == 200 and batch[0]["model_version"] == "1"
    ids.add(batch[0]["request_id"])
    deadline = time.monotonic() + 30  # rolled every second: in the log without a stop
    while not ids <= {r["request_id"] for r in logged_rows(loop["log"])} and time.monotonic() < deadline:
        time.sleep(0.3)
    rows = {r["request_id"]: r for r in logged_rows(loop["log"])}
    assert ids <= set(rows)
    one = rows[replies[0][1]["request_id"]]
    assert set(one) == {"id", "request_id", "question", "context", "model_version", "answer",
                        "no_answer_probability", "time"}  # fmt: skip
    assert one["question"] == asked[0]["question"] and one["answer"] == replies[0][1]["answer"]
    parts = storage.list_files(loop["log"], (".jsonl",))
    assert all(p.split("/")[-2].startswith("date=20") for p in parts)

    deadline = time.monotonic() + 15  # replicas push their counts every second
    while time.monotonic() < deadline:
        text = metrics_text(loop["base"])
        if metric(text, "qadist_question_log_rows_written_total") >= 21:
            break
        time.sleep(0.5)
    print("\n" + "\n".join(line for line in text.splitlines() if line.startswith("qadist_") and "bucket" not in line))
    assert metric(text, 'qadist_requests_total{code="200",path="/answer"}') >= 20
    assert metric(text, "qadist_question_log_rows_written_total") >= 21
    assert metric(text, "qadist_question_log_rows_dropped_total") == 0
    assert metric(text, "qadist_request_latency_seconds_count") >= 21
    assert "# TYPE qadist_request_latency_seconds histogram" in text


def test_promote_gate_follow_bad_version_and_rollback(loop, tiny_models, squad_pairs, tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(p) + "\n" for p in squad_pairs[:20]))
    reg, url = loop["registry"], f"{loop['base']}/answer"
    body = {"question": "Which mount?", "context": "The camera uses the RF mount."}
    common = ["promote", "--registry", reg.uri, "--eval-file", str(gold), *FLAGS]

    code, _, err = run_cli([*common, "--candidate", tiny_models["teacher_b"], "--min-gain", "1000"], capsys)
    assert code == 4 and "not promoted: f1" in err and "--min-gain" in err, err  # refused: one line, the figure
    assert [line for line in err.splitlines() if line.startswith("qadist:")] == [err.strip().splitlines()[-1]]
    assert reg.current()["version"] == 1

    verdict = tmp_path / "verdict.json"
    code, out, err = run_cli([*common, "--candidate", tiny_models["teacher_b"], "--min-gain", "-1000",
                              "--out", str(verdict)], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(verdict.read_text())["version"] == 2 == reg.current()["version"]
    switch_s, _ = wait_for_version(url, body, "2")
    print(f"\n[loop] promotion followed in {switch_s:.1f}s (poll 0.5s)")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    reg.move(2, reg.publish(str(broken), {"verdict": "forced, for the test"}), "a version that cannot load")
    deadline = time.monotonic() + 30
    while "registry_error" not in get(f"{loop['base']}/healthz")[1] and time.monotonic() < deadline:
        time.sleep(0.3)
    health = get(f"{loop['base']}/healthz")[1]
    assert "version 3 failed to load, still serving 2" in health["registry_error"], health
    assert post(url, body)[1]["model_version"] == "2"

    code, out, err = run_cli(["promote", "--registry", reg.uri, "--rollback"], capsys)
    assert code == 0 and "current is version 2" in out, err
    code, out, err = run_cli(["promote", "--registry", reg.uri, "--rollback"], capsys)
    assert code == 0 and "current is version 1" in out, err
    back_s, _ = wait_for_version(url, body, "1")
    print(f"[loop] rollback followed in {back_s:.1f}s")
    assert "registry_error" not in get(f"{loop['base']}/healthz")[1]


@pytest.mark.slow
def test_the_log_is_paired_labelled_and_distilled_every_question_accounted_for(
    tiny_models, squad_sample, squad_pairs, tmp_path, capsys
):
    """Serve with --log-questions (its own app), send questions over HTTP, stop cleanly (the log is
    flushed: 0 lost), then `qadist pairs --questions <log>` -> `label` -> `distill`."""
    from ray import serve

    from qadist.answer.serve import build_app, kill_collector, wait_ready
    from qadist.config import ServeConfig
    from qadist.encoder import build_tiny_encoder

    log_uri = str(tmp_path / "log")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(model=tiny_models["teacher_a"], log_questions=log_uri, log_roll_s=3600, num_cpus_per_replica=0.25,
                      max_context_chars=20_000, **WINDOWS)  # fmt: skip
    serve.run(build_app(cfg), name="logonly", route_prefix="/logonly")
    base = f"http://127.0.0.1:{port}/logonly"
    wait_ready(base, timeout_s=180)
    asked = squad_pairs[:40] + squad_pairs[:3]  # three asked twice: merged as identical by pairs
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: post(f"{base}/answer", {k: p[k] for k in ("question", "context")}), asked))
    assert all(status == 200 for status, _ in replies)
    assert logged_rows(log_uri) == []  # a one-hour roll window: nothing written before the stop
    serve.delete("logonly")  # a clean stop: the replica's log writes everything it holds
    kill_collector("logonly")
    serve.shutdown()
    rows = logged_rows(log_uri)
    assert sorted(r["request_id"] for r in rows) == sorted(r["request_id"] for _, r in replies)  # 0 lost

    articles = json.loads(open(squad_sample).read())["data"]
    docs = tmp_path / "documents.jsonl"
    docs.write_text("".join(json.dumps({"id": f"a{a}p{n}", "text": p["context"]}) + "\n"
                            for a, art in enumerate(articles) for n, p in enumerate(art["paragraphs"])))  # fmt: skip
    encoder = build_tiny_encoder(str(tmp_path / "encoder"))
    out = tmp_path / "run"
    windows = ["--max-seq-len", "128", "--doc-stride", "32"]
    code, _, err = run_cli(["pairs", "--questions", log_uri, "--documents", str(docs), "--out", f"{out}/pairs",
                            "--model", encoder, "--top-k", "1"], capsys)  # fmt: skip
    assert code == 0, err
    counts = json.loads((out / "pairs" / "_manifest.json").read_text())["counts"]
    print(f"\n[loop] {len(rows)} logged questions -> pairs: {counts}")
    assert counts["questions_in"] == len(rows) == len(asked)
    assert counts["questions_in"] == counts["questions_matched"] + counts["questions_duplicate"] + counts[
        "questions_rejected"]  # fmt: skip
    assert counts["questions_duplicate"] == 3
    code, _, err = run_cli(["label", "--pairs", f"{out}/pairs/pairs", "--out", f"{out}/labels", "--teacher",
                            tiny_models["teacher_a"], *windows], capsys)  # fmt: skip
    assert code == 0, err
    label = json.loads((out / "labels" / "_manifest.json").read_text())["counts"]
    assert label["pairs_in"] == counts["pairs_out"] == label["pairs_labeled"] + label["pairs_rejected"]
    code, _, err = run_cli(["distill", "--labels", f"{out}/labels", "--student", tiny_models["student"], "--out",
                            f"{out}/student", "--epochs", "1", "--batch-size", "8", *windows], capsys)  # fmt: skip
    assert code == 0, err
    assert (out / "student" / "final" / "config.json").exists()
