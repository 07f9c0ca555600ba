"""GatewayService + config feed on real sockets: stored config first, failover between
sources, bad answers never replace a good configuration, the real AMS, worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from tandem.ags.gateway_service import KEY, NS, GatewayService
from tandem.store import Op
from tests.support.ags import FeedServer, make_document, project, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import free_port, wait_for_async
from tests.support.host import HostStandIn


class Env:
    def __init__(self, tmp: Path, echo_url: str, primary: str = "", backups: str = "", workers: int = 1,
                 token: str = "") -> None:
        self.port = free_port()
        self.server = HostStandIn.for_ags(tmp / "ags", self.port, primary, backups, workers=workers, token=token)
        self.server.open_store()
        self.echo_url = echo_url
        self.service: GatewayService | None = None

    def start_service(self) -> GatewayService:
        from tandem.ags.settings import settings_from_profile

        settings = settings_from_profile(self.server.profile, env={"TANDEM_GATEWAY_FEED_BACKOFF_MAX": "0.5"})
        self.service = GatewayService(self.server, settings)  # type: ignore[arg-type]
        return self.service

    async def status_of(self, path: str) -> int:
        req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        return (await send_and_read(self.port, req))[0][0]

    def doc(self, revision: int, *names: str) -> dict[str, Any]:
        return make_document([project(n, f"/{n}", self.echo_url + "/" + n) for n in names], revision)


def run(test: Callable[[Env, EchoServer], Awaitable[None]], tmp: Path, **env_args: Any) -> None:
    async def main() -> None:
        echo = EchoServer("b0")
        port = await echo.start("127.0.0.1", 0)
        env = Env(tmp, f"http://127.0.0.1:{port}", **env_args)
        try:
            await asyncio.wait_for(test(env, echo), 60)
        finally:
            if env.service is not None and env.service.serving:
                await env.service.stop(1.0)
            env.server.close_store()
            echo.close()

    uvloop.run(main())


def test_stored_configuration_is_served_before_any_ams_answers(tmp_path: Path) -> None:
    with FeedServer() as feed:
        feed.mode = "hang"  # the AMS accepts and never answers

        async def t(env: Env, echo: EchoServer) -> None:
            assert env.server.store is not None
            env.server.store.commit([Op(NS, KEY, env.doc(5, "stored"))])
            svc = env.start_service()
            await svc.start()
            assert await env.status_of("/stored/x") == 200  # at once: no wait for the feed
            assert svc.revision == 5
            assert echo.requests[-1]["path"] == "/stored/x"

        run(t, tmp_path, primary=feed.url)


def test_corrupt_stored_configuration_is_not_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def t(env: Env, echo: EchoServer) -> None:
        bad = env.doc(5, "stored")
        bad["digest"] = "0" * 64
        assert env.server.store is not None
        env.server.store.commit([Op(NS, KEY, bad)])
        await env.start_service().start()
        assert await env.status_of("/stored/x") == 404
        assert "stored configuration is unusable (digest mismatch" in caplog.text

    with caplog.at_level(logging.INFO):
        run(t, tmp_path)


def test_primary_refusing_connections_backup_answers(tmp_path: Path) -> None:
    with FeedServer() as backup:
        async def t(env: Env, echo: EchoServer) -> None:
            backup.set(env.doc(2, "pets"))
            svc = env.start_service()
            await svc.start()
            await wait_for_async(lambda: _served(env, "/pets/x"), 3, "config from the backup URL")
            stored = env.server.store.get(NS, KEY)  # type: ignore[union-attr]
            assert stored["revision"] == 2  # stored durably before it was served

        dead = f"http://127.0.0.1:{free_port()}"
        run(t, tmp_path, primary=dead, backups=f"{dead}/other; {backup.url}")


async def _served(env: Env, path: str) -> bool:
    return await env.status_of(path) == 200


@pytest.mark.parametrize("mode, reason", [("garbage", "not JSON"), ("500", "HTTP 500"),
                                          ("partial", "digest mismatch")])
def test_bad_answers_keep_the_good_configuration(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 mode: str, reason: str) -> None:
    with FeedServer() as feed:
        async def t(env: Env, echo: EchoServer) -> None:
            feed.set(env.doc(1, "pets", "cats"))
            svc = env.start_service()
            await svc.start()
            await wait_for_async(lambda: _served(env, "/cats/x"), 3, "first configuration")
            feed.mode = mode
            feed.set(env.doc(2, "dogs"))  # wakes the held poll: the next answers are bad
            await wait_for_async(lambda: reason in caplog.text, 3, "the reason in the log")
            assert await env.status_of("/pets/x") == 200 and await env.status_of("/cats/x") == 200
            assert await env.status_of("/dogs/x") == 404
            assert svc.revision == 1 and env.server.store.get(NS, KEY)["revision"] == 1  # type: ignore[union-attr]
            if mode != "500":
                assert b"tandem_gateway_config_rejected_total 0" not in svc.metrics_text()
            feed.mode = "doc"  # the AMS recovers: the new configuration arrives (backoff is short)
            await wait_for_async(lambda: _served(env, "/dogs/x"), 5, "configuration after recovery")
            assert await env.status_of("/pets/x") == 404

        with caplog.at_level(logging.INFO):
            run(t, tmp_path, primary=feed.url)


def test_a_failing_source_is_left_for_the_next(tmp_path: Path) -> None:
    with FeedServer() as primary, FeedServer() as backup:
        primary.mode = "500"

        async def t(env: Env, echo: EchoServer) -> None:
            backup.set(env.doc(3, "pets"))
            await env.start_service().start()
            await wait_for_async(lambda: _served(env, "/pets/x"), 3, "config from the backup")
            before = len(primary.polls)
            backup.set(env.doc(4, "pets", "cats"))
            await wait_for_async(lambda: _served(env, "/cats/x"), 3, "next revision from the backup")
            await asyncio.sleep(1.0)
            assert len(primary.polls) - before <= 1  # stays on the source that works
            assert backup.polls[-1]["applied"] == "4" and backup.polls[-1]["gateway"] == "test-AGS"

        run(t, tmp_path, primary=primary.url, backups=backup.url)


def test_real_ams_deploy_and_undeploy(tmp_path: Path) -> None:
    from tests.support.ams import InProcessAms

    with InProcessAms(tmp_path / "ams") as ams, ams.serve() as url:
        async def t(env: Env, echo: EchoServer) -> None:
            async with httpx.AsyncClient(base_url=url, headers=ams.headers, timeout=10) as api:
                r = await api.post("/api/v1/projects", json={"name": "pets", "context_path": "/pets",
                                                            "targets": [{"url": env.echo_url + "/v1"}]})
                assert r.status_code == 201, r.text
                await env.start_service().start()
                r = await api.post("/api/v1/projects/pets/deploy", json={"environment": "default"})
                assert r.status_code == 202, r.text
                await wait_for_async(lambda: _served(env, "/pets/dogs"), 3, "deployed project served")
                assert echo.requests[-1]["path"] == "/v1/dogs"
                dep = r.json()["id"]
                await wait_for_async(lambda: _deployed(api, dep), 5, "deployment reported deployed")
                gateways = (await api.get("/api/v1/gateways")).json()
                assert any(g["name"] == "test-AGS" for g in gateways), gateways
                r = await api.post("/api/v1/projects/pets/undeploy", json={"environment": "default"})
                assert r.status_code == 202, r.text
                await wait_for_async(lambda: _gone(env, "/pets/dogs"), 3, "undeployed project gone")

        run(t, tmp_path, primary=url, token=ams.token)


async def _deployed(api: httpx.AsyncClient, dep: str) -> bool:
    return bool((await api.get(f"/api/v1/deployments/{dep}")).json()["status"] == "deployed")


async def _gone(env: Env, path: str) -> bool:
    return await env.status_of(path) == 404


def test_worker_processes_share_the_port_and_get_each_configuration(tmp_path: Path) -> None:
    with FeedServer() as feed:
        async def t(env: Env, echo: EchoServer) -> None:
            feed.set(env.doc(1, "pets"))
            svc = env.start_service()
            await svc.start()
            assert svc.workers is not None and svc.workers.live == 2
            pids = [w.proc.pid for w in svc.workers.workers if w.proc]
            await wait_for_async(lambda: _served(env, "/pets/x"), 5, "first configuration in the workers")
            feed.set(env.doc(2, "pets", "cats"))
            await wait_for_async(lambda: svc.revision == 2, 5, "revision 2 applied by every worker")
            # every new connection lands on one worker or the other: all of them have it
            assert [await env.status_of("/cats/x") for _ in range(20)] == [200] * 20
            want = 'tandem_gateway_requests_total{project="cats",class="2xx"} 20'
            text = await wait_for_async(lambda: want in (t := svc.metrics_text().decode()) and t, 5,
                                        "the 20 requests in the summed counters (workers report about once a second)")
            assert "tandem_gateway_workers 2" in text
            os.kill(pids[0], 9)  # a worker that dies is replaced
            await wait_for_async(lambda: svc.workers and svc.workers.live == 2
                                 and pids[0] not in [w.proc.pid for w in svc.workers.workers if w.proc],
                                 10, "worker restarted")
            assert [await env.status_of("/cats/x") for _ in range(10)] == [200] * 10
            await svc.stop(1.0)
            for pid in pids[1:]:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
            with pytest.raises(OSError):
                await env.status_of("/cats/x")  # the port is closed

        run(t, tmp_path, primary=feed.url, workers=2)
