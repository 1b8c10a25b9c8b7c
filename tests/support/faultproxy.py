"""A fault-injecting HTTP proxy on loopback, for tests and benches that check clients survive a flaky server.

It forwards each request to one upstream (``moto_server``, an ``mlflow server``) and, for a seeded fraction of the
requests, injects a fault instead:

- ``reset``: the request is read, never forwarded, and the connection is reset (TCP RST);
- ``500`` / ``503``: an error answer (S3's ``InternalError`` / ``SlowDown`` XML), not forwarded;
- ``slow``: forwarded after ``slow_s`` seconds;
- ``truncate``: forwarded, but only half of the answer's body is sent before the connection is reset;
- ``cut_upload``: only half of the request's body is read, then the connection is reset (an upload interrupted
  mid-way; the upstream never sees the request);
- ``lost_reply``: forwarded (the upstream acts on it), then the connection is reset instead of answering.

``on_request(method, path, headers)`` sees every request. ``rule(method, path)`` may force a fault (or ``"none"``)
for chosen requests; otherwise each request draws from ``random.Random(seed)`` in arrival order, so the fraction is
as stated but which request gets which fault depends on thread timing. Every request is counted: ``counts`` per
fault kind, ``requests``, and ``retried`` (faulted requests that the client sent again: the same method, path and
Range). Loopback only.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlparse

KINDS = ("reset", "500", "503", "slow", "truncate")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        fraction: float = 0.0,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        slow_s: float = 0.3,
        rule: Callable[[str, str], str | None] | None = None,
        on_request: Callable[[str, str, dict], None] | None = None,
    ) -> None:
        parsed = urlparse(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"{upstream}: the proxy forwards to loopback only")
        self.upstream = (parsed.hostname, parsed.port)
        self.fraction, self.kinds, self.slow_s, self.rule = fraction, kinds, slow_s, rule
        self.on_request = on_request  # sees every request's method, path and headers (e.g. to check credentials)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.retried = 0
        self.seen: list[tuple[str, str, str]] = []  # (method, path, fault) in arrival order
        self._faulted: dict[tuple[str, str, str], list[str]] = {}  # (method, path, range) -> faults not yet retried
        self.server: _Server | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> FaultProxy:
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def injected(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind not in ("none", "slow"))

    def summary(self) -> dict:
        """Counts, and the faulted requests never sent again as they were (e.g. a read resumed at another Range)."""
        pending = [f"{m} {p} {r} ({', '.join(kinds)})".strip() for (m, p, r), kinds in self._faulted.items() if kinds]
        return {"requests": self.requests, "faults": dict(self.counts), "retried": self.retried, "not_retried": pending}

    def not_applied(self, method: str, path: str, byte_range: str, fault: str) -> None:
        """A drawn fault that could not be applied (a truncated answer with no body): count it as none."""
        with self.lock:
            self.counts[fault] -= 1
            self.counts["none"] += 1
            self._faulted[(method, path, byte_range)].remove(fault)

    # -------------------------------------------------------------------------------------------------- choice

    def choose(self, method: str, path: str, byte_range: str) -> str:
        forced = self.rule(method, path) if self.rule else None
        with self.lock:
            self.requests += 1
            key = (method, path, byte_range)
            if self._faulted.get(key):
                self._faulted[key].pop()
                self.retried += 1
            fault = forced or (self.random.choice(self.kinds) if self.random.random() < self.fraction else "none")
            self.counts[fault] += 1
            self.seen.append((method, path, fault))
            if fault not in ("none", "slow"):
                self._faulted.setdefault(key, []).append(fault)
            return fault


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that drops its connection (after a fault, or its own timeout) is expected: stay quiet."""


class _Handler(http.server.BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as clients' connection pools expect

    def log_message(self, *args) -> None:  # quiet
        pass

    def _any(self) -> None:
        if self.proxy.on_request is not None:
            self.proxy.on_request(self.command, self.path, dict(self.headers.items()))
        fault = self.proxy.choose(self.command, self.path, self.headers.get("Range", ""))
        if fault == "cut_upload":
            self._read_body(cut=True)
            return self._reset()
        body = self._read_body()
        if fault == "reset":
            return self._reset()
        if fault in ("500", "503"):
            return self._error(int(fault))
        if fault == "slow":
            time.sleep(self.proxy.slow_s)
        status, reason, headers, answer = self._forward(body)
        if fault == "truncate" and (self.command == "HEAD" or len(answer) < 2):
            self.proxy.not_applied(self.command, self.path, self.headers.get("Range", ""), fault)
            fault = "none"
        if fault == "lost_reply":
            return self._reset()
        self.send_response_only(status, reason)
        head = self.command == "HEAD"  # its Content-Length is the object's size, not this (empty) body's
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if fault == "truncate":
            self.wfile.write(answer[: len(answer) // 2])
            self.wfile.flush()
            return self._reset()
        if not head:
            self.wfile.write(answer)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any

    def _read_body(self, cut: bool = False) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if cut:
                    break
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length // 2 if cut else length)

    def _forward(self, body: bytes):
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            return response.status, response.reason, response.getheaders(), answer
        finally:
            connection.close()

    def _error(self, status: int) -> None:
        code, message = S3_ERRORS[status]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Close with RST (linger 0): the client sees a connection reset, not a clean end."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()
