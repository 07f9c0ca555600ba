"""Hostile and careless input against a real AMS process (`tandem server`, issue 13):
import that would empty the configuration, huge and deep bodies, slow, idle and
too many connections, names and key material. Each limit is also seen on the
HA port's /metrics. Limits are set small in the profile's [admin] section so
the deadlines are seen within seconds."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.config import init_home, set_profile_values
from tests.support.harness import Home, Server, fresh_ports, http_get, wait_for

HEADER_TIMEOUT = 2.0  # s (AdminHeaderTimeout below)
IDLE_TIMEOUT = 2.0  # s (AdminIdleTimeout)
MAX_CONNECTIONS = 8
MAX_BODY = 8 * 1024 * 1024  # the default


class Ams:
    def __init__(self, server: Server, home: Path) -> None:
        self.server, self.home = server, home
        self.port = server.client_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = home / "profiles" / "server1" / "AMS" / "data" / "admin.token"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=20)

    def lsn(self) -> int:
        st = self.server.status()
        assert st is not None
        return int(st["lsn"])

    def pid(self) -> int:
        st = self.server.status()
        assert st is not None
        return int(st["pid"])

    def metrics(self) -> str:
        code, body = http_get(f"{self.server.ha}/metrics", timeout=2)
        assert code == 200, body
        return str(body)

    def refused(self, reason: str) -> int:
        m = re.search(rf'^tandem_admin_refused_total{{reason="{reason}"}} (\d+)', self.metrics(), re.M)
        return int(m.group(1)) if m else -1


@pytest.fixture(scope="module")
def ams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ams]:
    path = tmp_path_factory.mktemp("hardening") / "home"
    init_home(path)
    fresh_ports(path)
    set_profile_values(path, "server1/AMS", [f"admin.AdminHeaderTimeout={int(HEADER_TIMEOUT * 1000)}",
                                             f"admin.AdminBodyTimeout={int(HEADER_TIMEOUT * 1000)}",
                                             f"admin.AdminIdleTimeout={int(IDLE_TIMEOUT * 1000)}",
                                             f"admin.AdminMaxConnections={MAX_CONNECTIONS}"])
    home = Home(path)
    try:
        server = home.server("server1/AMS").start()
        wait_for(lambda: server.active_code() == 200 or (server.proc is not None and server.proc.poll() is not None),
                 20, "AMS active")
        assert server.active_code() == 200, server.output()
        a = Ams(server, path)
        wait_for(lambda: http_get(f"{a.url}/api/v1/health")[0] == 200 and a.token_file.exists(), 10,
                 "admin token written")
        yield a
    finally:
        home.cleanup()


def _connect(ams: Ams) -> socket.socket:
    return socket.create_connection(("127.0.0.1", ams.port), timeout=10)


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (or `deadline`, monotonic)."""
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes, float]:
    """(closed by the server, what it sent, after how many s), waiting at most `seconds`."""
    t0 = time.monotonic()
    data = _read_all(sock, t0 + seconds)
    elapsed = time.monotonic() - t0
    return elapsed < seconds, data, elapsed


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


PROJECT = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9/v1"}]}


# ---- finding 2: import ----

def test_import_requires_format_and_version_and_never_empties_a_deployed_configuration(ams: Ams) -> None:
    with ams.client() as c:
        if c.get("/api/v1/projects/pets").status_code == 404:
            assert c.post("/api/v1/projects", json=PROJECT).status_code == 201
            assert c.post("/api/v1/consumers", json={"name": "acme"}).status_code == 201
        job = c.post("/api/v1/projects/pets/deploy", json={"environment": "default"}).json()
        wait_for(lambda: c.get(f"/api/v1/deployments/{job['id']}").json()["status"] == "deployed", 10, "deployed")
        before = c.get("/api/v1/export").json()
        for body, field in (({}, "format"), ({"format": "tandem-ams"}, "version"), ({"version": 1}, "format")):
            r = c.post("/api/v1/import", json=body)
            assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
        for query in ("", "?prune=true"):
            r = c.post(f"/api/v1/import{query}", json={"format": "tandem-ams", "version": 1})
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "deployed" and r.json()["names"] == ["pets (default)"], r.text
            assert "pets" in r.json()["message"]
        # the deployed project kept, the consumer left out: deleted only with prune
        doc = {**before, "consumers": []}
        r = c.post("/api/v1/import", json=doc)
        assert r.status_code == 409 and r.json()["code"] == "would_delete" and r.json()["names"] == ["consumer acme"]
        assert c.get("/api/v1/export").json() == before, "a refused import changed something"  # lsn: audit entries
        assert c.post("/api/v1/import?prune=true", json=doc).status_code == 200
        assert c.get("/api/v1/consumers").json() == []
        assert [p["name"] for p in c.get("/api/v1/projects").json()] == ["pets"]


# ---- finding 6: body size and depth ----

def test_an_87_mb_body_gets_413_at_once_and_memory_stays_bounded(ams: Ams) -> None:
    pid = ams.pid()
    rss0 = _rss_mb(pid)
    size = 87 * 1024 * 1024
    head = (f"POST /api/v1/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ams.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()
    t0 = time.monotonic()
    with _connect(ams) as s:
        s.sendall(head + b'{"projects": [')
        data = _read_all(s, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert time.monotonic() - t0 < 2.0, "413 must come before the body is read"
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "body_too_large" and str(MAX_BODY) in body["message"], body
    # no Content-Length (chunked): counted as it streams, refused at the limit
    chunk = b"[" * (1024 * 1024)
    head = (f"POST /api/v1/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ams.token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    sent = 0
    latencies: list[float] = []
    stop = threading.Event()

    def sample() -> None:  # the event loop (which runs the HA work) keeps answering
        while not stop.is_set() and len(latencies) < 1000:
            t = time.monotonic()
            http_get(f"{ams.server.ha}/ha/status", timeout=2)
            latencies.append(time.monotonic() - t)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with _connect(ams) as s:
        s.sendall(head)
        try:
            for _ in range(87):  # at most 87 MiB
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_all(s, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 413") or sent < 87 * len(chunk), (sent, data[:200])
    assert sent < 40 * len(chunk), f"the server read {sent} bytes of a body past its {MAX_BODY} byte limit"
    # unauthenticated: 401 without the body being buffered
    with _connect(ams) as s:
        s.sendall(head.replace(f"Bearer {ams.token}".encode(), b"Bearer wrong"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        data = _read_all(s, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    stop.set()
    sampler.join(5)
    assert latencies and max(latencies) < 1.0, f"the HA port stalled {max(latencies):.2f} s during the flood"
    rss1 = _rss_mb(pid)
    assert rss1 - rss0 < 100, f"AMS RSS grew from {rss0:.0f} to {rss1:.0f} MB"
    assert ams.refused("body_too_large") >= 2
    assert http_get(f"{ams.url}/api/v1/health")[0] == 200


def test_deep_json_is_refused_before_it_is_used(ams: Ams) -> None:
    lsn = ams.lsn()
    with ams.client() as c:
        for depth in (65, 100_000):
            body = "[" * depth + "]" * depth
            r = c.post("/api/v1/projects", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, r.text[:300]
            assert r.json()["code"] == "too_deep" and "64" in r.json()["message"], r.text[:300]
        # YAML (OpenAPI import) is parsed in a thread and held to the same depth, and to a node budget
        deep_yaml = ("openapi: 3.0.3\ninfo: {title: t, version: '1'}\nservers: [{url: 'http://127.0.0.1:9'}]\n"
                     "paths: {/a: {get: {}}}\nx-deep: " + "[" * 100 + "]" * 100 + "\n")
        bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
        for text in (deep_yaml, bomb):
            t0 = time.monotonic()
            r = c.post("/api/v1/import/openapi", content=text, headers={"Content-Type": "application/yaml"})
            assert r.status_code == 422 and "AdminMaxJSONDepth" in r.json()["message"], r.text[:300]
            assert time.monotonic() - t0 < 10
        nested: Any = {"name": "deep", "context_path": "/deep", "targets": [{"url": "http://127.0.0.1:9"}]}
        ok = c.post("/api/v1/projects", json={**nested, "description": "x"})
        assert ok.status_code == 201, "a normal body is not affected"
        assert c.delete("/api/v1/projects/deep").status_code == 204
    assert ams.lsn() >= lsn + 2  # the two writes, plus the refusals' audit entries (issue 18)
    assert ams.refused("json_too_deep") >= 2


# ---- finding 5: slow, idle and too many connections ----

def test_a_dripping_request_head_is_closed_at_the_deadline(ams: Ams) -> None:
    before = ams.refused("header_timeout")
    request = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(ams) as s:
        t0 = time.monotonic()
        closed_at = None
        for byte in request[:-1]:  # one byte a second, never the whole head
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
            s.settimeout(1.0)
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            closed_at = time.monotonic() - t0
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
            break
    assert closed_at is not None, "a client dripping a byte a second was never closed"
    assert closed_at < HEADER_TIMEOUT + 1.5, f"closed after {closed_at:.1f} s; the deadline is {HEADER_TIMEOUT} s"
    wait_for(lambda: ams.refused("header_timeout") > before, 2, "header_timeout counted")


def test_a_stalled_request_body_is_closed_at_the_body_deadline(ams: Ams) -> None:
    """AdminBodyTimeout: a declared body whose bytes stop coming is cut (408), the
    connection closed, the refusal counted."""
    before = ams.refused("body_timeout")
    with _connect(ams) as s:
        s.sendall(f"POST /api/v1/consumers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ams.token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\": ".encode())
        closed, data, elapsed = _closed_within(s, HEADER_TIMEOUT + 4)
    assert closed, "a stalled body kept its connection"
    assert elapsed >= HEADER_TIMEOUT - 0.3, elapsed
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
    wait_for(lambda: ams.refused("body_timeout") > before, 2, "body_timeout counted")


def test_a_connection_that_never_sends_is_closed(ams: Ams) -> None:
    with _connect(ams) as s:
        closed, data, elapsed = _closed_within(s, HEADER_TIMEOUT + 3)
    assert closed, "a silent connection stayed open"
    assert elapsed >= HEADER_TIMEOUT - 0.3 and (data == b"" or data.startswith(b"HTTP/1.1 408")), (elapsed, data)


def test_an_idle_keep_alive_connection_is_closed(ams: Ams) -> None:
    before = ams.refused("idle_timeout")
    with _connect(ams) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        closed, _, elapsed = _closed_within(s, IDLE_TIMEOUT + 3)
    assert closed and elapsed >= IDLE_TIMEOUT - 0.3, elapsed
    wait_for(lambda: ams.refused("idle_timeout") > before, 2, "idle_timeout counted")


def test_past_the_connection_cap_new_connections_get_503(ams: Ams) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(_connect(ams))
        wait_for(lambda: re.search(r"^tandem_admin_connections (\d+)", ams.metrics(), re.M) is not None and int(
            re.search(r"^tandem_admin_connections (\d+)", ams.metrics(), re.M).group(1)) >= MAX_CONNECTIONS,  # type: ignore[union-attr]
            HEADER_TIMEOUT / 2, "connections counted")
        with _connect(ams) as extra:
            extra.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = _read_all(extra, time.monotonic() + 3)
        assert data.startswith(b"HTTP/1.1 503"), data[:200]
        assert b"too_many_connections" in data and b"close" in data.lower()
    finally:
        for s in held:
            s.close()
    assert ams.refused("too_many_connections") >= 1
    wait_for(lambda: http_get(f"{ams.url}/api/v1/health")[0] == 200, 5, "serving again below the cap")
    assert ams.server.output().count("too_many_connections") <= 1, "logged at most once a minute"


# ---- finding 7: names and key material ----

def test_names_outside_the_alphabet_and_garbage_keys_are_422(ams: Ams) -> None:
    lsn = ams.lsn()
    with ams.client() as c:
        for bad in ("gw\x00", "gw\nX-Injected: 1", "a b", "../x", "", "x" * 65):
            r = c.post("/api/v1/gateway-tokens", json={"name": bad})
            assert r.status_code == 422 and r.json()["field"] == "name", (bad, r.text)
            r = c.post("/api/v1/projects", json={**PROJECT, "name": bad})
            assert r.status_code == 422 and r.json()["field"] == "name", (bad, r.text)
            r = c.post("/api/v1/consumers", json={"name": bad})
            assert r.status_code == 422 and r.json()["field"] == "name", (bad, r.text)
        r = c.post("/api/v1/consumers", json={"name": "ok", "credentials": {
            "jwt": [{"key": "iss\nx", "secret": "0123456789abcdef"}]}})
        assert r.status_code == 422 and r.json()["field"] == "credentials.jwt[0].key", r.text
        for alg in ("RS256", "ES256"):
            for garbage in ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a key"):
                r = c.post("/api/v1/consumers", json={"name": "acme2", "credentials": {
                    "jwt": [{"key": "iss", "algorithm": alg, "public_key": garbage}]}})
                assert r.status_code == 422, r.text
                assert r.json()["field"] == "credentials.jwt[0].public_key", r.text
        assert c.post("/api/v1/gateway-tokens", json={"name": "edge-1.prod_a"}).status_code == 201
    assert ams.lsn() >= lsn + 1  # the one write, plus the refusals' audit entries (issue 18)
