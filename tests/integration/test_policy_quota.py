"""quota through a GatewayService on real sockets and a real SQLite store: in-process and in
worker processes (frames Q/q), counts that outlive a restart of the service, exactly `limit`
passes under concurrency, and 503 `quota_unavailable` (never a count) while the store fails."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tandem.ags.gateway_service import KEY, NS, GatewayService
from tandem.ags.quota_book import NS as QUOTA_NS
from tandem.ags.settings import settings_from_profile
from tandem.store import Op
from tests.support.ags import make_document, project, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import free_port
from tests.support.host import HostStandIn

KEYS = {"ann": "tk_ann-secret", "bob": "tk_bob-secret"}
CONSUMERS = [{"name": n, "keys": [{"id": f"k-{n}", "sha256": hashlib.sha256(k.encode()).hexdigest()}]}
             for n, k in KEYS.items()]


class Env:
    def __init__(self, tmp: Path, echo: EchoServer, echo_url: str, workers: int, in_process: bool) -> None:
        self.port = free_port()
        self.server = HostStandIn.for_ags(tmp / "ags", self.port, workers=workers, access_log=False)
        self.server.open_store()
        self.echo, self.echo_url = echo, echo_url
        self.env = {"TANDEM_GATEWAY_INPROCESS": "1" if in_process else "0"}
        self.service: GatewayService | None = None

    def store_config(self, *policies: dict[str, Any]) -> None:
        doc = make_document([project("pets", "/pets", self.echo_url + "/v1", policies=list(policies))], 1,
                            consumers=CONSUMERS)
        assert self.server.store is not None
        self.server.store.commit([Op(NS, KEY, doc)])

    async def start(self) -> GatewayService:
        self.service = GatewayService(self.server, settings_from_profile(self.server.profile,  # type: ignore[arg-type]
                                                                         env=self.env))
        await self.service.start()
        return self.service

    async def get(self, who: str | None, path: str = "/pets/x") -> tuple[int, dict[str, str], bytes]:
        key = f"X-API-Key: {KEYS[who]}\r\n" if who else ""
        req = f"GET {path} HTTP/1.1\r\nHost: api.test\r\n{key}\r\n".encode()
        return (await send_and_read(self.port, req))[0]

    def counters(self) -> dict[str, Any]:
        assert self.server.store is not None
        return dict(self.server.store.scan(QUOTA_NS))


def run(test: Callable[[Env], Awaitable[None]], tmp: Path, workers: int = 1, in_process: bool = True) -> None:
    async def main() -> None:
        echo = EchoServer("b0")
        port = await echo.start("127.0.0.1", 0)
        env = Env(tmp, echo, f"http://127.0.0.1:{port}", workers, in_process)
        try:
            await asyncio.wait_for(test(env), 60)
        finally:
            if env.service is not None and env.service.serving:
                await env.service.stop(1.0)
            env.server.close_store()
            echo.close()

    uvloop.run(main())


MODES = pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "worker-process"])


@MODES
def test_limit_per_consumer_headers_429_and_the_count_survives_a_restart(tmp_path: Path, in_process: bool) -> None:
    async def t(env: Env) -> None:
        env.store_config({"type": "api-key"}, {"type": "quota", "limit": 3, "period": "day"})
        await env.start()
        for left in (2, 1, 0):
            status, headers, _ = await env.get("ann")
            assert status == 200
            assert (headers["x-quota-limit"], headers["x-quota-remaining"]) == ("3", str(left))
            assert 0 < int(headers["x-quota-reset"]) <= 86400
        reached = len(env.echo.requests)
        status, headers, body = await env.get("ann")
        assert status == 429 and json.loads(body)["code"] == "quota_exceeded"
        assert json.loads(body)["request_id"] == headers["x-request-id"]
        assert 0 < int(headers["retry-after"]) <= 86400 and headers["retry-after"] == headers["ratelimit-reset"]
        assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("3", "0")
        assert "x-quota-remaining" not in headers
        assert len(env.echo.requests) == reached  # refused requests never reach the backend
        assert (await env.get("bob"))[0] == 200  # every consumer has its own count
        assert (await env.get(None))[0] == 401  # auth runs before the quota: nothing counted

        assert env.service is not None
        await env.service.stop(1.0)  # a restart of the gateway: a new book over the same store
        await env.start()
        assert (await env.get("ann"))[0] == 429
        status, headers, _ = await env.get("bob")
        assert (status, headers["x-quota-remaining"]) == (200, "1")
        assert sorted(v["n"] for v in env.counters().values()) == [2, 3]

    run(t, tmp_path, in_process=in_process)


def test_exactly_limit_pass_under_concurrency_across_two_workers(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        env.store_config({"type": "quota", "limit": 25, "period": "hour", "by": "ip"})
        await env.start()
        assert env.service is not None and env.service.workers is not None
        assert len(env.service.workers.workers) == 2
        results = []
        for _ in range(3):  # waves of parallel connections: SO_REUSEPORT spreads them over both workers
            results += await asyncio.gather(*(env.get(None, f"/pets/{i}") for i in range(20)))
        statuses = [r[0] for r in results]
        assert statuses.count(200) == 25 and statuses.count(429) == 35, statuses
        assert len(env.echo.requests) == 25
        assert [v["n"] for v in env.counters().values()] == [25]
        assert env.service.quota is not None and env.service.quota.commits < 25  # grouped

    run(t, tmp_path, workers=2, in_process=False)


@MODES
def test_store_failure_is_503_quota_unavailable_and_counts_nothing(tmp_path: Path, in_process: bool) -> None:
    async def t(env: Env) -> None:
        env.store_config({"type": "quota", "limit": 3, "by": "ip", "period": "week"})
        await env.start()
        assert (await env.get(None))[0] == 200
        assert env.server.store is not None
        env.server.store.close()  # the store fails under the gateway (its disk, its database)
        for _ in range(3):
            status, headers, body = await env.get(None)
            assert (status, json.loads(body)["code"]) == (503, "quota_unavailable")
            assert headers["retry-after"] == "1"
        env.server.store = None
        env.server.open_store()  # back
        for left in ("1", "0"):  # the failed requests were not counted: 1 + 2 pass
            status, headers, _ = await env.get(None)
            assert (status, headers["x-quota-remaining"]) == (200, left)
        assert (await env.get(None))[0] == 429
        assert len(env.echo.requests) == 3

    run(t, tmp_path, in_process=in_process)
