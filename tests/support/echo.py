"""A small HTTP backend for tests and benchmarks: `python tests/support/echo.py --port N`.

It logs every request it receives completely (one JSON line per request,
`--log FILE`), which is how tests prove that a refused request never reached
a backend. Endpoints (under any prefix):

    .../slow?s=SECONDS          answer after a delay
    .../bytes?n=N[&chunked=1]   stream N bytes (Content-Length, or chunked)
    .../status?code=C           answer with status C
    .../flaky?fail=N[&code=C]   status C (503) for the first N requests with the same Idempotency-Key, then echo
    anything else               echo: method, path, query, headers, body length and sha256 as JSON
Request bodies are read as they stream and hashed, never kept whole.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from typing import Any
from urllib.parse import parse_qs

import httptools

CHUNK = 64 * 1024


class EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.sha = hashlib.sha256()
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.sha.update(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url)
        req = {"method": self.parser.get_method().decode(), "path": url.path.decode("latin-1"),
               "query": (url.query or b"").decode("latin-1"), "headers": self.headers,
               "body_bytes": self.size, "body_sha256": self.sha.hexdigest()}
        self.server.record(req)
        keep = self.parser.should_keep_alive()
        prev = self.tasks[-1] if self.tasks else None
        self.tasks.append(asyncio.get_running_loop().create_task(self.respond(req, keep, prev)))

    async def respond(self, req: dict[str, Any], keep: bool, prev: asyncio.Task[None] | None) -> None:
        if prev is not None:
            await prev  # pipelined: answer in order
        t = self.transport
        if t is None or t.is_closing():
            return
        q = {k: v[0] for k, v in parse_qs(req["query"]).items()}
        tail = b"" if keep else b"Connection: close\r\n"
        path = req["path"]
        if path.endswith("/slow"):
            await asyncio.sleep(float(q.get("s", "1")))
        if path.endswith("/bytes"):
            n = int(q.get("n", "0"))
            chunked = q.get("chunked") == "1"
            framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % n
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + framing + tail + b"\r\n")
            block = b"x" * CHUNK
            while n > 0 and not t.is_closing():
                piece = block[: min(n, CHUNK)]
                n -= len(piece)
                t.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if t.get_write_buffer_size() > 4 * CHUNK:
                    await asyncio.sleep(0.001)
            if chunked:
                t.write(b"0\r\n\r\n")
        else:
            status = int(q.get("code", "200")) if path.endswith("/status") else 200
            if path.endswith("/flaky"):
                key = next((v for k, v in req["headers"] if k.lower() == "idempotency-key"), "")
                seen = self.server.seen[key] = self.server.seen.get(key, 0) + 1
                if seen <= int(q.get("fail", "1")):
                    status = int(q.get("code", "503"))
            body = json.dumps({**req, "backend": self.server.name}).encode()
            head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nX-Backend: %s\r\n" % (
                status, self.server.name.encode())
            if req["method"] == "HEAD" or status in (204, 304):
                t.write(head + b"Content-Length: %d\r\n" % len(body) * (status != 204) + tail + b"\r\n")
            else:
                t.write(head + b"Content-Length: %d\r\n" % len(body) + tail + b"\r\n" + body)
        if not keep:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class EchoServer:
    def __init__(self, name: str = "echo", log_path: str | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.requests: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}  # Idempotency-Key -> requests (the flaky endpoint)
        self.server: asyncio.AbstractServer | None = None

    def record(self, req: dict[str, Any]) -> None:
        self.requests.append(req)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(req) + "\n")

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.get_running_loop().create_server(lambda: EchoProtocol(self), host, port)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="echo")
    ap.add_argument("--log", default=None, help="append every request received as a JSON line")
    args = ap.parse_args(argv)

    async def run() -> None:
        srv = EchoServer(args.name, args.log)
        port = await srv.start(args.host, args.port)
        print(f"echo backend {args.name} listening on http://{args.host}:{port} pid={os.getpid()}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
