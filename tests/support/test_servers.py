"""The test servers' own helpers: a port lost before the server binds is retried; a dead URL refuses connections."""

import socket
import sys
import urllib.error
import urllib.request

import pytest

from tests.support import servers


def test_a_server_whose_port_was_taken_starts_again_on_another(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # what another process does between free_port() and our server's bind
        ports = iter([taken.getsockname()[1]])
        real_free_port = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        tried = []

        def command(port: int) -> list[str]:
            tried.append(port)
            return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]

        with servers._serving(command, "/", wait_s=30) as url:
            assert urllib.request.urlopen(url, timeout=5).status == 200
        assert len(tried) == 2 and tried[0] == taken.getsockname()[1] and url.endswith(f":{tried[1]}")


def test_a_server_that_fails_for_another_reason_is_not_retried():
    tried = []

    def command(port: int) -> list[str]:
        tried.append(port)
        return [sys.executable, "-c", "raise SystemExit('bad flag')"]

    with pytest.raises(RuntimeError, match="did not start.*bad flag"), servers._serving(command, "/", wait_s=30):
        pass
    assert len(tried) == 1


def test_dead_url_refuses_connections_and_holds_its_port():
    with servers.dead_url() as url:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=2)
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
