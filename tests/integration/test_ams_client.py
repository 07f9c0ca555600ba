"""`tandem.client.Client` against a real AMS on a real socket: failover from a
refused URL within 1 s, the remembered URL, no blind retry of a POST that may
have happened, bounded timeouts, and errors carrying the server's code/field."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.client import Client, ClientError, HTTPStatusError, Unreachable
from tests.support.ams import InProcessAms
from tests.support.harness import free_port

PROJECT = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9000"}]}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[InProcessAms, str]]:
    with InProcessAms(tmp_path / "ams") as ams, ams.serve() as url:
        yield ams, url


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        sock.close()


def test_refused_first_url_fails_over_within_one_second(live: tuple[InProcessAms, str]) -> None:
    ams, url = live
    refused = f"http://127.0.0.1:{free_port()}"
    with Client(f"{refused};{url}", token=ams.token, timeout=5) as client:
        t0 = time.monotonic()
        assert client.get("/api/v1/projects") == []
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed
        assert client.base_url == url, "the URL that worked is remembered"
        t0 = time.monotonic()
        created = client.post("/api/v1/projects", json=PROJECT)
        assert created["name"] == "pets" and time.monotonic() - t0 < 1.0
    assert ams.store.get("ams.projects", "pets") is not None


def test_all_refused_is_unreachable_quickly() -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    with Client(urls, token="t") as client:
        t0 = time.monotonic()
        with pytest.raises(Unreachable) as err:
            client.get("/api/v1/projects")
        assert time.monotonic() - t0 < 1.0
    for u in urls:
        assert u in str(err.value)


def test_a_post_that_may_have_happened_is_not_retried(live: tuple[InProcessAms, str], silent_url: str) -> None:
    ams, url = live
    with Client([silent_url, url], token=ams.token, timeout=0.5) as client:
        t0 = time.monotonic()
        with pytest.raises(ClientError) as err:
            client.post("/api/v1/projects", json=PROJECT)
        assert "not retried" in str(err.value) and time.monotonic() - t0 < 2.0
        assert ams.store.get("ams.projects", "pets") is None
        # an idempotent read moves on after the bounded read timeout
        t0 = time.monotonic()
        assert client.get("/api/v1/projects") == []
        assert time.monotonic() - t0 < 2.0


def test_http_errors_carry_code_and_field(live: tuple[InProcessAms, str]) -> None:
    ams, url = live
    with Client(url, token=ams.token) as client:
        with pytest.raises(HTTPStatusError) as err:
            client.post("/api/v1/projects", json={**PROJECT, "targets": [{"url": "gopher://x"}]})
        assert err.value.status == 422 and err.value.field == "targets[0].url" and err.value.exit_code == 1
        assert "targets[0].url" in str(err.value)
    with Client(url, token="wrong") as client, pytest.raises(HTTPStatusError) as err:
        client.get("/api/v1/projects")
    assert err.value.status == 401 and err.value.code == "unauthorized"
