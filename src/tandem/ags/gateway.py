"""One serving process's data plane: the configuration it serves, its pools,
metrics and access log, its listening sockets, and the sweeper.

The configuration is one reference (`Gateway.config`), replaced whole by
`apply()`: an exchange reads it once, when its request head is complete,
and keeps the project it matched, so requests in flight finish on the
configuration they started with while new ones see the new one.

The sweeper (every 250 ms) does what would otherwise cost a timer per
request: upstream read timeouts, the client-side deadlines (whole request
head, body progress, response writes, idle keep-alive), the end of lingering
closes, idle upstream connections, and flushing the access log. Each
client-side limit hit is counted (`tandem_gateway_refused_total{reason}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import Any

from tandem.ags.accesslog import AccessLog
from tandem.ags.compiled_config import CompiledConfig, compile_config
from tandem.ags.error_responses import Reject, error_response
from tandem.ags.health import HealthChecker
from tandem.ags.metrics import NO_ROUTE, Metrics
from tandem.ags.policies import Services
from tandem.ags.protocol import REFUSED_LINGER, ClientProtocol
from tandem.ags.settings import GatewaySettings
from tandem.ags.upstream import PoolManager

log = logging.getLogger("tandem.ags")

SWEEP_INTERVAL = 0.25
UPSTREAM_IDLE_TIMEOUT = 60.0
REFUSAL_LOG_INTERVAL = 10.0  # connections refused over MaxConnections: one log line per this many seconds


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
        self.lingering: set[ClientProtocol] = set()  # refused over MaxConnections: 503 sent, closing
        self.over_cap = 0  # refused since the last log line
        self.over_cap_log_at = 0.0
        self.draining = False
        self.servers: list[asyncio.AbstractServer] = []
        self.rid_prefix = secrets.token_hex(4).encode() + b"-"  # request ids: this prefix + a counter
        self.rid_format = self.rid_prefix + b"%x"
        self.rid = 0
        self._sweeper: asyncio.Task[None] | None = None
        # active health checks of projects that ask for them
        self.health = HealthChecker(self.loop, lambda: self.config.projects.values())

    def __repr__(self) -> str:
        return (f"<Gateway revision={self.config.revision} projects={len(self.config.projects)} "
                f"connections={len(self.connections)} draining={self.draining}>")

    def refuse_connection(self, cp: ClientProtocol, transport: asyncio.Transport) -> None:
        """A connection past MaxConnections: 503, then closed (counted; logged once per interval)."""
        self.metrics.refuse("max_connections")
        self.over_cap += 1
        now = self.loop.time()
        if now >= self.over_cap_log_at:
            self._log_over_cap(now)
        transport.write(error_response(503, "too_many_connections", self.next_request_id(), close=True))
        if len(self.lingering) < self.settings.max_connections and transport.can_write_eof():
            transport.write_eof()  # read and drop a moment: a client that sent its request reads the 503
            cp.linger_until = now + REFUSED_LINGER
            self.lingering.add(cp)
        else:
            transport.close()

    def _log_over_cap(self, now: float) -> None:
        log.warning("gateway: %d new connection(s) refused with 503 too_many_connections: MaxConnections "
                    "(%d per serving process) reached; %d open", self.over_cap, self.settings.max_connections,
                    len(self.connections))
        self.over_cap = 0
        self.over_cap_log_at = now + REFUSAL_LOG_INTERVAL

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
        for cp in [*self.connections, *self.lingering]:
            if cp.transport is not None:
                cp.transport.abort()
        self.lingering.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.health.stop()
        self.pools.close()
        await self.services.close()  # policy clients (Redis connections, their probes)
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
        if self.lingering:
            for cp in list(self.lingering):
                if now > cp.linger_until:
                    self.lingering.discard(cp)
                    if cp.transport is not None:
                        cp.transport.abort()
        if self.over_cap and now >= self.over_cap_log_at:
            self._log_over_cap(now)
        refuse = self.metrics.refuse
        for cp in list(self.connections):
            transport = cp.transport
            if transport is None:
                continue
            if cp.closing:
                lu = cp.linger_until
                if lu and now > lu:
                    if now > lu + s.send_timeout:  # its buffer never drained: the client reads nothing
                        transport.abort()
                    else:
                        transport.close()  # (waits for the buffer to drain)
                continue
            if cp.write_paused:  # the send deadline: from the pause, restarted whenever the buffer shrank
                left = transport.get_write_buffer_size()
                if left < cp.send_left:
                    cp.send_left, cp.send_t = left, now
                elif now - cp.send_t > s.send_timeout:
                    refuse("send_timeout")
                    cur = cp.cur
                    if cur is not None and not cur.done:  # its upstream connection is closed, not kept
                        cur.abort(f"the client read nothing for {s.send_timeout:g} s")
                    cp.closing = True
                    transport.abort()
                    continue
            cur = cp.cur
            if cur is None:
                if cp.in_head:
                    if now - max(cp.head_t, cp.idle_t) > s.client_header_timeout:
                        refuse("header_timeout")
                        cp.answer_and_close(Reject(408, "request_timeout", "the request head did not arrive "
                                                   f"within {s.client_header_timeout:g} s"))
                elif self.draining:
                    cp.close()
                elif now - cp.idle_t > s.keepalive_timeout:
                    refuse("keepalive_timeout")
                    cp.close()
            elif not cur.req_complete and not cp.paused and now - cp.last_rx > s.client_body_timeout:
                refuse("body_timeout")
                if cur.done:  # answered early; the rest of the body stopped coming
                    cp.close()
                elif cur.resp_started:
                    cur.abort("the client stopped sending its request body")
                else:
                    cur.fail(408, "request_timeout", f"no request body byte for {s.client_body_timeout:g} s")
                    cp.flush()
        if self.accesslog is not None:
            self.accesslog.flush()
