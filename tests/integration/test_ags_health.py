"""Active health checks on real sockets: a target failing its checks leaves the rotation and comes back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tandem.ags.balancer import Target
from tandem.ags.compiled_config import ConfigRejected, validate_document
from tandem.ags.gateway import Gateway
from tandem.ags.health import Check, HealthState, record
from tests.support.ags import make_document, project, run_gateway, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import wait_for_async


class Switchable:
    """A backend whose /health answers 200 or 503 as told; every other path answers 200 naming it."""

    def __init__(self) -> None:
        self.healthy = True
        self.checks = 0
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if head.startswith(b"GET /health "):
                self.checks += 1
                code = 200 if self.healthy else 503
                w.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % code)
                await w.drain()
                break
            self.requests += 1
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nswitchabl")
            await w.drain()
        w.close()


def test_failing_target_leaves_the_rotation_and_comes_back() -> None:
    async def t(gw: Gateway, port: int, echoes: list[EchoServer], urls: list[str]) -> None:
        sw = Switchable()
        sw_url = await sw.start()
        hc = {"path": "/health", "interval": 0.1, "timeout": 0.05, "healthy": 2, "unhealthy": 2}
        gw.apply(validate_document(make_document([project("p", "/p", urls[0], sw_url, health_check=hc)]),
                                   "default"))

        async def spread(n: int) -> list[str]:
            out = []
            for _ in range(n):
                status, _, body = (await send_and_read(port, b"GET /p/x HTTP/1.1\r\nHost: a\r\n\r\n"))[0]
                assert status == 200
                out.append("echo" if body.startswith(b"{") else "switchable")
            return out

        await wait_for_async(lambda: sw.checks >= 2, 5, "two health checks run")
        assert set(await spread(6)) == {"echo", "switchable"}  # both healthy: round robin
        sw.healthy = False
        target = gw.config.projects["p"].balancer.targets[1]
        await wait_for_async(lambda: target.health is not None and target.health.down, 5, "the target marked down")
        before = sw.requests
        assert set(await spread(6)) == {"echo"}  # out of the rotation, though it still answers requests
        assert sw.requests == before
        sw.healthy = True
        await wait_for_async(lambda: not target.health.down, 5, "the target up again")
        assert "switchable" in await spread(6)
        assert sw.server is not None
        sw.server.close()

    run_gateway(t)


def test_thresholds_and_passive_failures_do_not_bring_a_target_back() -> None:
    check = Check({"path": "/h", "interval": 1, "timeout": 0.5, "healthy": 2, "unhealthy": 3})
    target, state = Target("http://h:1", 1), HealthState()
    for _ in range(2):
        record(target, state, check, False, "refused", "p")
    assert not state.down and target.down_until == 0.0
    record(target, state, check, False, "refused", "p")
    assert state.down and target.down_until == float("inf")
    from tandem.ags.balancer import Balancer

    target.health = state
    Balancer.failed(target, 100.0, 10.0)
    assert target.down_until == float("inf")  # passive health does not shorten the checks' verdict
    Balancer.succeeded(target)
    assert target.down_until == float("inf")  # nor does a lucky connect bring it back
    record(target, state, check, True, "status 200", "p")
    assert state.down
    record(target, state, check, True, "status 200", "p")
    assert not state.down and target.down_until == 0.0


@pytest.mark.parametrize("hc, word", [
    ({"path": "health"}, "path"), ({"interval": 0}, "interval"), ({"interval": 1, "timeout": 1}, "shorter"),
    ({"healthy": 0}, "healthy"), ("yes", "object"),
])
def test_a_bad_health_check_refuses_the_document(hc: Any, word: str) -> None:
    doc = make_document([project("p", "/p", "http://h", health_check=hc)])
    with pytest.raises(ConfigRejected, match=word):
        validate_document(json.dumps(doc), "default")
