"""Fault injection for moto's S3 server: a WSGI middleware wrapped around the running server's app.

Every client of the server goes through it: the test process, a CLI subprocess, and Ray workers
(they reach the server over HTTP on 127.0.0.1, so they see exactly what a real S3 endpoint under
trouble would show them). Rules match a method and a regular expression over the request's path
and query, and answer with:
- `503`:   503 SlowDown (S3's throttling answer), nothing stored;
- `500`:   500 InternalError, nothing stored;
- `drop`:  the connection closed after reading part of the request, no answer;
- `stall`: half the body read, then a pause of up to `seconds` (an upload in flight while the test
           kills its client), then the connection dropped: the request never completes;
- `lost_reply`: the request served (the object stored), then the connection closed before the
           answer (the client cannot tell whether its write happened);
- `403`:   403 InvalidAccessKeyId, for requests signed with `access_key` (bad credentials).
A rule faults its first `times` matches (None: every one). Every faulted request is recorded.
"""

from __future__ import annotations

import gc
import re
import socket
import threading
from dataclasses import dataclass, field

ERROR_BODY = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
ANSWERS = {
    "503": ("503 Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": ("403 Forbidden", "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
}


@dataclass
class Rule:
    kind: str  # 503 | 500 | drop | stall | lost_reply | 403
    method: str = "*"  # HTTP method, or * for any
    path: str = ".*"  # regex searched in "<path>?<query>" (path = /bucket/key)
    times: int | None = 1  # fault this many matching requests; None: all of them
    seconds: float = 0.0  # stall only
    access_key: str | None = None  # 403 only: requests signed with this key id
    hits: int = 0
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)  # ends a stall early

    def matches(self, method: str, target: str, auth: str) -> bool:
        if self.method != "*" and method != self.method:
            return False
        if self.access_key is not None and f"Credential={self.access_key}/" not in auth:
            return False
        return re.search(self.path, target) is not None and (self.times is None or self.hits < self.times)


class FaultInjector:
    """WSGI middleware: faults requests that match a rule, passes the rest to moto."""

    def __init__(self, app):
        self.app = app
        self.rules: list[Rule] = []
        self.injected: list[tuple[str, str, str]] = []  # (kind, method, target) of each faulted request
        self.requests: list[tuple[str, str]] = []  # (method, target) of every request, faulted or not
        self.lock = threading.Lock()

    def add(self, kind: str, **kwargs) -> Rule:
        rule = Rule(kind, **kwargs)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            for rule in self.rules:
                rule.release.set()
            self.rules.clear()
            self.injected.clear()
            self.requests.clear()

    def count(self, kind: str | None = None) -> int:
        return sum(1 for k, _, _ in self.injected if kind is None or k == kind)

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        target = environ.get("PATH_INFO", "") + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        with self.lock:
            self.requests.append((method, target))
            rule = next(
                (r for r in self.rules if r.matches(method, target, environ.get("HTTP_AUTHORIZATION", ""))), None
            )
            if rule is not None:
                rule.hits += 1
                self.injected.append((rule.kind, method, target))
        if rule is None:
            return self.app(environ, start_response)
        rule.entered.set()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if rule.kind == "stall":
            environ["wsgi.input"].read(length // 2)
            rule.release.wait(rule.seconds)
            self._drop(environ)
        if rule.kind == "lost_reply":
            result = self.app(environ, lambda status, headers, exc_info=None: lambda data: None)
            for _ in result:
                pass
            getattr(result, "close", lambda: None)()
            self._drop(environ)
        if length:  # read what the client sent, as a server does before answering
            environ["wsgi.input"].read(length // 2 if rule.kind == "drop" else length)
        if rule.kind == "drop":
            self._drop(environ)
        status, code, message = ANSWERS[rule.kind]
        body = ERROR_BODY.format(code=code, message=message).encode()
        # Connection: close, as S3 does after an error: the rest of an unread body must not be parsed as a request.
        start_response(
            status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), ("Connection", "close")]
        )
        return [body]

    @staticmethod
    def _drop(environ) -> None:
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        raise ConnectionResetError("fault injection: connection dropped")  # werkzeug treats it as a dropped connection


def install(endpoint_url: str) -> FaultInjector:
    """Wrap the app of the running moto server at `endpoint_url` (started in this process) with a
    FaultInjector, once; later calls return the same injector with its rules cleared."""
    from moto.server import ThreadedMotoServer

    port = int(endpoint_url.rsplit(":", 1)[1])
    for obj in gc.get_objects():
        if type(obj) is ThreadedMotoServer and obj._server is not None and obj._server.server_address[1] == port:
            server = obj._server
            break
    else:
        raise RuntimeError(f"no moto server of this process listens on {endpoint_url}")
    if not isinstance(server.app, FaultInjector):
        server.app = FaultInjector(server.app)
    server.app.clear()
    return server.app
