"""`qadist serve`: real Ray Serve applications on 127.0.0.1, driven over HTTP.

Three apps share one Serve instance on the session's Ray: a checkpoint (`/plain`), the same model
exported to ONNX (`/onnx`), and the model with the SQuAD sample's paragraphs as documents
(`/withdocs`); a fourth with tiny queues (`/tight`) shows overload as 503s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_cli import run_cli

WINDOWS = {"max_seq_len": 192, "doc_stride": 64, "batch_size": 1}  # one window per forward: no padding
WINDOW_FLAGS = ["--max-seq-len", "192", "--doc-stride", "64", "--batch-size", "1", "--cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body, timeout: float = 60.0) -> tuple[int, dict | list]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, {"detail": text.decode("utf-8", "replace")}


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.fixture(scope="module")
def sample_pairs(squad_pairs) -> list[dict]:
    return squad_pairs[:30]


@pytest.fixture(scope="module")
def documents(squad_sample, tmp_path_factory) -> tuple[str, list[dict]]:
    """The first 6 paragraphs of each of the sample's articles as documents (54 of them, 6 per topic);
    a question of each, with its doc_id."""
    data = json.loads(open(squad_sample).read())
    docs, questions = [], []
    for article in data["data"]:
        for i, paragraph in enumerate(article["paragraphs"][:6]):
            doc_id = f"{article['title']}#{i}"
            docs.append({"id": doc_id, "text": paragraph["context"], "title": article["title"]})
            questions += [{"question": qa["question"], "doc_id": doc_id} for qa in paragraph["qas"][:1]]
    path = tmp_path_factory.mktemp("serve-docs") / "documents.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path), questions


@pytest.fixture(scope="module")
def served(ray_local, tiny_models, documents, tmp_path_factory):
    from ray import serve

    from qadist.answer.serve import build_app, wait_ready
    from qadist.cli import main
    from qadist.config import ServeConfig

    export = tmp_path_factory.mktemp("serve-export") / "teacher-onnx"
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", tiny_models["teacher_a"], "--out", str(export), *WINDOW_FLAGS])
    assert e.value.code == 0
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {**WINDOWS, "num_cpus_per_replica": 0.25, "max_context_chars": 20_000, "max_batch_questions": 60}
    apps = {
        "plain": ServeConfig(model=tiny_models["teacher_a"], **common),
        "onnx": ServeConfig(model=str(export), **common),
        "withdocs": ServeConfig(model=tiny_models["teacher_a"], documents=documents[0], top_k=1, **common),
        "tight": ServeConfig(
            model=tiny_models["teacher_a"],
            **{**common, "batch_size": 64},
            max_batch_size=1,
            max_ongoing_requests=1,
            max_queued_requests=1,
        ),
    }
    for name, cfg in apps.items():
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{port}"
    for name in apps:
        wait_ready(f"{base}/{name}", timeout_s=180)
    yield {"base": base, "export": str(export)}
    serve.shutdown()


def test_answers_match_qadist_predict(served, tiny_models, sample_pairs, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in sample_pairs))
    for app, model in (("plain", tiny_models["teacher_a"]), ("onnx", served["export"])):
        preds = tmp_path / f"{app}.json"
        code, _, err = run_cli(
            ["predict", "--model", model, "--data", str(data), "--out", str(preds), *WINDOW_FLAGS], capsys
        )
        assert code == 0, err
        expected = json.loads(preds.read_text())
        for p in sample_pairs:
            status, body = post(f"{served['base']}/{app}/answer", {"question": p["question"], "context": p["context"]})
            assert status == 200, body
            assert body["answer"] == expected[p["id"]], (app, p["id"])
            if body["answer"]:
                assert p["context"][body["start"] : body["end"]] == body["answer"]
            else:
                assert body["start"] == body["end"] == -1
            assert 0.0 <= body["no_answer_probability"] <= 1.0 and "doc_id" not in body
        status, batch = post(
            f"{served['base']}/{app}/answer/batch",
            [{"question": p["question"], "context": p["context"]} for p in sample_pairs],
        )
        assert status == 200 and [b["answer"] for b in batch] == [expected[p["id"]] for p in sample_pairs]


def test_healthz_and_openapi(served):
    status, body = get(f"{served['base']}/plain/healthz")
    assert status == 200 and body["status"] == "ok" and body["backend"] == "pytorch"
    assert get(f"{served['base']}/onnx/healthz")[1]["backend"] == "onnxruntime"
    status, spec = get(f"{served['base']}/plain/openapi.json")
    assert status == 200 and {"/answer", "/answer/batch", "/healthz"} <= set(spec["paths"])
    with urllib.request.urlopen(f"{served['base']}/plain/docs", timeout=30) as r:
        assert r.status == 200


OK = {"question": "Which mount?", "context": "The camera uses the RF mount."}


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        ("answer", b'{"question": "Which mount?"', 400, "malformed JSON"),
        ("answer", {"context": "c"}, 422, "body.question"),
        ("answer", {"question": 3, "context": "c"}, 422, "body.question"),
        ("answer", {"question": "", "context": "c"}, 422, "body.question"),
        ("answer", {"question": "   ", "context": "c"}, 422, "body.question"),
        ("answer", b'{"question": "lone \\ud800 surrogate", "context": "c"}', 422, "body.question"),
        ("answer", {"question": "q", "context": "c", "contxt": "typo"}, 422, "body.contxt"),
        ("answer", {"question": "q"}, 422, "body.context"),
        ("answer", {"question": "q", "context": "x" * 1_000_000}, 413, "body.context"),
        ("answer", [OK], 422, "body"),
        ("answer/batch", OK, 422, "body"),
        ("answer/batch", [OK, {"question": None, "context": "c"}], 422, "body.1.question"),
        ("answer/batch", [OK] * 61, 413, "61 questions"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(served, path, body, status, field):
    got, reply = post(f"{served['base']}/plain/{path}", body)
    assert got == status, reply
    assert isinstance(reply["detail"], str) and field in reply["detail"], reply


def documents_replies(served, questions) -> list[dict]:
    status, replies = post(f"{served['base']}/withdocs/answer/batch", [{"question": q["question"]} for q in questions])
    assert status == 200 and len(replies) == len(questions)
    return replies


def test_questions_without_context_are_answered_from_their_document(served, documents):
    _, questions = documents
    replies = documents_replies(served, questions)
    right = sum(r["doc_id"] == q["doc_id"] for r, q in zip(replies, questions))
    print(f"\n[serve --documents] the SQuAD paragraph of {right}/{len(questions)} questions (54 paragraphs, top_k=1)")
    assert right >= 0.7 * len(questions)  # 6 paragraphs of one article per topic: a hard retrieval
    status, one = post(f"{served['base']}/withdocs/answer", {"question": questions[0]["question"]})
    assert status == 200 and one["doc_id"] == replies[0]["doc_id"]
    texts = {d["id"]: d["text"] for d in map(json.loads, open(documents[0]))}
    assert all(r["answer"] in texts[r["doc_id"]] for r in replies)  # each answer is a span of its document
    status, given = post(f"{served['base']}/withdocs/answer", OK)  # a context given is answered as is
    assert status == 200 and "doc_id" not in given


@pytest.mark.slow
def test_the_document_is_the_one_qadist_pairs_picks(served, documents, tmp_path, capsys):
    """The service matches a question to documents with the pairing stage's encoder and index: the
    doc_id it answers from is the one `qadist pairs --top-k 1` pairs the question with."""
    docs, questions = documents
    replies = documents_replies(served, questions)
    asked = tmp_path / "questions.jsonl"
    asked.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": q["question"]}) + "\n" for i, q in enumerate(questions))
    )
    code, _, err = run_cli(
        ["pairs", "--questions", str(asked), "--documents", docs, "--out", str(tmp_path / "p")], capsys
    )
    assert code == 0, err
    paired = {}
    for part in sorted((tmp_path / "p" / "pairs").glob("*.jsonl")):
        paired.update({row["id"]: row["doc_id"] for row in map(json.loads, part.read_text().splitlines())})
    assert [r["doc_id"] for r in replies] == [paired[f"q{i}"] for i in range(len(questions))]


def test_overload_gets_503_not_a_wait_or_a_crash(served, squad_pairs):
    long = {
        "question": squad_pairs[0]["question"],
        "context": " ".join(p["context"] for p in squad_pairs[:12])[:19_000],
    }
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda _: post(f"{served['base']}/tight/answer", long, timeout=120)[0], range(48)))
    print(
        f"\n[serve overload] 48 requests from 24 clients, queue 1: {codes.count(200)} x 200, {codes.count(503)} x 503"
    )
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    assert post(f"{served['base']}/tight/answer", OK)[0] == 200  # and it answers again afterwards


def plain_replicas() -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::plain#QAService#")  # the model replicas, not the ingress
    )


@pytest.mark.slow
def test_a_killed_replica_is_replaced(served):
    import ray

    (before,) = plain_replicas()
    ray.kill(ray.get_actor(before, namespace="serve"), no_restart=True)
    deadline, status = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        status, _ = post(f"{served['base']}/plain/answer", OK, timeout=10)
        if status == 200 and plain_replicas() and plain_replicas() != [before]:
            break
        time.sleep(1)
    assert status == 200
    assert len(plain_replicas()) == 1 and plain_replicas() != [before]


@pytest.mark.slow
def test_the_readme_curl_against_qadist_serve(tiny_models, tmp_path):
    """`qadist serve` as a user starts it (its own embedded Ray), then the README's curl, as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    curl = re.search(r"^curl .*/answer .*$(?:\n^  .*$)*", readme, re.M)
    assert curl, "README: no curl example for /answer"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qadist.cli", "serve", "--model", tiny_models["teacher_a"], "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # the command says when it is ready
            lines.append(line)
            if "ready at" in line:
                break
        assert "ready at" in lines[-1], "".join(lines)
        command = curl.group(0).replace("8000", str(port)).replace("\\\n", " ")
        reply = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert reply.returncode == 0, reply.stderr
        body = json.loads(reply.stdout)
        assert set(body) >= {"answer", "start", "end", "score", "no_answer_probability"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out
