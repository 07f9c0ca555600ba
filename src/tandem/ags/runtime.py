"""One serving process's data plane: the configuration it serves, its pools,
metrics and access log, its listening sockets, and the sweeper.

The configuration is one reference (`Gateway.config`), replaced whole by
`apply()`: an exchange reads it once, when its request head is complete,
and keeps the project it matched, so requests in flight finish on the
configuration they started with while new ones see the new one.

The sweeper (every 250 ms) does what would otherwise cost a timer per
request: upstream read timeouts, client header/idle timeouts, the end of
lingering closes, idle upstream connections, and flushing the access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import socket
from typing import Any

from tandem.ags.accesslog import AccessLog
from tandem.ags.config import CompiledConfig, compile_config
from tandem.ags.health import HealthChecker
from tandem.ags.metrics import NO_ROUTE, Metrics
from tandem.ags.policies import Services
from tandem.ags.protocol import ClientProtocol
from tandem.ags.settings import GatewaySettings
from tandem.ags.upstream import PoolManager

log = logging.getLogger("tandem.ags")

SWEEP_INTERVAL = 0.25
UPSTREAM_IDLE_TIMEOUT = 60.0


class Gateway:
    def __init__(self, settings: GatewaySettings, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.settings = settings
        self.loop = loop or asyncio.get_running_loop()
        self.config = CompiledConfig.empty(settings.environment)
        self.pools = PoolManager(self.loop, settings.keepalive, settings.max_upstream_connections)
        self.metrics = Metrics()
        self.services = Services(self.loop)  # policy state that outlives a configuration
        self.unrouted = self.metrics.stats(NO_ROUTE)
        self.accesslog = AccessLog(settings.access_log) if settings.access_log else None
        self.connections: set[ClientProtocol] = set()
        self.draining = False
        self.servers: list[asyncio.AbstractServer] = []
        self.rid_prefix = secrets.token_hex(4).encode() + b"-"  # request ids: this prefix + a counter
        self.rid_format = self.rid_prefix + b"%x"
        self.rid = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.health = HealthChecker(self)  # active health checks of projects that ask for them

    def __repr__(self) -> str:
        return (f"<Gateway revision={self.config.revision} projects={len(self.config.projects)} "
                f"connections={len(self.connections)} draining={self.draining}>")

    def next_request_id(self) -> bytes:
        self.rid += 1
        return self.rid_format % self.rid

    def apply(self, doc: dict[str, Any]) -> CompiledConfig:
        """Compile a validated document and make it the one new requests see."""
        s = self.settings
        compiled = compile_config(doc, self.pools.pool_for, self.metrics.stats, s.connect_timeout,
                                  s.read_timeout, self.config, self.services)
        self.config = compiled
        return compiled

    async def listen(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(lambda: ClientProtocol(self), sock=sock, backlog=2048)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        self.health.start()

    def stop_accepting(self) -> None:
        """Refuse new connections now; idle keep-alive connections close, busy ones after their response."""
        self.draining = True
        for server in self.servers:
            server.close()
        for cp in list(self.connections):
            if cp.cur is None and not cp.in_head:
                cp.close()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` s for in-flight exchanges, then cut the rest and release everything."""
        self.stop_accepting()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for cp in list(self.connections):
            if cp.transport is not None:
                cp.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.health.stop()
        self.pools.close()
        for state in self.services.values():  # policy clients (Redis connections, their probes)
            close = getattr(state, "close", None)
            if close is not None and inspect.iscoroutinefunction(close):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(close(), 2.0)
        if self.accesslog is not None:
            self.accesslog.close()
            self.accesslog = None
        self.servers.clear()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.sweep(self.loop.time())
            except Exception:  # the sweeper must outlive a bug in one connection
                log.exception("gateway sweeper failed")

    def sweep(self, now: float) -> None:
        s = self.settings
        for pool in self.pools.pools.values():
            for conn in pool.sweep(now, UPSTREAM_IDLE_TIMEOUT):
                if conn.ex is not None:
                    conn.ex.on_timeout()
                else:
                    pool.discard(conn)
        for cp in list(self.connections):
            if cp.closing:
                if cp.linger_until and now > cp.linger_until and cp.transport is not None:
                    cp.transport.close()
                continue
            quiet = now - cp.last_rx
            cur = cp.cur
            if cur is None:
                if quiet > (s.client_header_timeout if cp.in_head else s.client_idle_timeout) \
                        or (self.draining and not cp.in_head):
                    cp.close()
            elif not cur.req_complete and quiet > s.client_idle_timeout and not cur.done:
                cur.abort("the client stopped sending its request body")
        if self.accesslog is not None:
            self.accesslog.flush()
