"""Writer leases: which runs are writing an output right now, so that `--overwrite` and the sweep
leave a live run's files alone.

A run holds `<out>/_writers/<host>-<pid>-<random>.json` while it works and renews it every
`RENEW_S` seconds from a daemon thread; a lease not renewed for `TTL_S` seconds (a killed process
elsewhere) no longer counts, nor does one whose process on this machine is gone. Rules
(docs/reliability.md, "Writers of one output"):
- `--overwrite` refuses while another run holds a lease; a run refuses while an `--overwrite` run
  holds one. Both write their lease before they look, so of two that start together at least one
  sees the other: both may refuse (a re-run goes through), neither deletes under the other.
- the sweep removes unlisted shards only when no other run holds a lease (they may be its
  uncommitted work).
Liveness compares the renewal time written by the holder with the reader's clock: drivers on
different machines need clocks within a fraction of `ttl_s` (NTP gives milliseconds).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from qadist import storage
from qadist.errors import UserError

LEASES = "_writers"
RENEW_S = 10.0
TTL_S = float(os.environ.get("QADIST_LEASE_TTL_S", "60"))


class Lease:
    """A writer's lease on `out`, held inside a `with` block."""

    def __init__(self, out: str, command: str, overwrite: bool = False):
        self.out = out
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command,
            "overwrite": overwrite,
            "started": time.time(),
        }
        self.name = f"{self.holder['host']}-{self.holder['pid']}-{uuid.uuid4().hex[:8]}.json"
        self.uri = storage.join(out, LEASES, self.name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="qadist-lease", daemon=True)

    def _write(self) -> None:
        storage.write_bytes(self.uri, json.dumps({**self.holder, "renewed": time.time()}).encode("utf-8"))

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self._write()
            except Exception:  # a transient store error: the next renewal tries again, well within the TTL
                pass

    def __enter__(self) -> "Lease":
        self._write()
        # The store's own time of the first write (S3: whole seconds): what the sweep compares with.
        self.stored_at = storage.modified(self.uri)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        storage.delete(self.uri)

    def others(self) -> list[dict[str, Any]]:
        """The live leases of other runs on this output. A lease whose holder ran on this machine and
        is gone (a killed driver) is dead at once and removed, as is one expired long ago."""
        live = []
        for name, holder in read_leases(self.out):
            if name == self.name:
                continue
            age = time.time() - holder["renewed"]
            gone = holder.get("host") == self.holder["host"] and not process_alive(int(holder.get("pid", 0)))
            if age < TTL_S and not gone:
                live.append(holder)
            elif gone or age > 10 * TTL_S:
                storage.delete(storage.join(self.out, LEASES, name))
        return live


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_leases(out: str) -> list[tuple[str, dict[str, Any]]]:
    folder = storage.join(out, LEASES)
    if not storage.exists(folder):
        return []
    found = []
    for uri in storage.list_files(folder, (".json",)):
        try:
            found.append((storage.basename(uri), json.loads(storage.read_text(uri))))
        except (OSError, ValueError):  # released, or being rewritten, as we listed
            continue
    return found


def describe(holder: dict[str, Any]) -> str:
    ago = time.time() - holder["renewed"]
    return f"`qadist {holder['command']}` pid {holder['pid']} on {holder['host']}, lease renewed {ago:.0f}s ago"


def check_writers(out: str, lease: Lease, exclusive: bool = False) -> None:
    """--overwrite never deletes under a live run, and no run writes under a live --overwrite
    (`exclusive`: no run at all writes beside another)."""
    others = lease.others()
    if exclusive and others:
        raise UserError(
            f"{out}: another run is writing this output ({describe(others[0])}); wait for it to finish, then re-run"
        )
    if lease.holder["overwrite"] and others:
        raise UserError(
            f"{out}: --overwrite refused: another run is writing this output ({describe(others[0])}); "
            "wait for it to finish or stop it, then re-run"
        )
    replacing = [o for o in others if o.get("overwrite")]
    if replacing:
        raise UserError(
            f"{out}: an --overwrite run is replacing this output ({describe(replacing[0])}); re-run when it is done"
        )
