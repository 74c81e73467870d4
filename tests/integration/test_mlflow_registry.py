"""The MLflow path against a real `mlflow server` on 127.0.0.1 (slow: the server runs from its own
venv, created once under ~/.cache/qadist-test-mlflow by tests/mlflow_server.py): `qadist promote
--registry mlflow://...` registers versions, moves the `champion` alias and logs the day's figures
to a run; `qadist serve --registry mlflow://...` follows the alias; --rollback moves it back; two
promotions at once: exactly one wins."""

from __future__ import annotations

import json
import threading

import pytest
from mlflow_server import start_server, stop_server
from test_cli import run_cli
from test_loop import FLAGS, wait_for_version
from test_serve import WINDOWS, free_port, get

from qadist.registry import RegistryConflict
from qadist.registry_mlflow import MlflowRegistry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop_server(proc)  # by its pid (its own process group)


def registry_uri(url: str, name: str) -> str:
    return f"mlflow://{url.removeprefix('http://')}/{name}"


def test_promote_logs_the_day_moves_the_alias_and_serve_follows(mlflow_url, tiny_models, squad_pairs, tmp_path,
                                                                capsys):  # fmt: skip
    from ray import serve

    from qadist.answer.serve import build_app, kill_collector, wait_ready
    from qadist.config import ServeConfig

    uri = registry_uri(mlflow_url, "qa-student")
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(p) + "\n" for p in squad_pairs[:20]))
    day = tmp_path / "metrics.json"
    day.write_text(json.dumps({"exact": 10.0, "f1": 12.5, "total": 20}))
    common = ["promote", "--registry", uri, "--eval-file", str(gold), "--day-metrics", str(day), *FLAGS]

    code, out, err = run_cli([*common, "--candidate", tiny_models["teacher_a"]], capsys)
    assert code == 0 and "version 1 is current" in out, err
    reg = MlflowRegistry(uri)
    assert reg.state()[0] == 1

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(registry=uri, registry_poll_s=0.5, num_cpus_per_replica=0.25, max_context_chars=20_000,
                      **WINDOWS)  # fmt: skip
    serve.run(build_app(cfg), name="mlflowloop", route_prefix="/mlflowloop")
    base = f"http://127.0.0.1:{port}/mlflowloop"
    try:
        assert wait_ready(base, timeout_s=180)["model_version"] == "1"
        body = {"question": "Which mount?", "context": "The camera uses the RF mount."}

        code, _, err = run_cli([*common, "--candidate", tiny_models["teacher_b"], "--min-gain", "1000"], capsys)
        assert code == 4 and "not promoted: f1" in err, err
        code, out, err = run_cli([*common, "--candidate", tiny_models["teacher_b"], "--min-gain", "-1000"], capsys)
        assert code == 0 and "version 2 is current" in out, err
        assert reg.client.get_model_version_by_alias("qa-student", "champion").version == "2"
        switch_s, _ = wait_for_version(f"{base}/answer", body, "2")
        print(f"\n[mlflow] the service followed the champion alias to version 2 in {switch_s:.1f}s (poll 0.5s)")

        experiment = reg.client.get_experiment_by_name("qadist-promote/qa-student")
        runs = reg.client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        assert [r.data.tags["qadist.verdict"] for r in runs] == ["promoted", "refused", "promoted"]
        last = runs[-1].data
        print(f"[mlflow] run metrics: {last.metrics}")
        assert {"candidate/f1", "current/f1", "gain/f1", "day/f1", "day/exact"} <= set(last.metrics)
        assert last.metrics["day/f1"] == 12.5
        assert last.params["promoted"] == "True" and last.params["current_version"] == "1"
        assert last.params["min_gain"] == "-1000.0" and last.params["version"] == "2"
        assert runs[1].data.params["promoted"] == "False" and "--min-gain" in runs[1].data.params["reason"]
        assert reg.record(2)["figures"]["f1"] == last.metrics["candidate/f1"]

        code, out, err = run_cli(["promote", "--registry", uri, "--rollback"], capsys)
        assert code == 0 and "current is version 1" in out, err
        back_s, _ = wait_for_version(f"{base}/answer", body, "1")
        print(f"[mlflow] rollback followed in {back_s:.1f}s")
        assert get(f"{base}/healthz")[1]["model_version"] == "1"
    finally:
        serve.delete("mlflowloop")
        kill_collector("mlflowloop")
        serve.shutdown()


def test_two_promotions_at_once_exactly_one_wins(mlflow_url, tmp_path):
    uri = registry_uri(mlflow_url, "race")
    folders = []
    for i in range(5):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"name": f"m{i}"}))
        folders.append(str(folder))
    seed = MlflowRegistry(uri)
    base = seed.publish(folders[0], {})
    seed.move(None, base, "first")
    candidates = [MlflowRegistry(uri) for _ in range(4)]
    versions = [reg.publish(f, {}) for reg, f in zip(candidates, folders[1:])]
    assert len(set(versions)) == 4  # MLflow numbers versions atomically
    barrier, outcome = threading.Barrier(4), []

    def promote(reg, version):
        barrier.wait()
        try:
            reg.move(base, version, "race")
            outcome.append(("won", version))
        except RegistryConflict:
            outcome.append(("lost", version))

    threads = [threading.Thread(target=promote, args=(r, v)) for r, v in zip(candidates, versions)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [v for what, v in outcome if what == "won"]
    print(f"\n[mlflow] 4 promotions at once: {outcome}")
    assert len(winners) == 1 and seed.state()[0] == winners[0] and seed.state()[2] == [base]
    with open(seed.current()["model"] + "/config.json") as f:
        assert json.load(f)["name"] == f"m{versions.index(winners[0]) + 1}"
