"""A small HTTP/1.1 server on raw asyncio + httptools, for the HA port.

The HA port answers status probes every few tens of milliseconds and carries
the peer backchannel, so it stays off any framework: a route table of
`async handler(Request) -> Response`, keep-alive, and limits that hold against
a hostile client (docs/limits.md):

- every route declares its largest body; a larger Content-Length (or a chunked
  body) is refused from the head, before one body byte is buffered;
- a route may declare a `Gate`: it checks the head (the backchannel's frame
  signature) before the body is read, and the body's SHA-256 once it is in;
  a refused head closes the connection, so an unauthenticated client never
  costs more than its head;
- connections are capped; a request head must arrive whole within the head
  timeout (not restarted per byte), a body may not stall longer than it, an
  idle keep-alive connection is closed after the idle timeout, and each
  request has a hard deadline so a slow peer cannot pin a task;
- every refusal is counted by reason (`refused`) and logged once per client
  and minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httptools

log = logging.getLogger("tandem.http")

MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_BODY = 64 * 1024
REFUSAL_LOG_INTERVAL = 60.0
SWEEP_INTERVAL = 0.25
# every reason a refusal is counted under (the metric shows each, from 0)
REFUSAL_KINDS = ("auth", "body_timeout", "body_too_large", "connections", "header_timeout", "header_too_large",
                 "malformed", "no_route")
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Limits:
    """The HA port's limits; times in seconds."""

    max_connections: int = 32
    header_timeout: float = 5.0
    idle_timeout: float = 30.0


class Refused(Exception):
    """A request refused from its head (or its body's digest): `status`, a short
    `kind` for the metric, and the reason for the log and the client."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason


class Gate(Protocol):
    """Admission of a request before its body is read."""

    def admit(self, method: str, path: str, headers: dict[str, str], length: int) -> Any:
        """Check the head; return a token for `finish`, or raise Refused."""

    def finish(self, token: Any, length: int, digest: str) -> None:
        """Check the whole body (its SHA-256 hex digest); raise Refused."""


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str
    auth: Any = None  # what the route's gate admitted (the verified frame)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, separators=(",", ":")).encode())

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), content_type)

    def encode(self, keep_alive: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        if not keep_alive:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    max_body: int = DEFAULT_MAX_BODY
    gate: Gate | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, server: MiniHTTPServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._reset()
        self.queue: asyncio.Queue[tuple[Request, Route] | None] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        now = time.monotonic()
        self.idle_since: float | None = now  # waiting for a request's first byte since
        self.head_started: float | None = None  # a head is arriving since
        self.last_body: float | None = None  # a body is arriving; its last bytes at
        self.busy = 0  # requests parsed and not yet answered

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.header_bytes = 0
        self.route: Route | None = None
        self.token: Any = None
        self.hasher: Any = None
        self.length = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.server.connections) >= self.server.limits.max_connections:
            self.server.refuse(self.peer, "connections", f"{self.server.limits.max_connections} connections open")
            self.transport.abort()
            return
        self.server.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.idle_since is not None:
            self.idle_since, self.head_started = None, time.monotonic()
        elif self.last_body is not None:
            self.last_body = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Refused(400, "malformed", "upgrade not supported"))
        except httptools.HttpParserError as exc:
            # a Refused raised in a callback reaches us wrapped (HttpParserCallbackError)
            cause = exc.__context__
            self._fail(cause if isinstance(cause, Refused) else Refused(400, "malformed", f"malformed request: {exc}"))
        except Refused as exc:
            self._fail(exc)

    def _fail(self, exc: Refused) -> None:
        self.server.refuse(self.peer, exc.kind, exc.reason)
        if self.transport and not self.transport.is_closing():
            self.transport.write(Response.json({"error": exc.reason}, exc.status).encode(False))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.head_started is None:
            self.idle_since, self.head_started = None, time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEADER_BYTES:
            raise Refused(431, "header_too_large", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise Refused(431, "header_too_large", f"request head over {MAX_HEADER_BYTES} bytes")
        key = name.decode("latin-1").lower()
        if key in self.headers and key in ("content-length", "transfer-encoding", "x-tandem-auth"):
            raise Refused(400, "malformed", f"duplicate {key} header")
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_started = None
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self.url).path.decode("latin-1")
        route = self.server.lookup(method, path)
        if route is None:
            known = self.server.known_path(path)
            raise Refused(405 if known else 404, "no_route", f"no route {method} {path}")
        if "transfer-encoding" in self.headers:
            raise Refused(411, "malformed", "a body needs a Content-Length on the HA port (no chunked bodies)")
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            raise Refused(400, "malformed", "bad Content-Length") from None
        if length > route.max_body:
            raise Refused(413, "body_too_large", f"{method} {path} takes at most {route.max_body} bytes, "
                                                 f"{length} declared")
        if route.gate is not None:
            self.token = route.gate.admit(method, path, self.headers, length)
            self.hasher = hashlib.sha256()
        self.route, self.length = route, length
        if length:
            self.last_body = time.monotonic()

    def on_body(self, body: bytes) -> None:
        assert self.route is not None
        if len(self.body) + len(body) > self.length:
            raise Refused(400, "malformed", "body longer than its Content-Length")
        self.body += body
        if self.hasher is not None:
            self.hasher.update(body)

    def on_message_complete(self) -> None:
        self.last_body = None
        parsed = httptools.parse_url(self.url)
        route = self.route
        assert self.transport is not None and route is not None
        if route.gate is not None:
            route.gate.finish(self.token, len(self.body), self.hasher.hexdigest())
        req = Request(self.parser.get_method().decode(), parsed.path.decode("latin-1"),
                      (parsed.query or b"").decode("latin-1"), self.headers, bytes(self.body), self.peer,
                      auth=self.token)
        self._reset()
        self.busy += 1
        self.queue.put_nowait((req, route))

    async def _serve(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None or self.transport is None or self.transport.is_closing():
                return
            req, route = item
            try:
                resp = await asyncio.wait_for(route.handler(req), self.server.request_timeout)
            except TimeoutError:
                resp = Response.json({"error": "request timed out"}, 503)
            except Exception:  # a handler bug must not kill the HA port
                log.exception("HA port handler failed for %s %s", req.method, req.path)
                resp = Response.json({"error": "internal error"}, 500)
            self.busy -= 1
            keep = self.server.accepting and req.headers.get("connection", "").lower() != "close"
            if not self.transport.is_closing():
                self.transport.write(resp.encode(keep))
                if not keep:
                    self.transport.close()
                    return
            if self.busy == 0 and self.head_started is None and self.last_body is None:
                self.idle_since = time.monotonic()

    def sweep(self, now: float) -> None:
        """Close this connection when a deadline passed (the server's sweeper calls this)."""
        lim = self.server.limits
        if self.transport is None or self.transport.is_closing():
            return
        if self.head_started is not None and now - self.head_started > lim.header_timeout:
            self._fail(Refused(408, "header_timeout", f"request head not complete within {lim.header_timeout:g} s"))
        elif self.last_body is not None and now - self.last_body > lim.header_timeout:
            self._fail(Refused(408, "body_timeout", f"request body stalled for {lim.header_timeout:g} s"))
        elif self.busy == 0 and self.idle_since is not None and now - self.idle_since > lim.idle_timeout:
            self.transport.close()


class MiniHTTPServer:
    def __init__(self, request_timeout: float = 30.0, limits: Limits | None = None) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.prefix_routes: list[tuple[str, str, Route]] = []
        self.connections: set[_Protocol] = set()
        self.request_timeout = request_timeout
        self.limits = limits or Limits()
        self.accepting = True
        self.refused: Counter[str] = Counter()  # refusals by kind, for /metrics
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (client host, kind) -> (at, suppressed)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def route(self, method: str, path: str, handler: Handler, *, max_body: int = DEFAULT_MAX_BODY,
              gate: Gate | None = None) -> None:
        r = Route(handler, max_body, gate)
        if path.endswith("*"):
            self.prefix_routes.append((method, path[:-1], r))
        else:
            self.routes[(method, path)] = r

    def lookup(self, method: str, path: str) -> Route | None:
        r = self.routes.get((method, path))
        if r is None:
            for m, prefix, pr in self.prefix_routes:
                if m == method and path.startswith(prefix):
                    return pr
        return r

    def known_path(self, path: str) -> bool:
        return any(p == path for (_, p) in self.routes)

    async def dispatch(self, req: Request) -> Response:
        """Answer one request as if it had arrived (for in-process callers and tests)."""
        route = self.lookup(req.method, req.path)
        if route is None:
            return Response.json({"error": f"no route {req.method} {req.path}"},
                                 405 if self.known_path(req.path) else 404)
        return await route.handler(req)

    def refuse(self, peer: str, kind: str, reason: str) -> None:
        """Count a refusal; log it once per client host, kind and minute."""
        self.refused[kind] += 1
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        at, suppressed = self._logged.get((host, kind), (-REFUSAL_LOG_INTERVAL, 0))
        if now - at < REFUSAL_LOG_INTERVAL:
            self._logged[(host, kind)] = (at, suppressed + 1)
            return
        more = f" ({suppressed} more from {host} in the last minute)" if suppressed else ""
        log.warning("HA port refused a request from %s: %s%s", peer, reason, more)
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[(host, kind)] = (now, 0)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.sweep(now)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), host, port, reuse_address=True,
                                                backlog=1024)
        self._sweeper = loop.create_task(self._sweep())

    async def close(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
