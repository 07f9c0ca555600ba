"""Window counters in Redis, shared by the gateways of a cluster: one client per `redis_url` per process.

Theory of operation. Each count is ONE round trip: `EVALSHA` of a Lua script
that does `INCR` and, on the key's first hit, `PEXPIRE`, and returns
`{count, pttl}` atomically (falling back to `EVAL` when Redis answers
`NOSCRIPT`, which means the script did not run, so nothing was counted).
Commands are pipelined on one connection (a small RESP client on an asyncio
protocol: replies come back in order, so a FIFO of futures pairs them).

A count is never sent twice (Kong #11859): when no reply comes within the
caller's timeout the caller gets `RedisUnavailable` and decides by its own
`fail` mode; the command is not retried. A timeout, a lost connection or an
error reply opens the circuit breaker: the connection is closed (every call
still waiting fails at once), `broken` turns true so callers skip Redis
without waiting, and a background probe reconnects (connect, AUTH/SELECT,
SCRIPT LOAD, PING) with a growing pause, up to `PROBE_MAX` s. The outage and
the recovery are logged once each.

A timed-out reply gets one more turn of the event loop before it counts as
an outage: under uvloop timers run before I/O is read, so a loop busy with a
burst would otherwise mistake a reply it has not read yet for a dead Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from tandem.ags.policies.base import SharedState

log = logging.getLogger("tandem.ags.policies.redis")

SCRIPT = b"""local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
SHA = hashlib.sha1(SCRIPT).hexdigest().encode()
PROBE_MIN, PROBE_MAX = 0.1, 1.0
GRACE = 0.001  # one more loop turn for a late reply (see the module docstring)


class RedisUnavailable(Exception):
    """Redis did not count this request: not connected, no reply in time, or an error reply."""


class ReplyError(Exception):
    """An error reply (`-ERR ...`); returned as a value by the protocol, never raised by it."""


def command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int] | None:
    """One RESP2 reply at `pos`: (value, next position), or None when incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos], bytes(buf[pos + 1:end])
    nxt = end + 2
    if kind == 0x3A:  # ':'
        return int(line), nxt
    if kind == 0x2B:  # '+'
        return line, nxt
    if kind == 0x2D:  # '-'
        return ReplyError(line.decode("utf-8", "replace")), nxt
    if kind == 0x24:  # '$'
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return bytes(buf[nxt:nxt + n]), nxt + n + 2
    if kind == 0x2A:  # '*'
        n = int(line)
        items = []
        for _ in range(max(n, 0)):
            r = parse(buf, nxt)
            if r is None:
                return None
            item, nxt = r
            items.append(item)
        return (items if n >= 0 else None), nxt
    raise ValueError(f"not a RESP reply: {bytes(buf[pos:pos + 20])!r}")


class _Resp(asyncio.Protocol):
    """One pipelined connection: `send(cmd)` returns a future resolved with the reply (errors as values)."""

    def __init__(self, on_lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buf = bytearray()
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, cmd: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        self.transport.write(cmd)  # type: ignore[union-attr]
        fut = loop.create_future()
        self.waiting.append(fut)  # after the write: a write that raises leaves nothing waiting
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, waiting = 0, self.waiting
        try:
            while pos < len(buf):
                r = parse(buf, pos)
                if r is None:
                    break
                value, pos = r
                if waiting:
                    fut = waiting.popleft()
                    if not fut.done():  # done: the caller gave up on it (timeout), the reply is dropped
                        fut.set_result(value)
        except ValueError as exc:
            self.fail(f"garbled reply ({exc})")
            return
        del buf[:pos]

    def fail(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(RedisUnavailable(reason))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self.waiting = self.waiting, deque()
        err = exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(f"connection lost ({exc or 'closed'})")
        for fut in waiting:
            if not fut.done():
                fut.set_exception(err)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self, str(err))


def parse_url(url: str) -> tuple[str, int, int, str | None, str | None, bool]:
    """redis[s]://[[user]:password@]host[:port][/db] -> (host, port, db, user, password, tls); ValueError if bad."""
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url: expected redis://host:port/db (or rediss://), got {url!r}")
    try:
        port = u.port or 6379
        db = u.path.strip("/")
        number = int(db) if db else 0
    except ValueError as exc:
        raise ValueError(f"redis_url: bad port or database number in {url!r}") from exc
    return (u.hostname or "127.0.0.1", port, number, unquote(u.username) if u.username else None,
            unquote(u.password) if u.password else None, u.scheme == "rediss")


class RedisCounter(SharedState):
    """Fixed-window counters on one Redis server (see the module docstring).

    `broken` is true while the breaker is open: callers skip Redis then.
    `incr(key, expire_ms, timeout)` returns (count, pttl ms) or raises
    RedisUnavailable within `timeout` s (plus one loop turn)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.url = url
        self.host, self.port, self.db, self.username, self.password, tls = parse_url(url)
        self.tls = ssl.create_default_context() if tls else None  # loaded once, not per connect
        self.where = f"{self.host}:{self.port}/{self.db}"
        self.loop = loop
        self.proto: _Resp | None = None
        self.broken = False
        self.broken_since = 0.0
        self.connecting: asyncio.Future[None] | None = None
        self.probe: asyncio.Task[None] | None = None
        self.closed = False
        self.counts = self.failures = 0

    def __repr__(self) -> str:
        state = "broken" if self.broken else "up" if self.proto is not None else "idle"
        return f"<RedisCounter {self.where} {state} counts={self.counts} failures={self.failures}>"

    # ---- the per-request call ----
    async def incr(self, key: bytes, expire_ms: int, timeout: float) -> tuple[int, int]:
        proto = self.proto
        if proto is None or proto.transport is None:
            if self.broken or self.closed:
                raise RedisUnavailable(f"redis at {self.where} is unreachable")
            await self._first_connect(timeout)
            proto = self.proto
            assert proto is not None
        loop = self.loop
        assert loop is not None
        reply = await self._call(proto, command(b"EVALSHA", SHA, b"1", key, b"%d" % expire_ms), timeout, loop)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # the script did not run, so nothing was counted: sending it whole is not a second count
            reply = await self._call(proto, command(b"EVAL", SCRIPT, b"1", key, b"%d" % expire_ms), timeout, loop)
        if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], int):
            self.counts += 1
            return reply[0], int(reply[1])
        self.failures += 1
        self.trip(f"unexpected reply {reply!r}")
        raise RedisUnavailable(f"redis at {self.where} answered {reply!r}")

    async def _call(self, proto: _Resp, cmd: bytes, timeout: float, loop: asyncio.AbstractEventLoop) -> Any:
        if proto.transport is None:
            raise RedisUnavailable(f"redis at {self.where} is unreachable")
        try:
            fut = proto.send(cmd, loop)
        except (OSError, RuntimeError) as exc:  # a transport closing under us: an outage like any other
            self.trip(f"cannot send ({exc})")
            raise RedisUnavailable(f"redis at {self.where} is unreachable") from exc
        timer = loop.call_later(timeout, self._late, fut, timeout)
        try:
            return await fut
        except RedisUnavailable:
            self.failures += 1
            raise
        finally:
            timer.cancel()

    def _late(self, fut: asyncio.Future[Any], timeout: float) -> None:
        if not fut.done():
            assert self.loop is not None
            self.loop.call_later(GRACE, self._timed_out, fut, timeout)

    def _timed_out(self, fut: asyncio.Future[Any], timeout: float) -> None:
        if not fut.done():
            self.trip(f"no reply within {timeout} s")  # closes the connection: fut fails with the others

    # ---- connecting, the breaker and the probe ----
    async def _first_connect(self, timeout: float) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self.connecting is None:
            self.connecting = self.loop.create_task(self._open(timeout))
        connecting = self.connecting
        assert connecting is not None
        try:
            await asyncio.wait_for(asyncio.shield(connecting), timeout + GRACE)
        except (TimeoutError, OSError, RedisUnavailable) as exc:
            if self.connecting is connecting:
                connecting.cancel()
                self.connecting = None
                self.trip(f"cannot connect ({exc or type(exc).__name__})")
            raise RedisUnavailable(f"redis at {self.where} is unreachable") from exc

    async def _open(self, timeout: float) -> None:
        """Connect and prepare a connection; it becomes `self.proto` only when it works."""
        loop = self.loop
        assert loop is not None
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Resp(self._lost), self.host, self.port,
                                   ssl=self.tls), timeout)
        try:
            setup = []
            if self.password is not None:
                setup.append(command(b"AUTH", self.password.encode()) if self.username is None
                             else command(b"AUTH", self.username.encode(), self.password.encode()))
            if self.db:
                setup.append(command(b"SELECT", b"%d" % self.db))
            setup += [command(b"SCRIPT", b"LOAD", SCRIPT), command(b"PING")]
            replies = await asyncio.wait_for(asyncio.gather(*(proto.send(c, loop) for c in setup)), timeout)
            bad = [r for r in replies if isinstance(r, ReplyError)]
            if bad:
                raise RedisUnavailable(f"setup refused: {bad[0]}")
        except BaseException:
            proto.on_lost = None
            if proto.transport is not None:
                proto.transport.abort()
            raise
        if self.closed:
            proto.on_lost = None
            proto.transport.abort()  # type: ignore[union-attr]
            return
        self.proto = proto
        self.connecting = None

    def _lost(self, proto: _Resp, reason: str) -> None:
        if proto is self.proto:
            self.trip(reason)

    def trip(self, reason: str) -> None:
        """Open the breaker: close the connection, fail what waits on it, probe in the background."""
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.on_lost = None
            proto.fail(reason)
        if self.broken or self.closed:
            return
        self.broken = True
        self.broken_since = time.monotonic()
        log.warning("redis at %s unreachable (%s): cluster rate limits use their fail mode until it is back",
                    self.where, reason)
        loop = self.loop
        if loop is not None and self.probe is None:
            self.probe = loop.create_task(self._probe())

    async def _probe(self) -> None:
        pause = PROBE_MIN
        try:
            while not self.closed:
                await asyncio.sleep(pause)
                try:
                    await self._open(max(1.0, pause))
                except (OSError, TimeoutError, RedisUnavailable) as exc:
                    log.debug("redis at %s still unreachable: %s", self.where, exc)
                    pause = min(pause * 2, PROBE_MAX)
                    continue
                if self.proto is not None:
                    self.broken = False
                    log.warning("redis at %s reachable again after %.1f s", self.where,
                                time.monotonic() - self.broken_since)
                return
        finally:
            self.probe = None

    async def close(self) -> None:
        self.closed = True
        for task in (self.probe, self.connecting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.on_lost = None
            proto.fail("client closed")


__all__ = ["RedisCounter", "RedisUnavailable", "SCRIPT", "SHA", "command", "parse", "parse_url"]
