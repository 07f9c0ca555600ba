"""Client-facing services: what a server opens on its client port while it serves.

The HA controller decides; the server calls `start()` on activation and
`stop()` on deactivation. `stop()` first stops accepting (the port refuses
connections at once, so clients move to the peer), then drains in-flight
requests up to a deadline, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.server.process import ServerProcess

log = logging.getLogger("tandem.server")


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ClientService(ABC):
    """The client port of one server. `serving` is true between start() and stop()."""

    serving = False

    @abstractmethod
    async def start(self) -> None:
        """Open the client port; raise on failure (the port stays closed)."""

    @abstractmethod
    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting now, drain up to `drain_timeout` s, then close everything."""

    async def prepare(self) -> None:
        """Get ready to start quickly (at server start and after each stop); nothing may
        listen. Default: nothing to prepare."""
        return None

    async def close(self) -> None:
        """The server process ends: release what `prepare()` holds."""
        return None


class DurabilityGate:
    """ASGI middleware between the admin API and its clients.

    - Rule 1: a request reaching a server that is not (or no longer provably)
      serving gets 503 `not_active` and touches nothing.
    - Rule 4: a response leaves only once every change committed so far is
      durable on the passive (sync replication); if that cannot be ensured the
      client gets 503 `not_durable` instead of the handler's answer.
    """

    def __init__(self, app: Any, server: ServerProcess) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.server.controller.serving:
            await _json(send, 503, {"code": "not_active", "message": "this server is not active; use its peer"})
            return
        failed = False

        async def gated_send(message: Any) -> None:
            nonlocal failed
            if failed:
                return
            if message["type"] == "http.response.start":
                try:
                    await self.server.durable()
                except Exception as exc:  # the write may not be on the passive: never say 2xx
                    failed = True
                    log.warning("write not acknowledged: %s", exc)
                    await _json(send, 503, {"code": "not_durable",
                                            "message": f"the change could not be replicated: {exc}"})
                    return
            await send(message)

        await self.app(scope, receive, gated_send)


async def _json(send: Any, status: int, body: dict[str, Any]) -> None:
    import json

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
        for s in getattr(server, "servers", []):
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


def make_client_service(server: ServerProcess) -> ClientService:
    """The service for this server's mode; AMS and AGS modules plug in here."""
    prof = server.profile
    if prof.mode == "AMS":
        from tandem.ams.app import create_app
        from tandem.ams.protocol import protocol_class

        app = create_app(server)
        limits, stats = app.state.admin_limits, app.state.admin_stats
        server.metric_sources.append(stats.prometheus)  # tandem_admin_* on the HA port's /metrics
        return ASGIService(DurabilityGate(app, server), prof.server.ClientAddress, prof.server.ClientPort,
                           http=protocol_class(limits, stats), timeout_keep_alive=limits.idle_timeout)
    from tandem.ags.service import create_service

    return create_service(server)
