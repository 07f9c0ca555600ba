"""The gateway's client-side limits and path rule (issue 13, findings 3, 5, 7), through real servers.

One AMS and one AGS (`Workers = 1`, so the per-process limits are the
gateway's) started through the CLI, the limits set as profile keys in
milliseconds (small, so the tests are quick), an echo backend that logs what
reached it. Every wait is a poll with a deadline; every socket is loopback.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.ags import raw_request
from tests.support.harness import CliCluster, logged_requests, wait_for

HEADER_MS, BODY_MS, SEND_MS, KEEPALIVE_MS, MAX_CONNECTIONS = 1000, 1000, 1000, 2000, 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, backend: tuple[str, Path]) -> Iterator[CliCluster]:
    c = CliCluster(tmp_path_factory.mktemp("gwhard"), workers=1,
                   ags_env={"TANDEM_GATEWAY_MAX_UPSTREAM_CONNECTIONS": "4", "TANDEM_GATEWAY_CONNECT_TIMEOUT": "2"})
    try:
        c.set_profile("AGS", f"gateway.ClientHeaderTimeout={HEADER_MS}", f"gateway.ClientBodyTimeout={BODY_MS}",
                      f"gateway.SendTimeout={SEND_MS}", f"gateway.KeepAliveTimeout={KEEPALIVE_MS}",
                      f"gateway.MaxConnections={MAX_CONNECTIONS}")
        c.start("AMS")
        c.start("AGS")
        url, _ = backend
        c.deploy("pub", "/pub", url + "/public")
        c.deploy("priv", "/priv", url + "/private", [{"type": "api-key"}])
        c.deploy("c", "/c", url + "/c")
        wait_for(lambda: c.gateway_get("/c/ready").status_code == 200, 10, "projects served")
        yield c
    finally:
        c.close()


def _port(c: CliCluster) -> int:
    return c.ports["AGS"][0]


def _code(body: bytes) -> str:
    return str(json.loads(body)["code"])


def _refused(c: CliCluster) -> dict[str, float]:
    text = httpx.get(c.ha_url("AGS") + "/metrics", timeout=5).text
    return {m[1]: float(m[2]) for m in re.finditer(r'^tandem_gateway_refused_total\{reason="(\w+)"\} (\S+)$',
                                                  text, re.M)}


def _read_until_closed(s: socket.socket, deadline_s: float) -> tuple[bytes, bool]:
    """What the server sent until it closed the connection (True) or the deadline passed (False)."""
    s.settimeout(0.1)
    got = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def test_encoded_slash_cannot_reach_the_private_path(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    """Finding 3: /pub (no policy) and /priv (api-key) share a backend; no spelling of
    `/pub/../private/...` gets a private path to it. Before: `..%2f` reached /public/..%2fprivate/..."""
    _, log = backend
    before = len(logged_requests(log))
    status, _, body = raw_request(_port(cluster), b"GET /priv/secret.txt HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, _code(body)) == (401, "missing_credentials")
    for path in (b"/pub/..%2fprivate/secret.txt", b"/pub/..%2Fprivate/secret.txt", b"/pub/..%5cprivate/secret.txt",
                 b"/pub/..%5Cprivate/secret.txt", b"/pub/..\\private/secret.txt", b"/pub/..;/private/secret.txt",
                 b"/pub/%2e%2e%2fprivate/secret.txt", b"/pub/x%00/../../private/secret.txt"):
        status, _, body = raw_request(_port(cluster), b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (status, _code(body)) == (400, "bad_request"), path
        assert "must not contain" in json.loads(body)["message"], path
    # the query is not the path: an encoded slash there is the backend's business
    status, _, body = raw_request(_port(cluster), b"GET /pub/ok?next=%2Fa%3Bb HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and json.loads(body)["path"] == "/public/ok"
    arrived = [r["path"] for r in logged_requests(log)[before:]]
    assert arrived == ["/public/ok"], arrived


def test_a_dripped_head_gets_408_within_the_header_timeout(cluster: CliCluster) -> None:
    """ClientHeaderTimeout counts from the head's first byte: one byte every 0.2 s does not extend it.
    Before: the head's timer restarted on every byte (and the profile key was read as seconds)."""
    with socket.create_connection(("127.0.0.1", _port(cluster)), timeout=5) as s:
        s.sendall(b"GET /c/drip HTTP/1.1\r\nHost: a\r\n")
        t0 = time.monotonic()
        got, closed = b"", False
        for byte in b"X-Drip: " + b"y" * 200:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            got, closed = _read_until_closed(s, 0.2)
            if closed or got:
                break
            if time.monotonic() - t0 > 6:
                break
        took = time.monotonic() - t0
        if not closed:
            more, closed = _read_until_closed(s, 1.0)
            got += more
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert closed and took < HEADER_MS / 1000 + 1.5, f"closed={closed} after {took:.2f} s"


def test_a_stalled_body_gets_408_and_never_completes_upstream(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    """ClientBodyTimeout: the longest gap between body reads. Before: 75 s (the idle timeout)."""
    _, log = backend
    before = len(logged_requests(log))
    with socket.create_connection(("127.0.0.1", _port(cluster)), timeout=5) as s:
        s.sendall(b"POST /c/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
        t0 = time.monotonic()
        got, closed = _read_until_closed(s, 5)
        took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got[:200]
    assert closed and took < BODY_MS / 1000 + 1.5, f"closed={closed} after {took:.2f} s"
    assert [r for r in logged_requests(log)[before:] if r["path"] == "/c/stall"] == []


def test_an_idle_keep_alive_connection_is_closed(cluster: CliCluster) -> None:
    """KeepAliveTimeout, counted from the end of the last exchange. Before: 75 s, the profile key unread."""
    with socket.create_connection(("127.0.0.1", _port(cluster)), timeout=5) as s:
        s.sendall(b"GET /c/once HTTP/1.1\r\nHost: a\r\n\r\n")
        s.settimeout(5)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        t0 = time.monotonic()
        _, closed = _read_until_closed(s, 6)
        took = time.monotonic() - t0
    assert closed and KEEPALIVE_MS / 1000 - 0.3 < took < KEEPALIVE_MS / 1000 + 1.5, f"{closed} {took:.2f} s"


def test_clients_that_stop_reading_do_not_pin_the_upstream_connections(cluster: CliCluster) -> None:
    """SendTimeout: 12 clients ask for 50 MB and read nothing, with 4 upstream connections per target.
    Before: they held all 4 forever and every other request to the target got 504."""
    port = _port(cluster)
    stuck: list[socket.socket] = []
    try:
        for i in range(12):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /c/bytes?n=50000000&i=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            stuck.append(s)

        def served() -> bool:
            return httpx.get(cluster.gateway_url + "/c/fine", timeout=5, trust_env=False).status_code == 200
        wait_for(served, 15, "a reading client served while others read nothing", interval=0.2)
        # and the gateway dropped the ones that read nothing (each gets EOF or a reset once its buffer is read)
        s0 = stuck[0]
        s0.settimeout(0.5)
        deadline = time.monotonic() + 15
        ended = False
        while time.monotonic() < deadline and not ended:
            try:
                ended = s0.recv(1 << 20) == b""
            except TimeoutError:
                continue
            except ConnectionResetError:
                ended = True
        assert ended, "a client that read nothing was not dropped"
    finally:
        for s in stuck:
            s.close()
    wait_for(lambda: _refused(cluster).get("send_timeout", 0) >= 1, 5, "send_timeout counted")


def test_connections_past_max_connections_get_503(cluster: CliCluster) -> None:
    """MaxConnections per serving process: the next connection gets 503 too_many_connections and is
    closed; the refusals are logged (rate-limited) and counted. Before: no cap."""
    port = _port(cluster)
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        status, _, body = raw_request(port, b"GET /c/over HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
        assert (status, _code(body)) == (503, "too_many_connections")
        status, _, _ = raw_request(port, b"GET /c/over HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
        assert status == 503
        wait_for(lambda: "refused with 503 too_many_connections" in cluster.log_text("AGS"), 5, "refusal logged")
        # two refusals within the 10 s interval: one line (the second is counted in the next one)
        assert cluster.log_text("AGS").count("refused with 503 too_many_connections") == 1
    finally:
        for s in held:
            s.close()
    wait_for(lambda: raw_request(port, b"GET /c/after HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)[0] == 200, 10,
             "served again once connections closed")


def test_every_limit_is_counted_on_metrics(cluster: CliCluster) -> None:
    def all_counted() -> dict[str, float] | None:
        got = _refused(cluster)
        want = ("header_timeout", "body_timeout", "send_timeout", "keepalive_timeout", "max_connections")
        return got if all(got.get(r, 0) >= 1 for r in want) else None
    wait_for(all_counted, 5, "tandem_gateway_refused_total for each reason")
