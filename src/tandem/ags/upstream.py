"""The upstream side: a raw asyncio protocol per backend connection, and keep-alive pools.

`UpstreamConnection` parses responses with httptools and hands each event to
the exchange that owns the connection (`ex.on_head/on_body/on_end`, see
`exchange.py`). It finishes a response only after `feed_data` returns, so
bytes a misbehaving backend sends past the end of a response are caught
(the connection is then closed, never reused: no response desync). A
response to HEAD has no body whatever its headers say: the parser is
replaced after the head.

`Pool`: per target address and process, idle connections LIFO (at most
`keepalive` of them), at most `max_upstream_connections` open; requests over
that wait for a released connection. Read timeouts are not timers: the
gateway's sweeper compares each busy connection's `deadline` with the clock.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from tandem.ags.error_responses import PoolBusy, http_date

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

INF: Final = float("inf")

# response headers: kept as they are, or LENGTH (kept, and the body is relayed as it is), DATE (kept, and
# noted: a response without one gets the gateway's, RFC 9110 6.6.1), HOP (dropped), CONNECTION (dropped, and
# the headers it names too)
HOP_RESPONSE: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                          b"trailer", b"upgrade", b"x-request-id"})
KEEP, LENGTH, HOP, CONNECTION, DATE = 0, 1, 2, 3, 4
_LOWER_KIND: Final = {**{n: HOP for n in HOP_RESPONSE}, b"connection": CONNECTION, b"content-length": LENGTH,
               b"date": DATE}
# response header names as backends spell them (a dict hit avoids lower() for the common ones)
_RESPONSE_KIND: Final = {**_LOWER_KIND, **{n.title(): k for n, k in _LOWER_KIND.items()},
                  **{n: KEEP for n in (b"Server", b"Content-Type", b"Cache-Control", b"ETag",
                                       b"Last-Modified", b"Vary", b"Expires", b"Set-Cookie", b"Location",
                                       b"Accept-Ranges", b"Content-Encoding", b"X-Backend")}}
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b""})


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.alive = False
        self.reused = False
        self.reusable = True
        self.deadline = INF
        self.idle_since = 0.0
        self.got_data = False
        # the response head being parsed: a slot for the status line, then the kept header lines (name,
        # ": ", value, "\r\n", ...); whether it had a Content-Length; the values of Connection headers that
        # name more than close/keep-alive
        self.headers: list[bytes] = [b""]
        self.has_length = False
        self.has_date = False
        self.connection: list[bytes] | None = None
        self.sink: list[bytes] | None = None
        self.paused_client: Any = None  # the ClientProtocol paused by our full write buffer
        self.reading = True  # False while the client's write buffer is full
        self.interim = False
        self.complete = False
        self.keep = False
        self.head_only = False

    def __repr__(self) -> str:
        return (f"<UpstreamConnection {self.pool.host}:{self.pool.port} alive={self.alive} "
                f"busy={self.ex is not None} reused={self.reused}>")

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool.lost(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.on_upstream_lost(self)

    def pause_writing(self) -> None:
        if self.ex is not None:  # the backend reads slower than the client sends: stop reading the client
            self.paused_client = self.ex.cp
            self.paused_client.pause(2)

    def resume_writing(self) -> None:
        self.unpause_client()

    def unpause_client(self) -> None:
        """Resume the client this connection paused (also when the exchange lets go of it first)."""
        cp, self.paused_client = self.paused_client, None
        if cp is not None:
            cp.resume(2)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # bytes on an idle connection: the backend is confused, drop it
            self.reusable = False
            self.close()
            return
        self.got_data = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.reusable = False
            ex.on_upstream_error(self, f"invalid response from upstream: {exc}")
            return
        if self.complete:  # the common case: the deadline is not pushed, the connection is released
            self.complete = False
            if self.head_only:
                self.head_only = False
                self.parser = httptools.HttpResponseParser(self)
            if self.ex is ex:  # (not when the exchange let go of this connection: a retried response)
                ex.on_end(self, self.keep and self.reusable)
        else:
            if self.reading:  # (held: no deadline while the client's write buffer is full)
                self.deadline = ex.cp.loop.time() + ex.read_timeout
            ex.cp.flush()

    # httptools (only the callbacks defined here are called: no on_message_begin, no on_status)
    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _RESPONSE_KIND.get(name)
        if kind is None:
            kind = _LOWER_KIND.get(name.lower(), KEEP)
        if kind:
            if kind == LENGTH:
                self.has_length = True
            elif kind == DATE:
                self.has_date = True
            else:
                if kind == CONNECTION and value not in _PLAIN_CONNECTION:
                    if self.connection is None:
                        self.connection = []
                    self.connection.append(value)
                return
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        headers, has_length, connection = self.headers, self.has_length, self.connection
        self.headers, self.has_length, self.connection = [b""], False, None
        if self.complete:  # a second response in one read: not ours
            self.reusable = False
            return
        if self.has_date:
            self.has_date = False
        else:  # a proxy adds the Date a backend left out (RFC 9110 6.6.1)
            headers += (b"Date", b": ", http_date(), b"\r\n")
        status = self.parser.get_status_code()
        if status < 200:
            self.interim = True  # 100 Continue etc.: the gateway answered Expect itself
            if status == 101:
                self.reusable = False
            return
        ex = self.ex
        assert ex is not None
        self.keep = self.parser.should_keep_alive()
        self.sink = ex.cp.out if ex.on_head(status, headers, has_length, connection) else None
        if ex.is_head:
            self.head_only = True
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.reusable = False
        elif self.sink is not None:
            self.sink.append(body)  # relayed as it is: no Python call per chunk beyond this one
        elif self.ex is not None:
            self.ex.on_body(body)

    def on_message_complete(self) -> None:
        if len(self.headers) > 1 or self.has_length or self.connection:  # trailer fields of a chunked
            self.headers, self.has_length, self.connection = [b""], False, None  # response: dropped
            self.has_date = False
        if self.interim:
            self.interim = False
        elif not self.complete:
            self.keep = self.keep and self.parser.should_keep_alive()
            self.complete = True

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one target address, for one serving process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, tls: bool,
                 keepalive: int, max_connections: int) -> None:
        self.loop, self.host, self.port = loop, host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.keepalive, self.max_connections = keepalive, max_connections
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.opening = 0
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.closed = False
        self.now = loop.time()  # the sweeper's clock: idle ages need no better

    def __repr__(self) -> str:
        return f"<Pool {self.host}:{self.port} idle={len(self.idle)} busy={len(self.busy)} opening={self.opening}>"

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    def take(self) -> UpstreamConnection | None:
        """An idle connection that is still open, now busy (the most recently released first), or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.alive:
                conn.reused = True
                self.busy.add(conn)
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection (or a released one when the pool is full); raises OSError or TimeoutError."""
        deadline = self.loop.time() + timeout
        while self.size >= self.max_connections:
            fut: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self.waiters.append(fut)
            try:
                handed = await asyncio.wait_for(fut, max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                raise PoolBusy(f"{self.max_connections} connections to {self.host}:{self.port} busy") from None
            finally:
                if not fut.done():
                    fut.cancel()
            if handed is not None:
                return handed
        self.opening += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port,
                                            ssl=self.ssl, server_hostname=self.host if self.ssl else None),
                max(0.001, deadline - self.loop.time()))
        finally:
            self.opening -= 1
        self.busy.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """The exchange is done with a connection that may carry another request."""
        conn.ex = None
        conn.deadline = INF
        idle = self.idle
        if (conn.reading and conn.paused_client is None and conn.alive and not self.waiters and not self.closed
                and len(idle) < self.keepalive):  # the common case: nothing to resume, straight back to idle
            self.busy.discard(conn)
            conn.idle_since = self.now
            idle.append(conn)
            return
        if conn.paused_client is not None:
            conn.unpause_client()
        if not conn.reading and conn.transport is not None:
            conn.reading = True
            conn.transport.resume_reading()
        self.busy.discard(conn)
        if not conn.alive or self.closed:
            conn.close()
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                conn.reused = True
                self.busy.add(conn)
                fut.set_result(conn)
                return
        if len(self.idle) < self.keepalive:
            conn.idle_since = self.now
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        conn.ex = None
        conn.deadline = INF
        if conn.paused_client is not None:
            conn.unpause_client()
        self.busy.discard(conn)
        conn.close()

    def lost(self, conn: UpstreamConnection) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        while self.waiters:  # a slot freed: let one waiter open a connection
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def sweep(self, now: float, idle_timeout: float) -> list[UpstreamConnection]:
        """Close idle connections older than `idle_timeout`; return busy ones past their deadline."""
        self.now = now
        if self.idle and now - self.idle[0].idle_since > idle_timeout:
            keep = [c for c in self.idle if now - c.idle_since <= idle_timeout]
            for c in self.idle:
                if c not in keep:
                    c.close()
            self.idle[:] = keep
        return [c for c in self.busy if c.deadline < now]

    def close(self) -> None:
        self.closed = True
        for conn in self.idle + list(self.busy):
            conn.close()
        self.idle.clear()


class PoolManager:
    """Every pool of one serving process, kept across configuration swaps."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keepalive: int, max_connections: int) -> None:
        self.loop, self.keepalive, self.max_connections = loop, keepalive, max_connections
        self.pools: dict[tuple[str, int, bool], Pool] = {}

    def pool_for(self, target: Any) -> Pool:
        key = (target.host, target.port, target.scheme == "https")
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(self.loop, key[0], key[1], key[2], self.keepalive,
                                          self.max_connections)
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
