"""The fault proxy the S3 and MLflow fault tests trust: each fault does what its name says to the client and to the
upstream, the counts and the seeded draw are as documented, and leaving the ``with`` block stops it cleanly (its
threads end, its port is free again). Everything runs on 127.0.0.1: a tiny upstream that records what reaches it."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import socket
import threading
import time

import pytest

from tests.support.faultproxy import FaultProxy

BODY = bytes(range(100))  # what the upstream answers to GET: 100 distinct bytes, so half of it is recognisable


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.received: list[tuple[str, str, bytes]] = []  # (method, path, body) of every request that reached it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    server: _Upstream
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append((self.command, self.path, body))
        answer = BODY if self.command in ("GET", "HEAD") else f"got {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_PUT = do_POST = do_HEAD = _any


@pytest.fixture
def upstream():
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _request(url: str, method: str = "GET", path: str = "/obj", body: bytes | None = None, headers: dict | None = None):
    """One request on a fresh connection: (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _raw(url: str, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes and read until the proxy closes: (everything received, whether it ended in a reset)."""
    port = int(url.rsplit(":", 1)[1])
    received, reset = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            received += chunk
    return received, reset


def _rule(fault: str):
    return lambda method, path: fault


def test_upstreams_other_than_loopback_are_refused():
    for upstream in ("http://10.0.0.1:9000", "http://example.com:80", "http://0.0.0.0:9000"):
        with pytest.raises(ValueError, match="loopback only"):
            FaultProxy(upstream)


def test_without_faults_requests_and_answers_pass_through_and_on_request_sees_each(upstream):
    seen = []
    with FaultProxy(upstream.url, on_request=lambda m, p, h: seen.append((m, p, h.get("X-Token")))) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:") and proxy.url != upstream.url
        status, headers, body = _request(proxy.url, "GET", "/bucket/key", headers={"X-Token": "t1"})
        assert (status, body, headers["X-Upstream"]) == (200, BODY, "yes")
        status, headers, body = _request(proxy.url, "PUT", "/bucket/key", body=b"x" * 10)
        assert (status, body) == (200, b"got 10")
        status, headers, body = _request(proxy.url, "HEAD", "/bucket/key")
        assert (status, body, headers["Content-Length"]) == (200, b"", "100")  # HEAD keeps the object's size
    assert upstream.received == [
        ("GET", "/bucket/key", b""),
        ("PUT", "/bucket/key", b"x" * 10),
        ("HEAD", "/bucket/key", b""),
    ]
    assert seen == [("GET", "/bucket/key", "t1"), ("PUT", "/bucket/key", None), ("HEAD", "/bucket/key", None)]
    assert proxy.requests == 3 and proxy.counts == {"none": 3} and proxy.injected == 0 and proxy.retried == 0
    assert proxy.seen == [
        ("GET", "/bucket/key", "none"),
        ("PUT", "/bucket/key", "none"),
        ("HEAD", "/bucket/key", "none"),
    ]


def test_reset_reads_the_request_never_forwards_it_and_resets_the_connection(upstream):
    with FaultProxy(upstream.url, rule=_rule("reset")) as proxy, pytest.raises(ConnectionResetError):
        _request(proxy.url, "PUT", "/k", body=b"abc")
    assert upstream.received == []
    assert proxy.counts == {"reset": 1} and proxy.injected == 1


@pytest.mark.parametrize(("fault", "code"), [("500", "InternalError"), ("503", "SlowDown")])
def test_error_faults_answer_s3s_error_xml_without_forwarding(upstream, fault, code):
    with FaultProxy(upstream.url, rule=_rule(fault)) as proxy:
        status, headers, body = _request(proxy.url, "GET", "/k")
    assert status == int(fault) and headers["Content-Type"] == "application/xml"
    assert f"<Code>{code}</Code>".encode() in body and b"<RequestId>faultproxy</RequestId>" in body
    assert int(headers["Content-Length"]) == len(body)
    assert upstream.received == []
    assert proxy.counts == {fault: 1} and proxy.injected == 1


def test_slow_forwards_after_slow_s_and_is_not_counted_as_injected(upstream):
    with FaultProxy(upstream.url, rule=_rule("slow"), slow_s=0.4) as proxy:
        start = time.monotonic()
        status, _, body = _request(proxy.url, "GET", "/k")
        elapsed = time.monotonic() - start
    assert (status, body) == (200, BODY) and elapsed >= 0.4
    assert upstream.received == [("GET", "/k", b"")]
    assert proxy.counts == {"slow": 1} and proxy.injected == 0
    assert proxy.summary()["not_retried"] == []  # a slow answer is no fault to retry


def test_truncate_sends_the_full_length_but_half_the_body_then_resets(upstream):
    with FaultProxy(upstream.url, rule=_rule("truncate")) as proxy:
        received, reset = _raw(proxy.url, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head.split(b"\r\n")
    assert body == BODY[:50] and reset
    assert upstream.received == [("GET", "/k", b"")]  # forwarded: the upstream answered in full
    assert proxy.counts == {"truncate": 1}


def test_truncate_of_an_answer_without_a_body_is_counted_as_none(upstream):
    with FaultProxy(upstream.url, rule=_rule("truncate")) as proxy:
        status, headers, body = _request(proxy.url, "HEAD", "/k")
    assert (status, body, headers["Content-Length"]) == (200, b"", "100")
    assert proxy.counts == {"truncate": 0, "none": 1} and proxy.injected == 0
    assert proxy.summary()["not_retried"] == []


def test_cut_upload_reads_half_the_body_and_resets_before_the_upstream_sees_it(upstream):
    with FaultProxy(upstream.url, rule=_rule("cut_upload")) as proxy:
        request = b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"u" * 100
        received, reset = _raw(proxy.url, request)
    assert received == b"" and reset
    assert upstream.received == []
    assert proxy.counts == {"cut_upload": 1} and proxy.injected == 1


def test_lost_reply_forwards_the_request_then_resets_instead_of_answering(upstream):
    with FaultProxy(upstream.url, rule=_rule("lost_reply")) as proxy:
        received, reset = _raw(proxy.url, b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    assert received == b"" and reset
    assert upstream.received == [("POST", "/k", b"body")]  # the upstream acted on it
    assert proxy.counts == {"lost_reply": 1}


def test_a_chunked_upload_reaches_the_upstream_whole_with_a_content_length(upstream):
    request = (
        b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    )
    with FaultProxy(upstream.url) as proxy:
        received, _ = _raw(proxy.url, request + b"GET /done HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert upstream.received[0] == ("PUT", "/k", b"abcdefg")
    assert received.count(b"HTTP/1.1 200") == 2 and b"got 7" in received  # keep-alive: two answers, one connection


def test_a_faulted_request_sent_again_counts_as_retried_one_sent_at_another_range_does_not(upstream):
    faults = iter(["500", "none", "503", "none"])
    with FaultProxy(upstream.url, rule=lambda method, path: next(faults)) as proxy:
        assert _request(proxy.url, "GET", "/a")[0] == 500
        assert _request(proxy.url, "GET", "/a")[0] == 200  # the same method, path and Range: a retry
        assert _request(proxy.url, "GET", "/b", headers={"Range": "bytes=0-9"})[0] == 503
        assert _request(proxy.url, "GET", "/b", headers={"Range": "bytes=5-9"})[0] == 200  # resumed elsewhere
    assert proxy.summary() == {
        "requests": 4,
        "faults": {"500": 1, "none": 2, "503": 1},
        "retried": 1,
        "not_retried": ["GET /b bytes=0-9 (503)"],
    }


def test_the_draw_is_the_seeds_a_rule_overrides_it_and_none_keeps_a_request_clean(upstream):
    fraction, seed, kinds = 0.5, 7, ("500", "503")
    draws = random.Random(seed)
    expected = [draws.choice(kinds) if draws.random() < fraction else "none" for _ in range(12)]
    assert {"none", "500", "503"} <= set(expected)  # the seed gives a mix worth checking
    with FaultProxy(upstream.url, fraction=fraction, seed=seed, kinds=kinds) as proxy:
        statuses = [_request(proxy.url, "GET", f"/k{i}")[0] for i in range(12)]  # one at a time: arrival order
    assert [fault for _, _, fault in proxy.seen] == expected
    assert statuses == [200 if fault == "none" else int(fault) for fault in expected]
    assert proxy.injected == sum(fault != "none" for fault in expected)

    forced = {"/forced": "503", "/clean": "none"}
    with FaultProxy(upstream.url, fraction=1.0, kinds=("500",), rule=lambda m, p: forced.get(p)) as proxy:
        assert [_request(proxy.url, "GET", p)[0] for p in ("/forced", "/clean", "/drawn")] == [503, 200, 500]
    assert proxy.counts == {"503": 1, "none": 1, "500": 1}


def test_leaving_the_block_ends_its_threads_and_frees_its_port(upstream):
    with FaultProxy(upstream.url, rule=_rule("slow"), slow_s=0.2) as proxy:
        port = proxy.server.server_address[1]
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a keep-alive client holding its connection
        kept.request("GET", "/k")
        assert kept.getresponse().read() == BODY
        threads = [
            t for t in threading.enumerate() if getattr(getattr(t, "_target", None), "__self__", None) is proxy.server
        ]
        assert len(threads) == 2  # serve_forever and the kept connection's handler
        kept.close()
    for thread in threads:
        thread.join(5)
    assert not [t for t in threads if t.is_alive()]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with contextlib.closing(socket.socket()) as again:  # as a new server would: nothing listens there any more
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
