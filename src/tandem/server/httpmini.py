"""A small HTTP/1.1 server on raw asyncio + httptools, for the HA port.

The HA port answers status probes every few tens of milliseconds and carries
the peer backchannel, so it stays off any framework: a route table of
`async handler(Request) -> Response`, keep-alive, bounded header and body
sizes, and a hard per-request deadline so a slow peer cannot pin a task.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

log = logging.getLogger("tandem.http")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024  # snapshots travel over the backchannel
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str

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


class _Protocol(asyncio.Protocol):
    def __init__(self, server: MiniHTTPServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._reset()
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.header_bytes = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)
        except _TooBig as exc:
            self._fail(exc.status)

    def _fail(self, status: int) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.write(Response.json({"error": REASONS.get(status, "bad request")}, status).encode(False))
            self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _TooBig(431)
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY_BYTES:
            raise _TooBig(413)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        req = Request(self.parser.get_method().decode(), parsed.path.decode("latin-1"),
                      (parsed.query or b"").decode("latin-1"), self.headers, bytes(self.body),
                      f"{peer[0]}:{peer[1]}" if peer else "?")
        self.keep_alive = self.parser.should_keep_alive()
        self._reset()
        self.queue.put_nowait(req)

    async def _serve(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.transport is None or self.transport.is_closing():
                return
            try:
                resp = await asyncio.wait_for(self.server.dispatch(req), self.server.request_timeout)
            except TimeoutError:
                resp = Response.json({"error": "request timed out"}, 503)
            except Exception:  # a handler bug must not kill the HA port
                log.exception("HA port handler failed for %s %s", req.method, req.path)
                resp = Response.json({"error": "internal error"}, 500)
            keep = self.server.accepting and req.headers.get("connection", "").lower() != "close"
            if not self.transport.is_closing():
                self.transport.write(resp.encode(keep))
                if not keep:
                    self.transport.close()
                    return


class _TooBig(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class MiniHTTPServer:
    def __init__(self, request_timeout: float = 30.0) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.prefix_routes: list[tuple[str, str, Handler]] = []
        self.connections: set[_Protocol] = set()
        self.request_timeout = request_timeout
        self.accepting = True
        self._server: asyncio.base_events.Server | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        if path.endswith("*"):
            self.prefix_routes.append((method, path[:-1], handler))
        else:
            self.routes[(method, path)] = handler

    async def dispatch(self, req: Request) -> Response:
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            for method, prefix, h in self.prefix_routes:
                if method == req.method and req.path.startswith(prefix):
                    handler = h
                    break
        if handler is None:
            known = any(p == req.path for (_, p) in self.routes)
            return Response.json({"error": f"no route {req.method} {req.path}"}, 405 if known else 404)
        return await handler(req)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), host, port, reuse_address=True,
                                                backlog=1024)

    async def close(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
