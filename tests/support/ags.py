"""Helpers for the gateway's tests and benchmarks (nothing here is on the serving path).

    doc = make_document([project("pets", "/pets", "http://127.0.0.1:9000/v1")], revision=3)
    with FeedServer() as feed:                # a scriptable AMS feed in a thread
        feed.set(doc)                         # or feed.mode = "garbage" | "500" | "partial" | "hang"
        ...
    status, headers, body = raw_request(port, b"GET /pets/x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")

Processes (the echo backend, `tandem server`) and waiting are in harness.py; the
stand-in host a GatewayService runs in is host.py's `HostStandIn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tandem.model.document import document_digest as canonical_digest
from tandem.net.httpmini import MiniHTTPServer, Request, Response
from tests.support.harness import free_port


def project(name: str, context_path: str, *urls: str, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "version": "1", "context_path": context_path,
                         "targets": [{"url": u, "weight": 1} for u in urls], "hosts": [], "methods": [],
                         "resources": [], "policies": []}
    p.update(extra)
    return p


class SinkTransport:
    """An asyncio transport on no socket: keeps what is written (`data`), never blocks, never
    closes. The gateway's protocol objects run on it in-process. (bench/gateway_instructions.py keeps
    a transport of its own that only counts: its cost is part of what that benchmark measures.)"""

    peer = ("10.0.0.7", 40000)

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.write(p)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def make_document(projects: list[dict[str, Any]], revision: int = 1, environment: str = "default",
                  consumers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"environment": environment, "revision": revision,
                           "generated_at": "2026-11-25T10:00:00Z", "projects": projects,
                           "consumers": consumers or []}
    doc["digest"] = canonical_digest(doc)
    return doc


class FeedServer:
    """A scriptable AMS config feed (docs/config-feed.md) on its own thread and loop.

    `mode`: "doc" (long poll over `set()` documents), "garbage" (200, not JSON),
    "partial" (200, a document whose digest does not match), "500", "hang"
    (accepts, never answers). `polls` records every poll's query parameters."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "doc"
        self.doc: dict[str, Any] | None = None
        self.polls: list[dict[str, str]] = []
        self.tokens: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._http: MiniHTTPServer | None = None

    def __enter__(self) -> FeedServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("feed server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._http = MiniHTTPServer(request_timeout=120)
        self._http.route("GET", "/api/v1/gateway/config", self._feed)
        await self._http.start("127.0.0.1", self.port)

    def set(self, doc: dict[str, Any]) -> None:
        def swap() -> None:
            self.doc = doc
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()
        self._loop.call_soon_threadsafe(swap)

    async def _feed(self, req: Request) -> Response:
        q = {k: v[0] for k, v in parse_qs(req.query).items()}
        self.polls.append(q)
        self.tokens.append(req.headers.get("authorization", ""))
        deadline = time.monotonic() + min(float(q.get("wait", "30")), 30.0)
        while True:  # the mode is read again after each wake-up: tests switch it while a poll is held
            doc, changed = self.doc, self._changed
            if self.mode == "garbage":
                return Response(200, b"<html>this is not a configuration</html>", "text/html")
            if self.mode == "500":
                return Response.json({"error": "boom"}, 500)
            if self.mode == "partial" and doc is not None:
                broken = dict(doc, projects=doc["projects"][:-1])
                return Response(200, json.dumps(broken).encode())
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if doc is not None and str(doc["revision"]) != q.get("revision"):
                return Response(200, json.dumps(doc).encode())
            left = deadline - time.monotonic()
            if left <= 0 or changed is None:
                return Response(304, b"")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def close(self) -> None:
        if self._thread.is_alive():
            async def stop() -> None:
                if self._http is not None:
                    await self._http.close()
                me = asyncio.current_task()
                for task in asyncio.all_tasks():
                    if task is not me:
                        task.cancel()
            fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            settle = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), self._loop)
            with contextlib.suppress(Exception):
                settle.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response until the server closes or Content-Length is met."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if "content-length" in headers:
            want = int(headers["content-length"])
            while len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, headers, body


async def send_and_read(port: int, data: bytes, responses: int = 1, timeout: float = 10.0,
                        head_requests: int = 0) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes on one connection and parse `responses` responses (httptools).
    The first `head_requests` responses are to HEAD requests (no body whatever the headers say)."""
    import httptools

    out: list[tuple[int, dict[str, str], bytes]] = []
    state: dict[str, Any] = {}

    class P:
        def on_message_begin(self) -> None:
            state.update(headers={}, body=b"")

        def on_header(self, name: bytes, value: bytes) -> None:
            state["headers"][name.decode().lower()] = value.decode("latin-1")

        def on_headers_complete(self) -> None:
            if len(out) < head_requests:
                out.append((parser.get_status_code(), state["headers"], b""))
                state["head_done"] = True

        def on_body(self, body: bytes) -> None:
            state["body"] += body

        def on_message_complete(self) -> None:
            if state.pop("head_done", False):
                return
            out.append((parser.get_status_code(), state["headers"], state["body"]))

    parser = httptools.HttpResponseParser(P())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        end = time.monotonic() + timeout
        while len(out) < responses:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, end - time.monotonic()))
            if not chunk:
                break
            if state.get("head_done"):  # a HEAD response ends with its head: start a fresh parser
                state.pop("head_done")
                parser = httptools.HttpResponseParser(P())
            parser.feed_data(chunk)
            if state.get("head_done") and len(out) < responses:
                state.pop("head_done")
                parser = httptools.HttpResponseParser(P())
    finally:
        writer.close()
    return out


def run_gateway(test: Callable[[Any, int, list[Any], list[str]], Any], backends: int = 1,
                timeout: float = 30.0, **settings: Any) -> None:
    """Run `await test(gateway, port, echo_servers, echo_urls)` on a fresh uvloop with an in-process
    Gateway listening on a free port in front of `backends` echo servers; everything closed after."""
    import dataclasses

    import uvloop

    from tandem.ags.gateway import Gateway
    from tandem.ags.settings import GatewaySettings
    from tandem.net.sockets import listen_socket
    from tests.support.echo import EchoServer

    async def main() -> None:
        echoes = [EchoServer(f"b{i}") for i in range(backends)]
        ports = [await e.start("127.0.0.1", 0) for e in echoes]
        gw = Gateway(dataclasses.replace(GatewaySettings(), **settings))
        sock = listen_socket("127.0.0.1", 0)
        await gw.listen(sock)
        try:
            await asyncio.wait_for(test(gw, sock.getsockname()[1], echoes,
                                        [f"http://127.0.0.1:{p}" for p in ports]), timeout)
        finally:
            await gw.drain(1.0)
            for e in echoes:
                e.close()

    uvloop.run(main())


class StepExchange:
    """The parts of an Exchange a policy step reads and writes, for unit tests of steps."""

    def __init__(self, ip: bytes = b"10.0.0.1", consumer: str | None = None) -> None:
        self.client_ip, self.consumer = ip, consumer
        self.resp_extra: list[bytes] | None = None

    def headers(self) -> dict[str, str]:
        """The response header lines the step added, as a dict."""
        lines = b"".join(self.resp_extra or []).decode().split("\r\n")
        return {k: v for k, _, v in (ln.partition(": ") for ln in lines if ln)}
