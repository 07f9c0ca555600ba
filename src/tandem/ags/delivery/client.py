"""A small HTTP/1.1 keep-alive client for delivering stored messages (server process only).

`TargetClient(target)` keeps idle connections to one target. `send(head,
body, connect_timeout, read_timeout)` writes one request and returns the
response status once the whole response has been read (its body is read
and dropped: a delivery only needs the status). Any failure raises
`DeliveryError` naming it; the connection is then closed, never reused.
A request that failed on a reused idle connection before any response byte
is sent once more on a new one (the target closed it while idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

IDLE_MAX = 64
MAX_HEAD = 64 * 1024


class DeliveryError(Exception):
    pass


class _Conn:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.reused = reader, writer, False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class TargetClient:
    def __init__(self, host: str, port: int, tls: bool = False) -> None:
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None  # verified, as the proxy
        self.idle: list[_Conn] = []

    def __repr__(self) -> str:
        return f"<TargetClient {self.host}:{self.port} idle={len(self.idle)}>"

    async def send(self, head: bytes, body: bytes, connect_timeout: float, read_timeout: float) -> int:
        conn = self.idle.pop() if self.idle else None
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, read_timeout)
            except _Stale:
                pass  # closed while idle: once more on a new connection
        conn = await self._connect(connect_timeout)
        try:
            return await self._exchange(conn, head, body, read_timeout)
        except _Stale as exc:
            raise DeliveryError("the target closed the connection without a response") from exc

    async def _connect(self, timeout: float) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_HEAD, ssl=self.ssl,
                                        server_hostname=self.host if self.ssl else None), timeout)
        except TimeoutError:
            raise DeliveryError(f"connecting to {self.host}:{self.port} timed out") from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS with {self.host}:{self.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, timeout: float) -> int:
        reused, conn.reused = conn.reused, True
        try:
            conn.writer.write(head + body if len(body) < 16384 else head)
            if len(body) >= 16384:
                conn.writer.write(body)
            status, keep = await asyncio.wait_for(self._response(conn, reused), timeout)
        except _Stale:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise DeliveryError(f"no response from {self.host}:{self.port} within {timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            raise DeliveryError(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from None
        if keep and len(self.idle) < IDLE_MAX:
            self.idle.append(conn)
        else:
            conn.close()
        return status

    async def _response(self, conn: _Conn, reused: bool) -> tuple[int, bool]:
        r = conn.reader
        while True:
            try:
                raw = await r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _Stale() from None
                raise
            lines = raw[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200:  # 100 Continue and other interim answers
                continue
            break
        length: int | None = None
        close = parts[0] == b"HTTP/1.0"  # keep-alive only when it says so
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif name == b"connection":
                v = value.lower()
                close = b"close" in v or (close and b"keep-alive" not in v)
        if status in (204, 304):
            return status, not close
        if chunked:
            while True:
                size_line = await r.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await r.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                await r.readexactly(size + 2)
        elif length is not None:
            left = length
            while left > 0:
                chunk = await r.read(min(left, 65536))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
        else:  # delimited by the close
            while await r.read(65536):
                pass
            return status, False
        return status, not close

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


class _Stale(Exception):
    """A reused connection closed before any response byte."""
