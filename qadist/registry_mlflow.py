"""The model registry on MLflow's Model Registry: the same interface as the object-storage one
(qadist/registry.py), so `qadist promote` and `qadist serve --registry` work unchanged.

    mlflow://HOST:PORT/MODEL_NAME           tracking server at http://HOST:PORT
    mlflows://HOST:PORT/MODEL_NAME          the same over https
    mlflow://HOST:PORT/PREFIX/MODEL_NAME    a server behind a path prefix (http://HOST:PORT/PREFIX)

Credentials come from MLflow's own environment (`MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`
/ `_PASSWORD`), never from the URI or a config. The client is `mlflow-skinny` (`pip install
qadist[mlflow]`): the full `mlflow` package pins an older pyarrow than qadist needs; run the server
from its own environment.

What lives where:
- a **version** is a model version of the registered model MODEL_NAME; its files (the candidate's
  model folder) are the artifact `model/` of the promote run that published it, and its tags hold
  the gate's figures;
- **current** is the alias `champion`; the stack a rollback pops is the registered model's tag
  `qadist.previous` (JSON list), the count of moves its tag `qadist.moves`;
- each `qadist promote` is one run of the experiment `qadist-promote/MODEL_NAME`: its params (the
  candidate, the current version, the files, `min_gain`, the verdict), its metrics (`candidate/f1`,
  `current/f1`, `gain/f1`, with `silver_f1` likewise, and the day's evaluate metrics under `day/`),
  and `verdict.json` as an artifact.

Two promotions at once. MLflow numbers model versions atomically, but `set_registered_model_alias`
is a plain last-writer-wins write with no compare-and-swap, so re-reading the alias after setting it
cannot decide a race (both writers may read their own value back). The move therefore claims its
slot first: move k+1 (k = `qadist.moves` read with the alias) creates the experiment
`MODEL_NAME.qadist-move-<k+1>`; the tracking store refuses a second experiment of one name (also a
deleted one), so exactly one promotion claims it and moves the alias; the other gets
RegistryConflict (exit 5). The claim is deleted (soft: its name stays taken) once the move is done.
A promotion killed between its claim and the `qadist.moves` update leaves every later move refused
with a message naming the claim; once no promotion is running, set the tag `qadist.moves` to the
claim's number (the MLflow UI or `MlflowClient.set_registered_model_tag`) and promote again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

from qadist.errors import UserError
from qadist.registry import RegistryConflict

ALIAS = "champion"
MOVES, PREVIOUS, REASON = "qadist.moves", "qadist.previous", "qadist.reason"


def parse_uri(uri: str) -> tuple[str, str]:
    """mlflow[s]://HOST:PORT[/PREFIX]/MODEL_NAME -> (tracking URI, model name)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mlflow", "mlflows") or not parts.netloc:
        raise UserError(f"{uri}: not an MLflow registry URI; give mlflow://HOST:PORT/MODEL_NAME")
    prefix, _, name = parts.path.strip("/").rpartition("/")
    if not name:
        raise UserError(f"{uri}: no model name; give mlflow://HOST:PORT/MODEL_NAME")
    scheme = "https" if parts.scheme == "mlflows" else "http"
    return f"{scheme}://{parts.netloc}{'/' + prefix if prefix else ''}", name


def is_already_exists(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(error)


def is_not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


class MlflowRegistry:
    def __init__(self, uri: str):
        try:
            from mlflow import MlflowClient
        except ImportError as e:
            raise UserError(
                f"{uri}: an MLflow registry needs the MLflow client: pip install 'qadist[mlflow]' (mlflow-skinny)"
            ) from e
        self.uri = uri
        self.tracking_uri, self.name = parse_uri(uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.run_id: str | None = None

    # Reading ------------------------------------------------------------------------------------
    def state(self) -> tuple[int | None, int, list[int]]:
        """(the champion version or None, moves so far, the rollback stack), from one read."""
        try:
            model = self.client.get_registered_model(self.name)
        except Exception as e:
            if is_not_found(e):
                return None, 0, []
            raise
        aliases, tags = model.aliases or {}, model.tags or {}
        version = aliases.get(ALIAS)
        return (
            (int(version) if version is not None else None),
            int(tags.get(MOVES, 0)),
            json.loads(tags.get(PREVIOUS, "[]")),
        )

    def current(self) -> dict[str, Any] | None:
        """The pointer (`version`, `model` = a local copy of the version's files, `previous`), or None."""
        version, moves, previous = self.state()
        if version is None:
            return None
        return {"version": version, "model": self.local_copy(version), "previous": previous, "moves": moves}

    def model_uri(self, version: int) -> str:
        return f"models:/{self.name}/{version}"

    def record(self, version: int) -> dict[str, Any]:
        mv = self.client.get_model_version(self.name, str(version))
        return json.loads((mv.tags or {}).get("qadist.record", "{}"))

    def versions(self) -> list[int]:
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(int(v.version) for v in found)

    def local_copy(self, version: int) -> str:
        """The version's model folder, downloaded once per machine (a folder named after the URI and version)."""
        key = hashlib.sha256(f"{self.tracking_uri}/{self.name}/{version}".encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), "qadist-models", f"mlflow-{key}")
        if os.path.exists(os.path.join(folder, ".complete")):
            return folder
        from mlflow.artifacts import download_artifacts

        source = self.client.get_model_version(self.name, str(version)).source
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        staging = tempfile.mkdtemp(prefix="qadist-mlflow-", dir=os.path.dirname(folder))
        got = download_artifacts(artifact_uri=source, dst_path=staging, tracking_uri=self.tracking_uri)
        open(os.path.join(got, ".complete"), "w").close()
        try:
            os.rename(got, folder)  # atomic: a concurrent reader on this machine wins or finds it done
        except OSError:
            pass
        return folder

    # Writing ------------------------------------------------------------------------------------
    def run(self) -> str:
        """This promotion's run (created on first use) in the experiment qadist-promote/MODEL_NAME."""
        if self.run_id is None:
            experiment = f"qadist-promote/{self.name}"
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                try:
                    experiment_id = self.client.create_experiment(experiment)
                except Exception as e:
                    if not is_already_exists(e):
                        raise
                    experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                experiment_id = found.experiment_id
            self.run_id = self.client.create_run(experiment_id, tags={"mlflow.runName": "qadist promote"}).info.run_id
        return self.run_id

    def publish(self, folder: str, record: dict[str, Any]) -> int:
        """Log the model folder as the run's `model/` artifact and register it as a new version."""
        from qadist import models

        local = models.local_model(folder)
        if not os.path.exists(os.path.join(local, "config.json")):
            raise UserError(f"{folder}: no config.json there; give a model folder (e.g. <out>/final of a distill run)")
        run_id = self.run()
        self.client.log_artifacts(run_id, local, artifact_path="model")
        try:
            self.client.create_registered_model(self.name, description="qadist students promoted by qadist promote")
        except Exception as e:
            if not is_already_exists(e):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
        text = json.dumps({**record, "source": folder, "created": time.time()}, default=str)
        mv = self.client.create_model_version(
            self.name, source, run_id=run_id, tags={"qadist.record": text[:4900], "qadist.source": folder}
        )
        return int(mv.version)

    def move(self, expected: int | None, new: int, reason: str, previous: list[int] | None = None) -> dict[str, Any]:
        """Move the alias to `new` if it is still at `expected`: claim move k+1 first (one experiment
        name: one winner), then set the alias and the tags. RegistryConflict when another got there first."""
        now, moves, stack = self.state()
        if now != expected:
            raise RegistryConflict(
                f"{self.uri}: {ALIAS} moved to version {now} meanwhile (expected {expected}); "
                "run qadist promote again to compare the candidate with it"
            )
        claim = f"{self.name}.qadist-move-{moves + 1}"
        try:
            claim_id = self.client.create_experiment(claim, tags={"from": str(expected), "to": str(new)})
        except Exception as e:
            if not is_already_exists(e):
                raise
            raise RegistryConflict(
                f"{self.uri}: another promotion claimed move {moves + 1} of {ALIAS} at the same moment (MLflow "
                f"experiment {claim!r}); run qadist promote again to compare the candidate with the new current"
            ) from e
        if previous is None:
            previous = [*stack, *([expected] if expected is not None else [])]
        self.client.set_registered_model_alias(self.name, ALIAS, str(new))
        self.client.set_registered_model_tag(self.name, PREVIOUS, json.dumps(previous))
        self.client.set_registered_model_tag(self.name, REASON, reason[:4900])
        self.client.set_registered_model_tag(self.name, MOVES, str(moves + 1))
        self.client.delete_experiment(claim_id)  # a deleted experiment keeps its name: the claim stays taken
        if self.run_id is not None:
            self.client.set_tag(self.run_id, "qadist.moved_to", str(new))
        return {"version": new, "model": self.model_uri(new), "previous": previous, "reason": reason}

    def rollback(self) -> dict[str, Any]:
        now, _, stack = self.state()
        if now is None or not stack:
            raise UserError(f"{self.uri}: nothing to roll back to ({ALIAS} has no previous version)")
        *rest, back = stack
        return self.move(now, back, f"rollback from version {now}", previous=rest)

    def write_verdict(self, verdict: dict[str, Any]) -> str:
        """Log the gate's figures, parameters and verdict to this promotion's run, and end it."""
        run_id = self.run()
        figures = verdict.get("figures") or {}
        metrics: dict[str, float] = {}
        for side in ("candidate", "current"):
            for name, value in (figures.get(side) or {}).items():
                metrics[f"{side}/{name}"] = float(value)
        for name, value in (figures.get("candidate") or {}).items():
            if (figures.get("current") or {}).get(name) is not None:
                metrics[f"gain/{name}"] = float(value) - float(figures["current"][name])
        for name, value in (verdict.get("day_metrics") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"day/{name}"] = float(value)
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, value)
        params = {k: verdict.get(k) for k in ("candidate", "current_version", "min_gain", "eval_file", "silver_file",
                                              "promoted", "version", "reason", "conflict")}  # fmt: skip
        for name, value in params.items():
            if value is not None:
                self.client.log_param(run_id, name, str(value)[:6000])
        self.client.set_tag(run_id, "qadist.verdict", "promoted" if verdict.get("promoted") else "refused")
        self.client.log_text(run_id, json.dumps(verdict, indent=1, default=str), "verdict.json")
        self.client.set_terminated(run_id, "FAILED" if verdict.get("conflict") else "FINISHED")
        return f"{self.tracking_uri}/#/experiments/{self.client.get_run(run_id).info.experiment_id}/runs/{run_id}"
