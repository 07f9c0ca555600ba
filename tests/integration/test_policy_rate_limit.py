"""rate-limit through real gateways on real sockets: node scope, cluster scope over the real Redis
(TANDEM_TEST_REDIS_URL, default redis://127.0.0.1:6379/0), and Redis outages on a private redis-server
that the test starts and kills by pid."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import uvloop

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tandem.ags.settings import GatewaySettings
from tandem.net.sockets import listen_socket
from tests.support.ags import make_document, project
from tests.support.echo import EchoServer
from tests.support.harness import free_port, wait_for_async

REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HOUR = 3600

Reply = tuple[int, dict[str, str], bytes]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        _unavailable(f"Redis at {REDIS_URL} unreachable: {exc}")
    return REDIS_URL


class PrivateRedis:
    """A redis-server of the test's own, on a free port, no persistence; stopped by pid."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        exe = shutil.which("redis-server")
        if exe is None:
            _unavailable("redis-server is not installed")
        self.proc = subprocess.Popen([str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def client(self) -> Any:  # redis-py's types mix the sync and asyncio answers
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies of SIGKILL too, but resume it first
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_redis() -> Iterator[Callable[[int | None], PrivateRedis]]:
    started: list[PrivateRedis] = []

    def start(port: int | None = None) -> PrivateRedis:
        r = PrivateRedis(port).start()
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.kill()


class Conn:
    """One keep-alive client connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, timeout: float = 5.0) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        if headers.get("connection") == "close":
            self.close()
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


@dataclasses.dataclass
class Env:
    gateways: list[Gateway]
    ports: list[int]
    backend: EchoServer
    url: str

    def apply(self, projects: list[dict[str, Any]], revision: int = 1) -> None:
        doc = validate_document(make_document(projects, revision), "default")
        for gw in self.gateways:
            gw.apply(doc)


@contextlib.asynccontextmanager
async def gateways(n: int) -> AsyncIterator[Env]:
    backend = EchoServer("b")
    bport = await backend.start("127.0.0.1", 0)
    gws, ports = [], []
    try:
        for _ in range(n):
            gw = Gateway(GatewaySettings(access_log=""))
            sock = listen_socket("127.0.0.1", 0)
            await gw.listen(sock)
            gws.append(gw)
            ports.append(sock.getsockname()[1])
        yield Env(gws, ports, backend, f"http://127.0.0.1:{bport}")
    finally:
        for gw in gws:
            await gw.drain(1.0)
            await gw.services.close()  # the Redis clients and their probes
        backend.close()


def run(test: Callable[[], Awaitable[None]], limit: float = 60) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), limit)

    uvloop.run(main())


def policy(**kw: Any) -> dict[str, Any]:
    return {"type": "rate-limit", **kw}


async def spread(ports: list[int], path: str, total: int, workers: int = 20) -> list[Reply]:
    """`total` requests over `workers` keep-alive connections, round robin over the gateways."""
    replies: list[Reply] = []

    async def worker(i: int) -> None:
        c = Conn(ports[i % len(ports)])
        try:
            for _ in range(total // workers):
                replies.append(await c.get(path))
        finally:
            c.close()

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return replies


def check_exact(replies: list[Reply], limit: int, total: int) -> None:
    statuses = collections.Counter(s for s, _, _ in replies)
    assert statuses == {200: limit, 429: total - limit}, statuses
    remaining = sorted(int(h["ratelimit-remaining"]) for s, h, _ in replies if s == 200)
    assert remaining == list(range(limit))  # every request counted once: each count seen exactly once
    for s, h, body in replies:
        assert h["ratelimit-limit"] == str(limit) and 1 <= int(h["ratelimit-reset"]) <= HOUR
        if s == 429:
            assert json.loads(body)["code"] == "rate_limited" and h["ratelimit-remaining"] == "0"
            assert 1 <= int(h["retry-after"]) <= HOUR and h["retry-after"] == h["ratelimit-reset"]


async def within_one_window(attempt: Callable[[str], Awaitable[None]]) -> None:
    """Run `attempt(project name)`; once more with a fresh project if an hour boundary passed meanwhile."""
    for _ in range(2):
        before = int(time.time()) // HOUR
        name = f"rl{uuid.uuid4().hex[:10]}"
        await attempt(name)
        if int(time.time()) // HOUR == before:
            return
    raise AssertionError("two runs crossed an hour boundary")


def test_node_scope_passes_exactly_the_limit() -> None:
    async def t() -> None:
        async with gateways(1) as env:
            async def attempt(name: str) -> None:
                env.apply([project(name, "/rl", env.url + "/v1",
                                   policies=[policy(limit=100, window=1, unit="hour")])])
                env.backend.requests.clear()
                replies = await spread(env.ports, "/rl/x", 1000)
                check_exact(replies, 100, 1000)
                assert len(env.backend.requests) == 100  # the refused 900 never reached the backend

            await within_one_window(attempt)

    run(t)


def test_cluster_scope_two_gateways_share_one_limit(redis_url: str) -> None:
    r: Any = redis.Redis.from_url(redis_url)

    async def t() -> None:
        async with gateways(2) as env:
            async def attempt(name: str) -> None:
                env.apply([project(name, "/rl", env.url + "/v1", policies=[
                    policy(limit=100, window=1, unit="hour", scope="cluster", redis_url=redis_url,
                           fail="closed", redis_timeout=2.0)])])
                env.backend.requests.clear()
                try:
                    replies = await spread(env.ports, "/rl/x", 1000)
                    keys = [k.decode() for k in r.scan_iter(match=f"tandem:rl:{name}:*")]
                    assert len(keys) == 1, keys
                    index = int(time.time()) // HOUR
                    assert re.fullmatch(rf"tandem:rl:{name}:[0-9a-f]{{16}}:ip:127\.0\.0\.1:{index}", keys[0])
                    assert int(r.get(keys[0]) or 0) == 1000  # one INCR per request: none lost, none doubled
                    assert 0 < r.pttl(keys[0]) <= HOUR * 1000 + 1000
                finally:
                    for k in r.scan_iter(match=f"tandem:rl:{name}:*"):
                        r.delete(k)
                check_exact(replies, 100, 1000)
                assert len(env.backend.requests) == 100
                for gw in env.gateways:
                    client = next(v for v in gw.services.values() if type(v).__name__ == "RedisCounter")
                    assert client.counts > 0 and client.failures == 0 and not client.broken

            await within_one_window(attempt)

    run(t)


def _outage_warnings(caplog: pytest.LogCaptureFixture, port: int) -> tuple[int, int]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "tandem.ags.policies.redis"
            and r.levelno == logging.WARNING and f":{port}/" in r.getMessage()]
    return sum("unreachable (" in m for m in msgs), sum("reachable again" in m for m in msgs)


async def timed(c: Conn, path: str) -> Reply:
    t = time.monotonic()
    reply = await c.get(path)
    took = time.monotonic() - t
    assert took < 1.0, f"{path} took {took:.2f} s"
    assert reply[0] not in (401, 403)
    return reply


def test_redis_killed_open_closed_local_then_back(private_redis: Callable[..., PrivateRedis],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tandem.ags.policies.redis")
    rs = private_redis()

    async def t() -> None:
        async with gateways(1) as env:
            common = {"limit": 3, "window": 1, "unit": "hour", "scope": "cluster", "redis_url": rs.url,
                      "redis_timeout": 0.2}
            env.apply([project(f"p{mode}", f"/{mode}", env.url, policies=[policy(fail=mode, **common)])
                       for mode in ("open", "closed", "local")])
            c = Conn(env.ports[0])
            for mode in ("open", "closed", "local"):  # Redis up: counted there
                for left in (2, 1):
                    s, h, _ = await timed(c, f"/{mode}/x")
                    assert (s, h["ratelimit-remaining"]) == (200, str(left))
            assert sorted(int(rs.client().get(k) or 0) for k in rs.client().keys("tandem:rl:*")) == [2, 2, 2]

            assert rs.proc is not None
            rs.kill()
            replies = {mode: [await timed(c, f"/{mode}/x") for _ in range(6)] for mode in ("open", "closed", "local")}
            assert [s for s, _, _ in replies["open"]] == [200] * 6  # uncounted, so no figures either
            assert all("ratelimit-remaining" not in h for _, h, _ in replies["open"])
            assert [(s, json.loads(b)["code"]) for s, _, b in replies["closed"]] == \
                [(503, "rate_limit_unavailable")] * 6
            # local: this node's own count from 0 while Redis is away
            assert [s for s, _, _ in replies["local"]] == [200, 200, 200, 429, 429, 429]
            assert [h["ratelimit-remaining"] for _, h, _ in replies["local"]] == ["2", "1", "0", "0", "0", "0"]
            assert _outage_warnings(caplog, rs.port) == (1, 0)  # logged once, not per request

            back = private_redis(rs.port)  # Redis returns (empty: no persistence) on the same port

            async def counted_again() -> bool:
                s, h, _ = await timed(c, "/closed/x")
                return s == 200 and h.get("ratelimit-remaining") == "2"

            await wait_for_async(counted_again, 5, "the probe reconnected and requests are counted in Redis again")
            s, h, _ = await timed(c, "/open/x")
            assert (s, h["ratelimit-remaining"]) == (200, "2")  # open counts again too
            assert _outage_warnings(caplog, rs.port) == (1, 1)
            assert len(back.client().keys("tandem:rl:*")) == 2
            c.close()

    run(t)


def test_redis_hanging_is_noticed_within_the_timeout_then_skipped(private_redis: Callable[..., PrivateRedis],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tandem.ags.policies.redis")
    rs = private_redis()

    async def t() -> None:
        async with gateways(1) as env:
            env.apply([project("hang", "/h", env.url, policies=[policy(
                limit=5, window=1, unit="hour", scope="cluster", redis_url=rs.url, redis_timeout=0.2,
                fail="closed")])])
            c = Conn(env.ports[0])
            assert (await timed(c, "/h/x"))[0] == 200
            rs.client().script_flush()  # NOSCRIPT next: the script is sent whole, the request counted once
            s, h, _ = await timed(c, "/h/x")
            assert (s, h["ratelimit-remaining"]) == (200, "3")
            key = rs.client().keys("tandem:rl:hang:*")[0]
            assert int(rs.client().get(key) or 0) == 2

            assert rs.proc is not None
            os.kill(rs.proc.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                s, _, b = await timed(c, "/h/x")
                first = time.monotonic() - t0
                assert (s, json.loads(b)["code"]) == (503, "rate_limit_unavailable")
                assert 0.15 <= first < 0.8, first  # waited for the reply about redis_timeout, no more
                t0 = time.monotonic()
                for _ in range(20):  # the breaker is open: no request waits for Redis now
                    assert (await c.get("/h/x"))[0] == 503
                assert time.monotonic() - t0 < 0.5
                assert _outage_warnings(caplog, rs.port) == (1, 0)
            finally:
                os.kill(rs.proc.pid, signal.SIGCONT)

            async def counted_again() -> bool:
                return (await timed(c, "/h/x"))[0] == 200

            await wait_for_async(counted_again, 5, "requests counted in Redis again after SIGCONT")
            assert _outage_warnings(caplog, rs.port) == (1, 1)
            c.close()

    run(t)


def test_redis_down_at_start_then_up(private_redis: Callable[..., PrivateRedis]) -> None:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there yet
        assert probe.connect_ex(("127.0.0.1", port)) != 0

    async def t() -> None:
        async with gateways(1) as env:
            env.apply([project("late", "/l", env.url, policies=[policy(
                limit=2, window=1, unit="hour", scope="cluster", redis_url=f"redis://127.0.0.1:{port}/0",
                fail="local")])])
            c = Conn(env.ports[0])
            assert [(await timed(c, "/l/x"))[0] for _ in range(3)] == [200, 200, 429]  # counted locally
            private_redis(port)

            async def in_redis() -> bool:
                s, h, _ = await timed(c, "/l/x")
                return s == 200 and h["ratelimit-remaining"] == "1"

            await wait_for_async(in_redis, 5, "counted in Redis once it is up")
            c.close()

    run(t)
