"""The AMS client service: the admin API under uvicorn, behind the durability gate.

`create_service(host)` is the AMS's one integration point with `tandem.server`
(the composition root calls it). On `start()` (the store is open, the port not
yet) the admin token is made on first start and a deployment the previous
active left pending resumes; then the port opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from tandem.net.sockets import listen_socket
from tandem.server.client_service import ClientService, ServiceHost

log = logging.getLogger("tandem.server")


class DurabilityGate:
    """ASGI middleware between the admin API and its clients.

    - Rule 1: a request reaching a server that is not (or no longer provably)
      serving gets 503 `not_active` and touches nothing.
    - Rule 4: a response leaves only once every change committed so far is
      durable on the passive (sync replication); if that cannot be ensured the
      client gets 503 `not_durable` instead of the handler's answer.
    """

    def __init__(self, app: Any, host: ServiceHost) -> None:
        self.app, self.host = app, host

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.host.serving:
            await _json(send, 503, {"code": "not_active", "message": "this server is not active; use its peer"})
            return
        failed = False

        async def gated_send(message: Any) -> None:
            nonlocal failed
            if failed:
                return
            if message["type"] == "http.response.start":
                try:
                    await self.host.durable()
                except Exception as exc:  # the write may not be on the passive: never say 2xx
                    failed = True
                    log.warning("write not acknowledged: %s", exc)
                    await _json(send, 503, {"code": "not_durable",
                                            "message": f"the change could not be replicated: {exc}"})
                    return
            await send(message)

        await self.app(scope, receive, gated_send)


async def _json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class ASGIService(ClientService):
    """An ASGI app (the AMS admin API) under uvicorn, on a socket we own so that
    closing the port is immediate rather than at uvicorn's next 100 ms tick."""

    def __init__(self, app: Any, host: str, port: int, http: Any = "httptools",
                 timeout_keep_alive: float = 5.0) -> None:
        self.app, self.host, self.port = app, host, port
        # `http`: uvicorn's protocol setting; the AMS passes a class with its deadlines and cap
        self.http, self.timeout_keep_alive = http, timeout_keep_alive
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        sock = listen_socket(self.host, self.port)
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5, loop="none", http=self.http,
                                timeout_keep_alive=self.timeout_keep_alive)  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        # the server process owns signals: uvicorn must neither install handlers nor
        # re-raise a captured signal when it shuts down (that would look like a second SIGTERM)
        self._server.capture_signals = contextlib.nullcontext
        # serving from the moment the socket listens: the kernel accepts connections from
        # then on, and a request on one of them is answered, never turned away (SPEC section 3)
        self.serving = True
        try:
            self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
            deadline = asyncio.get_running_loop().time() + 5
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("client service exited during start")
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("client service did not start within 5 s")
                await asyncio.sleep(0.005)
        except BaseException:
            self.serving = False
            sock.close()
            raise

    async def stop(self, drain_timeout: float) -> None:
        self.serving = False
        server, task = self._server, self._task
        if server is None or task is None:
            return
        for s in server.servers:
            s.close()  # refuse new connections now
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_timeout)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._server = self._task = None


class AdminService(ASGIService):
    """The admin API on the AMS client port."""

    def __init__(self, host: ServiceHost) -> None:
        from tandem.ams.app import create_app
        from tandem.ams.protocol import protocol_class

        app = create_app(host)
        self.app_services = app.state.services
        limits, stats = app.state.admin_limits, app.state.admin_stats
        host.add_metric_source(stats.prometheus)  # tandem_admin_* on the HA port's /metrics
        srv = host.profile.server
        super().__init__(DurabilityGate(app, host), srv.ClientAddress, srv.ClientPort,
                         http=protocol_class(limits, stats), timeout_keep_alive=limits.idle_timeout)

    async def start(self) -> None:
        from tandem.ams.app import bootstrap

        # before the port opens (ready to answer): admin token on first start;
        # resume deployments a dead active left (the worker waits until we serve)
        bootstrap(self.app_services)
        await super().start()


def create_service(host: ServiceHost) -> ClientService:
    """The AMS client service for `host` (called by the composition root)."""
    return AdminService(host)
