"""The MLflow registry's logic without a server: URIs, dispatch, and the claimed move (two promotions
at once: exactly one wins) against an in-memory stand-in for MlflowClient that keeps MLflow's one
guarantee used (an experiment name is taken once, deleted or not) and its last-writer-wins alias.
The real server: tests/integration/test_mlflow_registry.py (slow)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from qadist.errors import UserError
from qadist.registry import RegistryConflict, open_registry
from qadist.registry_mlflow import MlflowRegistry, parse_uri


class Exists(Exception):
    error_code = "RESOURCE_ALREADY_EXISTS"


class FakeClient:
    def __init__(self):
        self.lock = threading.Lock()
        self.experiments: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def get_registered_model(self, name):
        time.sleep(0.01)  # a round trip: lets the racers interleave
        with self.lock:
            return SimpleNamespace(aliases=dict(self.aliases), tags=dict(self.tags))

    def create_experiment(self, name, tags=None):
        time.sleep(0.01)
        with self.lock:
            if name in self.experiments:
                raise Exists(f"Experiment(name={name}) already exists.")
            self.experiments[name] = str(len(self.experiments) + 1)
            return self.experiments[name]

    def delete_experiment(self, experiment_id):
        pass  # soft delete: the name stays taken

    def set_registered_model_alias(self, name, alias, version):
        time.sleep(0.01)
        self.aliases[alias] = version

    def set_registered_model_tag(self, name, key, value):
        self.tags[key] = value


def fake_registry(client: FakeClient) -> MlflowRegistry:
    reg = MlflowRegistry("mlflow://127.0.0.1:5000/student")
    reg.client = client
    return reg


def test_uris():
    assert parse_uri("mlflow://127.0.0.1:5000/qa-student") == ("http://127.0.0.1:5000", "qa-student")
    assert parse_uri("mlflows://mlflow.example.com/ml/qa") == ("https://mlflow.example.com/ml", "qa")
    with pytest.raises(UserError, match="no model name"):
        parse_uri("mlflow://127.0.0.1:5000/")
    assert isinstance(open_registry("mlflow://127.0.0.1:5000/qa"), MlflowRegistry)


def test_move_rollback_and_stale_expectation():
    client = FakeClient()
    reg = fake_registry(client)
    assert reg.state() == (None, 0, [])
    reg.move(None, 1, "first")
    reg.move(1, 2, "better")
    assert reg.state() == (2, 2, [1])
    with pytest.raises(RegistryConflict, match="moved to version 2 meanwhile"):
        reg.move(1, 3, "stale")
    assert reg.rollback()["version"] == 1 and reg.state() == (1, 3, [])
    with pytest.raises(UserError, match="nothing to roll back"):
        reg.rollback()


def test_two_promotions_at_once_exactly_one_wins_though_the_alias_is_last_writer_wins():
    client = FakeClient()
    fake_registry(client).move(None, 1, "first")
    barrier, outcome = threading.Barrier(4), []

    def promote(version):
        barrier.wait()
        try:
            fake_registry(client).move(1, version, "race")
            outcome.append(("won", version))
        except RegistryConflict as e:
            assert "claimed move 2" in str(e) or "meanwhile" in str(e)
            outcome.append(("lost", version))

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3, 4, 5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [v for what, v in outcome if what == "won"]
    assert len(winners) == 1 and client.aliases["champion"] == str(winners[0])
