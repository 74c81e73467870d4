"""The model registry on object storage: immutable versions and a `current` pointer moved by a
conditional write (`qadist promote` writes it, `qadist serve --registry` reads it).

    URI/versions/<n>/version.json   the version's record, written first (claims n: a conditional create)
    URI/versions/<n>/model/...      the model folder (a save_pretrained or `qadist export` folder)
    URI/current.json                {"version": n, "model": URI/versions/<n>/model, "previous": [...], ...}
    URI/verdicts/<time>-<id>.json   every gate's verdict, promoted or not

A version is never written again once claimed. `current.json` moves by compare-and-swap: on S3 a PUT
with `If-Match: <the ETag read>` (or `If-None-Match: *` for the first), answered 412 when someone
else moved it since; locally an exclusive lock around read, compare and an atomic rename. So of two
promotions at once exactly one moves the pointer; a reader sees the old pointer or the new, whole.
`previous` is the stack of versions `current` pointed to before, so a rollback pops it.

An `mlflow://HOST:PORT/NAME` URI is MLflow's Model Registry instead, with the same interface
(qadist/registry_mlflow.py: versions of a registered model, `current` = the alias `champion`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from qadist import storage
from qadist.errors import UserError

POINTER = "current.json"


class RegistryConflict(UserError):
    """Another promotion (or rollback) moved `current` between this one's read and its write."""

    exit_code = 5


def open_registry(uri: str) -> Any:
    """The registry behind `uri`: object storage, or MLflow for mlflow:// URIs."""
    if uri.startswith(("mlflow://", "mlflows://")):
        from qadist.registry_mlflow import MlflowRegistry

        return MlflowRegistry(uri)
    return ObjectRegistry(uri)


class ObjectRegistry:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    # Reading ------------------------------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        """The pointer (`version`, `model`, `previous`, ...), or None before the first promotion."""
        data, _ = self._read_pointer()
        return data

    def model_uri(self, version: int) -> str:
        return storage.join(self.uri, "versions", str(version), "model")

    def record(self, version: int) -> dict[str, Any]:
        return json.loads(storage.read_bytes(storage.join(self.uri, "versions", str(version), "version.json")))

    def versions(self) -> list[int]:
        fs, path = storage.resolve(storage.join(self.uri, "versions"))
        try:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        except FileNotFoundError:
            return []
        names = [f.path.rstrip("/").rsplit("/", 1)[-1] for f in found if f.type == pafs.FileType.Directory]
        return sorted(int(n) for n in names if n.isdigit())

    # Writing ------------------------------------------------------------------------------------
    def publish(self, folder: str, record: dict[str, Any]) -> int:
        """Copy a model folder in as a new immutable version; its number. The number is claimed by a
        conditional create of `version.json`, so two publishers never share one."""
        files = storage.list_files(folder)
        if not any(storage.basename(f) == "config.json" for f in files):
            raise UserError(f"{folder}: no config.json there; give a model folder (e.g. <out>/final of a distill run)")
        n = (self.versions() or [0])[-1] + 1
        body = {**record, "created": time.time(), "source": folder}
        while not storage.write_if_absent(
            storage.join(self.uri, "versions", str(n), "version.json"),
            json.dumps({**body, "version": n}, indent=1).encode(),
        ):
            n += 1
        root = folder.rstrip("/")
        for f in files:
            storage.write_bytes(storage.join(self.model_uri(n), f[len(root) + 1 :]), storage.read_bytes(f))
        return n

    def move(self, expected: int | None, new: int, reason: str, previous: list[int] | None = None) -> dict[str, Any]:
        """Point `current` at version `new` if it still points at `expected` (None: nothing yet);
        RegistryConflict otherwise. `previous` (default: the old stack plus `expected`) is the stack
        a rollback pops."""
        with self._locked():
            data, tag = self._read_pointer()
            now = data["version"] if data else None
            if now != expected:
                raise RegistryConflict(
                    f"{self.uri}: current moved to version {now} meanwhile (expected {expected}); "
                    "run qadist promote again to compare the candidate with it"
                )
            if previous is None:
                previous = [*(data or {}).get("previous", []), *([expected] if expected is not None else [])]
            pointer = {
                "version": new,
                "model": self.model_uri(new),
                "previous": previous,
                "reason": reason,
                "moved_at": time.time(),
            }
            if not self._write_pointer(json.dumps(pointer, indent=1).encode(), tag):
                raise RegistryConflict(
                    f"{self.uri}: current was moved by another promotion at the same moment; "
                    "run qadist promote again to compare the candidate with the new current"
                )
            return pointer

    def rollback(self) -> dict[str, Any]:
        data = self.current()
        if not data or not data.get("previous"):
            raise UserError(f"{self.uri}: nothing to roll back to (current has no previous version)")
        *rest, back = data["previous"]
        return self.move(data["version"], back, f"rollback from version {data['version']}", previous=rest)

    def write_verdict(self, verdict: dict[str, Any]) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        uri = storage.join(self.uri, "verdicts", f"{stamp}-{uuid.uuid4().hex[:8]}.json")
        storage.write_bytes(uri, json.dumps(verdict, indent=1).encode())
        return uri

    # The pointer's compare-and-swap ---------------------------------------------------------------
    def _pointer_uri(self) -> str:
        return storage.join(self.uri, POINTER)

    def _read_pointer(self) -> tuple[dict[str, Any] | None, str | None]:
        """(pointer, tag): the tag is the S3 ETag, or a hash of the bytes locally."""
        uri = self._pointer_uri()
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            from botocore.exceptions import ClientError

            try:
                r = storage.s3_client().get_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            return json.loads(r["Body"].read()), r["ETag"]
        if not storage.exists(uri):
            return None, None
        data = storage.read_bytes(uri)
        return json.loads(data), hashlib.sha256(data).hexdigest()

    def _write_pointer(self, data: bytes, tag: str | None) -> bool:
        uri = self._pointer_uri()
        if not storage.is_s3(uri):  # under the lock (`_locked`): the read above is still true
            storage.write_bytes(uri, data)
            return True
        if tag is None:
            return storage.write_if_absent(uri, data)
        from botocore.exceptions import ClientError

        bucket, key = storage.split_s3(uri)
        try:
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=tag)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    @contextlib.contextmanager
    def _locked(self):
        """Locally, an exclusive lock file beside the pointer (S3: nothing; the conditional PUT decides)."""
        if storage.is_s3(self.uri):
            yield
            return
        import fcntl

        _, path = storage.resolve(self.uri)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, ".current.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
