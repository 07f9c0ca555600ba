"""Fuzzing the gateway (issue 18): the strategies and the oracles, shared by the tests and bench/fuzz.py.

Two targets, each a hypothesis strategy plus a check that says what is wrong (None: nothing):

* request heads: `request_inputs()` (a grammar of request lines, header lines and bodies, with
  pipelining and byte mutations) and `raw_inputs()` (random bytes and HTTP token soup). `FuzzGateway`
  is a real `Gateway` on a loopback socket, in a thread of this process, in front of an echo backend
  (tests/support/echo.py); `HeadProbe.run(data)` sends one input on a fresh TCP connection and reads
  what comes back with deadlines, then `head_problems` applies the rules:

    - every response is a well-formed HTTP/1.1 response (status line, header lines, framing), and is
      either the gateway's own JSON error with a documented `code` for its status and the request id
      of its `X-Request-Id`, or the echo backend's 200 (`X-Backend`), or a 1xx/204;
    - never a 500; a 5xx only as documented for what was sent: 501 (upgrade, transfer coding),
      505 (version), and 502/504 only for a request to the projects whose upstream is down (/dead) or
      silent (/silent);
    - what reached the backend is one clean request per request the client completed (one Host, not
      both Content-Length and Transfer-Encoding, no hop-by-hop header, no dot segment in the path,
      X-Forwarded-For ending with the peer), never more requests than the client sent heads;
    - an input holding a complete head, a parse error, or a request head started (a URL byte) gets at
      least one answer: the connection is never closed or reset without one, and when it ends before
      every request was answered, the last answer said `Connection: close`;
    - never a hang: each answer (or the close) starts within `ANSWER_DEADLINE` s of the last byte
      exchanged (the gateway under fuzz has 0.2 s header, body and keep-alive timeouts, so a stalled
      input is answered 408 or closed well within it).

  After a run, `FuzzGateway.problems()` says whether the gateway itself is sane: it serves a normal
  request, logged no error and raised nothing on its loop, counted no `internal_error` or
  `policy_error`, and every connection and upstream exchange has ended.

* the config-feed document: `document_inputs()` (real documents from `build_document` with projects,
  policies and consumers, mutated at every field with the digest recomputed or not; random JSON;
  random bytes; deep nesting; huge numbers) and `DocumentTarget.problem(raw)`, the path the gateway's
  feed takes: `validate_document(raw, env)` either refuses with `ConfigRejected` (and a message) or
  returns the document, which `Gateway.apply` (compile_config) then turns into a routing table without
  raising anything (the service stores a validated document before it compiles it: a document that
  validates and then fails to compile would be stored, and fail every start after).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import jwt as pyjwt
from hypothesis import strategies as st

from tandem.ags.compiled_config import ConfigRejected, validate_document
from tandem.ags.settings import GatewaySettings
from tandem.model.document import build_document, document_digest
from tandem.passwords import hash_password
from tests.support.ags import project
from tests.support.harness import free_port

# ---------------------------------------------------------------------------------------------------
# the gateway under fuzz
# ---------------------------------------------------------------------------------------------------

HOST = b"api.test"
LIMITS = GatewaySettings()  # the shipped limits: heads are generated around them
FUZZ_SETTINGS: dict[str, Any] = {  # short client-side deadlines: a stalled input is answered fast
    "client_header_timeout": 0.2, "client_body_timeout": 0.2, "keepalive_timeout": 0.2,
    "send_timeout": 2.0, "connect_timeout": 0.5, "read_timeout": 5.0}
SWEEP_INTERVAL = 0.05  # the sweeper's period while the fuzz gateway runs (0.25 s in production)
ANSWER_DEADLINE = 2.0  # an answer (or the close) starts within this long of the last byte exchanged
CONNECTION_DEADLINE = 15.0  # one input's whole exchange
BASIC_USER, BASIC_PASSWORD = "alice", "secret"
API_KEY = "k-123"
JWT_SECRET, JWT_ISSUER = "s3cret-s3cret-s3cret-s3cret-s3cret", "issuer-a"
UPSTREAM_BASE = "/up"
# (status, code) pairs the gateway may answer here, from tandem/ags/error_responses.py's table; 500
# (internal_error, policy_error), 503 and 501 policy_not_supported are never right for this setup
GATEWAY_CODES: dict[str, int] = {
    "bad_request": 400, "missing_credentials": 401, "invalid_credentials": 401, "token_expired": 401,
    "token_not_yet_valid": 401, "invalid_claims": 401, "ip_forbidden": 403, "cors_forbidden": 403,
    "no_route": 404, "message_not_found": 404, "method_not_allowed": 405, "request_timeout": 408,
    "payload_too_large": 413, "uri_too_long": 414, "rate_limited": 429, "headers_too_large": 431,
    "upgrade_not_supported": 501, "transfer_encoding_not_supported": 501, "upstream_unavailable": 502,
    "upstream_timeout": 504, "version_not_supported": 505}
UPSTREAM_DOWN = (b"dead", b"silent")  # a 502/504 is right only for a request whose target names one
SERVED = ("pets", "hosted", "deep", "basic", "jwt", "key", "policy")  # projects whose upstream answers


def fuzz_projects(echo: str, dead: str, silent: str) -> list[dict[str, Any]]:
    """The configuration under fuzz: plain routes, hosts and methods, a deep context path, each auth
    policy, the request/response policies that read or edit headers, a dead and a silent upstream."""
    up = echo + UPSTREAM_BASE
    return [
        project("pets", "/pets", up),
        project("hosted", "/hosted", up, hosts=["api.test", "*.wild.test"], methods=["GET", "POST", "HEAD"]),
        project("deep", "/a/b/c", up),
        project("basic", "/basic", up, policies=[{"type": "basic-auth"}]),
        project("jwt", "/jwt", up, policies=[{"type": "jwt", "key_claim": "iss", "algorithms": ["HS256"]}]),
        project("key", "/key", up, policies=[{"type": "api-key", "query_param": "apikey"}]),
        project("policy", "/policy", up, policies=[
            {"type": "cors", "allow_origins": ["https://ok.test"], "allow_headers": ["X-Custom"]},
            {"type": "ip-filter", "allow": ["127.0.0.0/8"]},
            {"type": "rate-limit", "limit": 1_000_000, "window": 1},
            {"type": "request-headers", "set": {"X-Added": "1"}, "remove": ["Cookie"], "rename": {"X-Old": "X-New"}},
            {"type": "response-headers", "add": {"X-Resp": "1"}},
            {"type": "cache", "ttl": 60, "vary": ["Accept"]},
            {"type": "retry", "attempts": 2},
            {"type": "timeout", "read": 2}]),
        project("dead", "/dead", dead),
        project("silent", "/silent", silent, policies=[{"type": "timeout", "read": 0.2}]),
    ]


def fuzz_consumers() -> list[dict[str, Any]]:
    return [{"name": "acme", "keys": [{"id": "k1", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}],
             "credentials": {
                 "basic_auth": [{"username": BASIC_USER, "password_hash": hash_password(BASIC_PASSWORD, log2_n=4)}],
                 "jwt": [{"key": JWT_ISSUER, "algorithm": "HS256", "secret": JWT_SECRET}]}}]


class _NoMessages:
    """`services.queue` for /_tandem/messages/{id}: knows no message (404 message_not_found)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def find(self, message_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        fut.set_result(None)
        return fut


class _Errors(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = f"log {record.name} {record.levelname}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.sink.append(text)


class FuzzGateway:
    """A `Gateway` in front of an echo backend on its own thread and uvloop, for inputs sent from
    this thread over real sockets. Everything it starts is stopped by `close()` (no process)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {**FUZZ_SETTINGS, **settings}
        self.port = 0
        self.errors: list[str] = []  # error log records, exceptions on the loop
        self.gw: Any = None
        self.echo: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-gateway", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self._handler = _Errors(self.errors)
        self._sweep_was: float | None = None

    def __enter__(self) -> FuzzGateway:
        import tandem.ags.gateway as gateway_module

        self._sweep_was, gateway_module.SWEEP_INTERVAL = gateway_module.SWEEP_INTERVAL, SWEEP_INTERVAL
        for name in ("tandem", "asyncio"):
            logging.getLogger(name).addHandler(self._handler)
        self._thread.start()
        if not self._ready.wait(30) or self._failed is not None:
            self.close()
            raise RuntimeError(f"the fuzz gateway did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        import uvloop

        try:
            uvloop.run(self._main())
        except BaseException as exc:  # reported by __enter__ or close()
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        from tandem.ags.compiled_config import validate_document
        from tandem.ags.gateway import Gateway
        from tandem.net.sockets import listen_socket
        from tests.support.echo import EchoServer

        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.errors.append(
            f"loop: {ctx.get('message')} {ctx.get('exception')!r}"))
        self._stop = asyncio.Event()
        echo = self.echo = EchoServer("fuzz")
        echo_port = await echo.start("127.0.0.1", 0)
        silent = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)  # accepts, never answers
        silent_port = silent.sockets[0].getsockname()[1]
        gw = self.gw = Gateway(dataclasses.replace(GatewaySettings(), **self.settings))
        gw.services.queue = _NoMessages(loop)
        doc = build_document("default", 1, {p["name"]: p for p in fuzz_projects(
            f"http://127.0.0.1:{echo_port}", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{silent_port}")},
            fuzz_consumers(), "2026-12-01T00:00:00Z")
        gw.apply(validate_document(json.dumps(doc).encode(), "default"))
        sock = listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        await gw.listen(sock)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await gw.drain(1.0)
            echo.close()
            silent.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """`fn()` run on the gateway's loop (its state is only read there)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def backend_requests(self) -> int:
        return len(self.echo.requests)

    def close(self) -> None:
        import tandem.ags.gateway as gateway_module

        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(15)
        for name in ("tandem", "asyncio"):
            logging.getLogger(name).removeHandler(self._handler)
        if self._sweep_was is not None:
            gateway_module.SWEEP_INTERVAL, self._sweep_was = self._sweep_was, None

    # ---- after a run ----
    def problems(self) -> list[str]:
        """What is wrong with the gateway after a run (empty: it is sane)."""
        out = list(self.errors)
        ok = HeadProbe(self).run(b"GET /pets/alive?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        if ok.problems or len(ok.responses) != 1 or ok.responses[0].status != 200:
            out.append(f"a normal request after the run: {ok.summary()} {ok.problems}")
        else:
            seen = json.loads(ok.responses[0].body)
            if (seen["path"], seen["query"]) != (UPSTREAM_BASE + "/alive", "x=1"):
                out.append(f"a normal request after the run reached the backend as {seen['path']!r} {seen['query']!r}")
        gw = self.gw

        def state() -> tuple[int, int, int, dict[str, Any]]:
            busy = sum(len(p.busy) + len(p.waiters) for p in gw.pools.pools.values())
            stats = {name: (list(st.classes), dict(st.errors)) for name, st in gw.metrics.projects.items()}
            return len(gw.connections), len(gw.lingering), busy, stats
        deadline = time.monotonic() + 5.0
        while True:
            conns, lingering, busy, stats = self.call(state)
            if (conns, lingering, busy) == (0, 0, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if (conns, lingering, busy) != (0, 0, 0):
            out.append(f"5 s after the last input: {conns} client connection(s) open, {lingering} lingering, "
                       f"{busy} upstream exchange(s) busy or waiting")
        for name, (classes, errors) in stats.items():
            bad = {c: n for c, n in errors.items() if c in ("internal_error", "policy_error")}
            if bad:
                out.append(f"project {name}: the gateway counted {bad}")
            if name in SERVED and classes[5]:
                out.append(f"project {name} (upstream up): {classes[5]} 5xx answer(s) counted, errors {errors}")
        return out


# ---------------------------------------------------------------------------------------------------
# one input on one connection, and the rules
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Response:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return any(b"close" in v.lower() for v in self.headers.get(b"connection", []))


class RequestModel:
    """What the client sent, as llhttp (the gateway's own parser, strict) reads it: the complete heads
    (method, target), the complete messages, and where the input stopped."""

    def __init__(self, data: bytes) -> None:
        self.heads: list[tuple[bytes, bytes]] = []
        self.methods: list[bytes] = []  # of every request whose target started
        self.complete = 0
        self.error: str | None = None
        self.started = False  # a message is in progress at the end of the input
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error = "upgrade"
        except httptools.HttpParserError as exc:
            self.error = str(exc) or type(exc).__name__

    def on_message_begin(self) -> None:
        self.started, self.url = True, b""

    def on_url(self, url: bytes) -> None:
        if not self.url:  # the method is parsed by now: an answer to a HEAD has no body, even a refusal
            self.methods.append(self.parser.get_method())
        self.url += url

    def on_headers_complete(self) -> None:
        self.heads.append((self.parser.get_method(), self.url))

    def on_message_complete(self) -> None:
        self.complete += 1
        self.started = False

    @property
    def expected(self) -> int:
        """How many answers the gateway owes (fewer only if its last answer said Connection: close)."""
        owed = self.complete
        if self.error is not None or (self.started and (len(self.heads) > self.complete or self.url)):
            owed += 1  # the malformed request, the body that never ended, or the head that stalled
        return owed


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\t\x20-\x7e]*")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ?([\t\x20-\x7e\x80-\xff]*)")


def parse_responses(buf: bytes, methods: list[bytes], eof: bool) -> tuple[list[Response], str | None]:
    """The responses in `buf` (the i-th final one answers a request with method `methods[i]` when
    known); (responses, what is malformed or None). A truncated last response is malformed at EOF only."""
    out: list[Response] = []
    pos = 0
    while pos < len(buf):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, (f"truncated response head {buf[pos:pos + 200]!r}" if eof else None)
        lines = buf[pos:end].split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            return out, f"bad status line {lines[0][:200]!r}"
        status = int(m.group(1))
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            h = _HEADER_LINE.fullmatch(line)
            if h is None:
                return out, f"bad header line {line[:200]!r} in a {status} response"
            headers.setdefault(h.group(1).lower(), []).append(h.group(2).strip(b" \t"))
        pos = end + 4
        finals = sum(1 for r in out if r.status >= 200)
        is_head = finals < len(methods) and methods[finals] == b"HEAD"
        te, cl = headers.get(b"transfer-encoding"), headers.get(b"content-length")
        if te and cl:
            return out, f"a {status} response with both Transfer-Encoding and Content-Length"
        body = b""
        if status < 200 or status in (204, 304) or is_head:
            pass
        elif te:
            if [v.lower() for v in te] != [b"chunked"]:
                return out, f"a {status} response with Transfer-Encoding {te!r}"
            chunks = []
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return out, ("truncated chunked body" if eof else None)
                size_text = buf[pos:eol].split(b";")[0].strip()
                if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                    return out, f"bad chunk size {buf[pos:eol][:100]!r}"
                size = int(size_text, 16)
                pos = eol + 2
                if size == 0:
                    trailer_end = buf.find(b"\r\n", pos)
                    while trailer_end > pos:  # (trailer fields: skipped)
                        pos = trailer_end + 2
                        trailer_end = buf.find(b"\r\n", pos)
                    if trailer_end < 0:
                        return out, ("truncated chunked body" if eof else None)
                    pos = trailer_end + 2
                    break
                if len(buf) < pos + size + 2:
                    return out, ("truncated chunk" if eof else None)
                if buf[pos + size:pos + size + 2] != b"\r\n":
                    return out, "a chunk not followed by CRLF"
                chunks.append(buf[pos:pos + size])
                pos += size + 2
            body = b"".join(chunks)
        elif cl:
            if len(cl) != 1 or not cl[0].isdigit():
                return out, f"a {status} response with Content-Length {cl!r}"
            n = int(cl[0])
            if len(buf) < pos + n:
                return out, (f"a {status} response body shorter than its Content-Length" if eof else None)
            body, pos = buf[pos:pos + n], pos + n
        elif any(b"close" in v.lower() for v in headers.get(b"connection", [])):
            if not eof:
                return out, None  # delimited by the close: not complete yet
            body, pos = buf[pos:], len(buf)
        else:
            return out, f"a {status} response without framing (no Content-Length, chunked or close)"
        out.append(Response(status, headers, body))
    return out, None


@dataclasses.dataclass
class Outcome:
    data: bytes
    model: RequestModel
    responses: list[Response]
    eof: bool = False  # the gateway closed the connection
    reset: bool = False  # ... with a reset
    stopped: str = ""  # why reading stopped
    elapsed: float = 0.0
    backend_delta: int = 0  # requests the echo backend recorded meanwhile
    problems: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        statuses = [r.status for r in self.responses]
        return (f"{len(self.data)} bytes sent, model heads={len(self.model.heads)} complete={self.model.complete} "
                f"error={self.model.error!r} -> statuses {statuses}, eof={self.eof} reset={self.reset} "
                f"({self.stopped}, {self.elapsed:.2f} s)")


class HeadProbe:
    """Sends inputs to a FuzzGateway, one connection each, and judges what comes back."""

    def __init__(self, gateway: FuzzGateway) -> None:
        self.gateway = gateway

    def run(self, data: bytes) -> Outcome:
        model = RequestModel(data)
        methods = model.methods
        out = Outcome(data, model, [])
        before = self.gateway.backend_requests()
        t0 = time.monotonic()
        buf = b""
        malformed: str | None = None
        with socket.create_connection(("127.0.0.1", self.gateway.port), timeout=ANSWER_DEADLINE) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway answered and closed before taking everything: judged below
            except TimeoutError:
                out.problems.append(f"the gateway took nothing of the input for {ANSWER_DEADLINE} s")
            last = time.monotonic()
            while True:
                responses, malformed = parse_responses(buf, methods, out.eof or out.reset)
                out.responses = responses
                if malformed is not None:
                    out.stopped = "malformed"
                    break
                if out.eof or out.reset:
                    out.stopped = "closed"
                    break
                finals = [r for r in responses if r.status >= 200]
                if model.expected and len(finals) >= model.expected and not finals[-1].closes:
                    out.stopped = "answered, kept alive"
                    break
                now = time.monotonic()
                left = min(last + ANSWER_DEADLINE, t0 + CONNECTION_DEADLINE) - now
                if left <= 0:
                    out.stopped = "deadline"
                    out.problems.append(
                        f"hang: no answer and no close for {ANSWER_DEADLINE} s ({len(finals)} of "
                        f"{model.expected} answers received)" if now - last >= ANSWER_DEADLINE
                        else f"hang: the exchange went on for over {CONNECTION_DEADLINE} s")
                    break
                s.settimeout(left)
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    out.reset = True
                    continue
                if not chunk:
                    out.eof = True
                    continue
                buf += chunk
                last = time.monotonic()
        out.elapsed = time.monotonic() - t0
        if malformed is not None:
            out.problems.append(f"malformed response: {malformed}")
        # what reached the backend is recorded by the time its answer came back
        out.backend_delta = self.gateway.backend_requests() - before
        out.problems += head_problems(out, self.gateway.echo.requests[before:before + out.backend_delta])
        return out


_DOT_SEGMENT = re.compile(r"/\.\.?(/|$)|%2e", re.IGNORECASE)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect",
               "proxy-authorization", "x-real-ip", "forwarded"}


def head_problems(out: Outcome, backend: list[dict[str, Any]]) -> list[str]:
    """The rules of the module docstring, for one input's outcome and what the backend received."""
    problems: list[str] = []
    model = out.model
    finals = [r for r in out.responses if r.status >= 200]
    for i, r in enumerate(finals):
        method = model.methods[i] if i < len(model.methods) else b"?"
        target = model.heads[i][1] if i < len(model.heads) else model.url
        code = _gateway_code(r)
        if r.header(b"x-backend") is not None:
            if r.status != 200:
                problems.append(f"answer {i}: the backend answered {r.status}")
            if r.header(b"x-request-id") is None:
                problems.append(f"answer {i}: a proxied response without X-Request-Id")
        elif code is not None:
            if GATEWAY_CODES.get(code) != r.status:
                problems.append(f"answer {i}: {r.status} with code {code!r} (not a documented pair here)")
        elif r.status == 204 or (r.status in (200, 401, 404, 405) and not r.body):  # preflight, HEAD
            pass
        elif method == b"HEAD" and r.status in GATEWAY_CODES.values() and r.header(b"x-request-id") is not None:
            pass  # the gateway's own error, without its body (a HEAD)
        else:
            problems.append(f"answer {i}: {r.status} neither the gateway's JSON error nor the backend's "
                            f"answer: {r.headers!r} {r.body[:200]!r}")
        if r.status in (502, 504) and not any(d in target for d in UPSTREAM_DOWN):
            problems.append(f"answer {i}: {r.status} {code} for {target[:100]!r}, whose upstream is up")
        if r.status == 500 or (r.status >= 500 and r.status not in (501, 502, 504, 505)):
            problems.append(f"answer {i}: status {r.status} ({code})")
    if len(finals) > max(model.expected, len(model.heads) + 1):
        problems.append(f"{len(finals)} answers to {len(model.heads)} request head(s)")
    if out.eof or out.reset:
        if model.expected and not finals:
            problems.append("the connection was " + ("reset" if out.reset else "closed") + " without any answer")
        elif len(finals) < model.expected and not finals[-1].closes:
            problems.append(f"closed after {len(finals)} of {model.expected} answers, the last one without "
                            "Connection: close")
    if out.backend_delta > len(model.heads):
        problems.append(f"the backend received {out.backend_delta} requests for {len(model.heads)} head(s) sent")
    for req in backend:
        names = [k.lower() for k, _ in req["headers"]]
        h = {k.lower(): v for k, v in req["headers"]}
        if names.count("host") != 1:
            problems.append(f"the backend got {names.count('host')} Host headers: {req['headers']!r}")
        if "content-length" in h and "transfer-encoding" in h:
            problems.append(f"the backend got both Content-Length and Transfer-Encoding: {req['headers']!r}")
        if set(names) & _HOP_BY_HOP:
            problems.append(f"the backend got {sorted(set(names) & _HOP_BY_HOP)}")
        if not req["path"].startswith(UPSTREAM_BASE) or _DOT_SEGMENT.search(req["path"]):
            problems.append(f"the backend got the path {req['path']!r}")
        if not h.get("x-forwarded-for", "").endswith("127.0.0.1"):
            problems.append(f"the backend got X-Forwarded-For {h.get('x-forwarded-for')!r}")
    return problems


def _gateway_code(r: Response) -> str | None:
    if not r.body or r.header(b"content-type") != b"application/json":
        return None
    try:
        err = json.loads(r.body)
    except ValueError:
        return None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        return None
    rid = r.header(b"x-request-id")
    if rid is None or err.get("request_id") != rid.decode("latin-1") or not err.get("message"):
        return f"{err.get('code')} (without message, or request_id {err.get('request_id')!r} != {rid!r})"
    return str(err["code"])


# ---------------------------------------------------------------------------------------------------
# strategies: request heads
# ---------------------------------------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ODD_BYTES = [b"\x00", b"\t", b"\r", b"\n", b" ", b"\x7f", b"\x80", b"\xff", b'"', b",", b"/", b":", b";",
             b"=", b"?", b"@", b"[", b"\\", b"]", b"{", b"}", b"\x0b", b"\x0c", b"\x1b", b"%"]
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"PRI",
           b"get", b"PROPFIND", b"M-SEARCH", b"PURGE", b"LINK", b"SOURCE", b"QUERY", b"G\x00T", b"", b"GET /"]
SEGMENTS = [b"pets", b"hosted", b"a", b"b", b"c", b"basic", b"jwt", b"key", b"policy", b"dead", b"silent",
            b"_tandem", b"messages", b"0123456789abcdef01", b"x", b"", b".", b"..", b"%2e", b"%2E%2e", b".%2e",
            b"%2F", b"%2f", b"%5c", b"%00", b"%", b"%zz", b"%41", b"%25", b";", b"a;b", b"\\", b"~", b"*",
            b"\xc3\xa9", b"\xff", b"\x00", b"\t", b" ", b"\x7f", b"http:", b"@", b"#frag", b"?", b"//", b"..;"]
PREFIXES = [b"/pets", b"/hosted", b"/a/b/c", b"/basic", b"/jwt", b"/key", b"/policy", b"/dead", b"/silent",
            b"/_tandem/messages", b"/nothing", b"/PETS", b"", b"/pets/../policy", b"/pets%2f..%2fkey"]
QUERIES = [b"a=1", b"apikey=" + API_KEY.encode(), b"apikey=%6b-123", b"apikey=wrong", b"", b"=", b"&&",
           b"%zz", b"a=%00", b"q=\xff", b"x=" + b"y" * 40, b"a=1;b=2", b"#frag", b"?"]
VERSIONS = [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/2", b"HTTP/3.0", b"http/1.1", b"HTTP/1.1 ",
            b"HTTP/11", b"HTTP/1.", b"HTTP/1.1\x00", b"HTTPS/1.1", b"", b"HTTP/1.1 HTTP/1.1", b"HTTP/9.9"]
EOLS = [b"\n", b"\r", b"\r\r\n", b"\n\r", b" \r\n", b"\r\n\r\n"]
HOSTS = [HOST, b"x.wild.test", b"API.TEST:80", b"api.test:", b"[::1]:8080", b"[::1", b"", b"a b", b"api.test\x00",
         b"\xff\xfe", b"api.test, evil.test", b"evil.test", b"127.0.0.1", b"a" * 300, b"api.test:99999999999"]
NAMES = [b"Accept", b"Accept-Encoding", b"Cookie", b"User-Agent", b"X-Custom", b"X-Old", b"X-Consumer-Name",
         b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Trailer", b"TE", b"Keep-Alive", b"Proxy-Connection",
         b"Proxy-Authorization", b"Content-Type", b"Range", b"If-None-Match", b"Cache-Control", b"Pragma",
         b"Content-Encoding", b"Transfer-Encoding ", b"Content-Length ", b" Host", b"host", b"HOST", b"Host\x00",
         b"", b"X", b"x-" + b"a" * 200, b"X-\xff", b"X Y", b"X:Y", b"X-\x7f", b"Authorization", b"X-API-Key"]
VALUES = [b"", b" ", b"1", b"a, b", b"\t x \t", b"\x00", b"a\x00b", b"\x7f", b"\xff\xfe", b"\x1b[31m",
          b"v\rw", b"v\nw", b"v\r\nX-Injected: 1", b"()<>@,;:\\\"/[]?={}", b"%00%0d%0a", b"*", b"close",
          b"chunked", b"100-continue", b"gzip", b"bytes=0-0", b"no-cache", b"\xc3\xa9t\xc3\xa9"]


def _token_text(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.text(TCHAR, min_size=min_size, max_size=max_size).map(lambda s: s.encode())


def _odd_bytes(max_size: int = 12) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(st.sampled_from(ODD_BYTES), _token_text(1, 3)), max_size=max_size).map(b"".join)


@st.composite
def _target(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 99))
    if kind < 8:  # a long target, around the URL limit
        room = draw(st.sampled_from([-64, -2, -1, 0, 1, 2, 64, 4096]))
        prefix = draw(st.sampled_from([b"/pets/", b"/pets?x=", b"/nothing/", b"/pets/%2e%2e/"]))
        return prefix + b"a" * max(0, LIMITS.max_url_bytes + room - len(prefix))
    if kind < 12:
        return draw(st.sampled_from([b"*", b"api.test:443", b"", b"?", b"#", b"//pets", b"pets", b"\\pets",
                                     b"/" + b"/" * 50 + b"pets"]))
    segs = draw(st.lists(st.one_of(st.sampled_from(SEGMENTS), _token_text(), _odd_bytes(4)), max_size=6))
    path = draw(st.sampled_from(PREFIXES)) + b"".join(b"/" + s for s in segs)
    if not path.startswith(b"/"):
        path = b"/" + path
    if draw(st.integers(0, 3)) == 0:
        path += b"?" + b"&".join(draw(st.lists(st.sampled_from(QUERIES), max_size=3)))
    if kind < 22:  # absolute-form
        scheme = draw(st.sampled_from([b"http://", b"https://", b"HTTP://", b"http:/", b"ftp://", b"http:///"]))
        return scheme + draw(st.sampled_from(HOSTS[:9])) + path
    return path


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


_FUTURE = 4_102_444_800  # 2100-01-01


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _hs256(header: bytes, claims: bytes) -> bytes:
    """A token signed with the fuzz secret over any header and claims bytes (PyJWT refuses odd claims)."""
    signing = _b64(header) + b"." + _b64(claims)
    return signing + b"." + _b64(hmac.new(JWT_SECRET.encode(), signing, hashlib.sha256).digest())


def _jwts() -> list[bytes]:
    good = pyjwt.encode({"iss": JWT_ISSUER, "exp": _FUTURE}, JWT_SECRET, "HS256").encode()
    head, claims, sig = good.split(b".")
    return [b"Bearer " + good, b"Bearer " + head + b"." + claims + b"." + sig[::-1], b"Bearer " + head + b"..",
            b"Bearer " + pyjwt.encode({"iss": JWT_ISSUER, "exp": 1}, JWT_SECRET, "HS256").encode(),
            b"Bearer " + pyjwt.encode({"iss": "nobody", "exp": _FUTURE}, "x" * 32, "HS256").encode(),
            b"Bearer " + pyjwt.encode({"iss": JWT_ISSUER}, JWT_SECRET, "HS256").encode(),
            b"Bearer " + _hs256(b'{"alg":"HS256","typ":"JWT"}', b'{"iss":[1],"exp":"soon"}'),
            b"Bearer " + base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=") + b"." + claims + b".",
            b"Bearer " + base64.urlsafe_b64encode(b'{"alg":"HS256","kid":[]}') + b"." + claims + b"." + sig,
            b"Bearer " + b"." * 3, b"Bearer", b"Bearer  " + good, b"bearer " + good, b"Bearer \xff.\xff.\xff"]


AUTHORIZATIONS = [_basic(BASIC_USER.encode(), BASIC_PASSWORD.encode()), _basic(BASIC_USER.encode(), b"wrong"),
                  _basic(b"bob", b"x"), _basic(b"\xff\xfe", b"\x00"), _basic(b"", b""), b"Basic", b"Basic ",
                  b"Basic !!!!", b"Basic YWxpY2U=", b"Basic YWxpY2U6c2VjcmV0" + b"=" * 5, b"basic YQ==",
                  b"Basic " + b"A" * 3000, b"Digest x", *_jwts()]


@st.composite
def _header(draw: st.DrawFn) -> tuple[bytes, bytes]:
    kind = draw(st.integers(0, 99))
    if kind < 15:
        return b"Host", draw(st.sampled_from(HOSTS))
    if kind < 25:
        return b"Authorization", draw(st.sampled_from(AUTHORIZATIONS))
    if kind < 30:
        return draw(st.sampled_from([b"X-API-Key", b"x-api-key"])), draw(st.sampled_from(
            [API_KEY.encode(), b"wrong", b"", b"\xff", API_KEY.encode() + b" ", b"k-123, k-123"]))
    if kind < 36:
        return b"Origin", draw(st.sampled_from([b"https://ok.test", b"https://evil.test", b"null", b"", b"\xff"]))
    if kind < 40:
        return draw(st.sampled_from([b"Access-Control-Request-Method", b"Access-Control-Request-Headers"])), \
            draw(st.sampled_from([b"GET", b"DELETE", b"X-Custom", b"x-custom, x-other", b"", b"\x00"]))
    if kind < 44:
        return b"Connection", draw(st.sampled_from([b"close", b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings",
                                                    b"te, close", b"x-forwarded-for", b"host", b"", b"close, close"]))
    if kind < 47:
        return b"Upgrade", draw(st.sampled_from([b"websocket", b"h2c", b"", b"HTTP/2.0"]))
    if kind < 50:
        return b"Expect", draw(st.sampled_from([b"100-continue", b"100-Continue", b"200-ok", b""]))
    if kind < 56:
        return draw(st.sampled_from([b"X-Forwarded-For", b"Forwarded", b"X-Real-IP"])), draw(st.sampled_from(
            [b"10.0.0.1", b"10.0.0.1, 10.0.0.2", b"for=1.2.3.4", b"", b"not an ip", b"::1", b"\xff" * 8]))
    if kind < 60:
        return b"X-Request-Id", draw(st.one_of(st.sampled_from([b"abc-123", b"", b"a" * 129, b"a b", b"\x00"]),
                                               _token_text(1, 20)))
    if kind < 64:
        return b"Transfer-Encoding", draw(st.sampled_from(
            [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b" chunked", b"chunked\x0b",
             b"xchunked", b"chunked, chunked", b"", b"gzip"]))
    if kind < 68:
        return b"Content-Length", draw(st.sampled_from(
            [b"0", b"1", b" 5", b"5, 5", b"-1", b"+5", b"0x10", b"1e3", b"", b"99999999999999999999",
             b"18446744073709551615", b"18446744073709551616", str(LIMITS.max_body_bytes + 1).encode(), b"00000001"]))
    if kind < 80:
        return draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))
    if kind < 90:
        return draw(_token_text(1, 20)), draw(st.one_of(_token_text(0, 20), _odd_bytes(8)))
    return draw(_odd_bytes(6)), draw(_odd_bytes(10))


@st.composite
def _chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.sampled_from([b"x", b"hello", b"\r\n", b"0\r\n\r\n", b"y" * 100]))
        size = draw(st.sampled_from([b"%x" % len(data)] * 6 + [
            b"%X" % len(data), b"zz", b"-1", b"ffffffffffffffffff", b"0" * 30 + b"1", b" %x" % len(data),
            b"%x " % len(data), b"%x;ext=1" % len(data), b"%x;" % len(data), b"", b"%x\x00" % len(data),
            b"%x" % (len(data) + 1), b"%x" % max(0, len(data) - 1)]))
        out += size + draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b""])) + data + \
            draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"", b"XX"]))
    end = draw(st.integers(0, 9))
    if end < 6:
        out += b"0\r\n\r\n"
    elif end == 6:
        out += b"0\r\n" + draw(st.sampled_from([b"X-Trailer: 1\r\n", b"Content-Length: 5\r\n", b"Host: x\r\n",
                                                b"bad trailer\r\n"])) + b"\r\n"
    elif end == 7:
        out += b"0\r\n"  # no blank line: the message never ends
    elif end == 8:
        out += b"0;ext\r\n\r\n"
    return out


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    """One request: a request line, header lines and a body, each valid or broken in known ways."""
    method = draw(st.sampled_from(METHODS[:7])) if draw(st.integers(0, 3)) else draw(
        st.one_of(st.sampled_from(METHODS), _token_text(1, 10)))
    target = draw(_target())
    version = b"HTTP/1.1" if draw(st.integers(0, 9)) < 8 else draw(st.sampled_from(VERSIONS))
    eol = b"\r\n" if draw(st.integers(0, 19)) else draw(st.sampled_from(EOLS))
    line_sep = b" " if draw(st.integers(0, 19)) else draw(st.sampled_from([b"  ", b"\t", b"", b" \x00 "]))
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        headers.append((b"Host", HOST if draw(st.integers(0, 4)) else draw(st.sampled_from(HOSTS))))
    headers += draw(st.lists(_header(), max_size=6))
    big = draw(st.integers(0, 19))
    if big == 0:  # header bytes around the limit (name + value + 4 per line, as the gateway counts them)
        room = draw(st.sampled_from([-200, -40, -21, -20, -19, 0, 1, 200]))
        headers.append((b"X-Pad", b"p" * max(0, LIMITS.max_header_bytes + room - 9)))
    elif big == 1:  # the header count around the limit
        n = LIMITS.max_headers + draw(st.sampled_from([-3, -2, -1, 0, 1, 50]))
        headers += [(b"X-N%d" % i, b"v") for i in range(max(0, n - len(headers)))]
    body = b""
    framing = draw(st.integers(0, 9))
    if framing in (1, 2):  # Content-Length, the body as long, shorter or longer
        n = draw(st.sampled_from([0, 1, 5, 100]))
        headers.insert(draw(st.integers(0, len(headers))), (b"Content-Length", b"%d" % n))
        body = b"b" * max(0, n + (draw(st.sampled_from([0, 0, 0, -1, 1, 7])) if framing == 2 else 0))
    elif framing in (3, 4):
        headers.insert(draw(st.integers(0, len(headers))), (b"Transfer-Encoding", b"chunked"))
        body = draw(_chunked_body())
        if framing == 4 and draw(st.booleans()):  # CL.TE
            headers.append((b"Content-Length", b"%d" % len(body)))
    if draw(st.integers(0, 14)) == 0:
        headers.append((b"Expect", b"100-continue"))
    if draw(st.integers(0, 9)) == 0:
        headers = draw(st.permutations(headers))
    lines = []
    for name, value in headers:
        sep = b": " if draw(st.integers(0, 19)) else draw(st.sampled_from([b":", b" : ", b":\t", b" :", b"::", b""]))
        line = name + sep + value
        if draw(st.integers(0, 29)) == 0:  # obs-fold
            line += eol + draw(st.sampled_from([b" ", b"\t"])) + b"folded"
        lines.append(line + (eol if draw(st.integers(0, 29)) else draw(st.sampled_from(EOLS))))
    end = eol if draw(st.integers(0, 19)) else draw(st.sampled_from([b"", b"\n", b"\r", b" \r\n"]))
    return method + line_sep + target + b" " + version + eol + b"".join(lines) + end + body


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 0 and i < len(data):
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
        elif op == 1:
            data = data[:i] + draw(st.sampled_from(ODD_BYTES)) + data[i:]
        elif op == 2:
            data = data[:i] + data[i + draw(st.integers(1, 8)):]
        elif op == 3:
            data = data[:i]
        else:
            data = data[:i] + data[max(0, i - 16):i] + data[i:]
    return data


@st.composite
def request_inputs(draw: st.DrawFn) -> bytes:
    """What a client sends on one connection: 1-3 pipelined requests from the grammar, sometimes
    mutated at the byte level."""
    n = 1 if draw(st.integers(0, 6)) else draw(st.integers(2, 3))
    data = b"".join(draw(one_request()) for _ in range(n))
    if draw(st.integers(0, 6)) == 0:
        data = _mutate(data, draw)
    return data


HTTP_TOKENS = [b"GET", b"HEAD", b"POST", b" ", b"/", b"/pets", b"/policy", b"HTTP/1.1", b"HTTP/1.0", b"\r\n",
               b"\r\n\r\n", b"\n", b"\r", b":", b": ", b"Host", b"api.test", b"Content-Length", b"Transfer-Encoding",
               b"chunked", b"0", b"5", b"ff", b"Connection", b"close", b"Upgrade", b"Expect", b"100-continue",
               b"\x00", b"\t", b"%2e", b"..", b"?", b"=", b";", b",", b"\xff", b"x"]


def raw_inputs() -> st.SearchStrategy[bytes]:
    """Random bytes, HTTP token soup, and a valid request line followed by random bytes."""
    return st.one_of(
        st.binary(max_size=1024),
        st.lists(st.sampled_from(HTTP_TOKENS), max_size=60).map(b"".join),
        st.binary(max_size=256).map(lambda b: b"GET /pets/x HTTP/1.1\r\nHost: api.test\r\n" + b),
    )


# ---------------------------------------------------------------------------------------------------
# strategies and the oracle: the config-feed document
# ---------------------------------------------------------------------------------------------------

ENVIRONMENT = "default"
MAX_DOCUMENT_SECONDS = 5.0  # validating and compiling one (small) document: far less, or a hang


def _json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                     st.sampled_from([0, -1, 2 ** 63, -(2 ** 63) - 1, 10 ** 30]),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                     st.sampled_from(["", "/", "http://127.0.0.1:1", "GET", "*.x", "a..b", "\x00", "\ud800",
                                      "é", "x" * 300, "//", "/_tandem", "chunked", "scrypt$4$8$1$00$00"]))


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(_json_scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_HOST_NAME = st.from_regex(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,10})(\.[a-z0-9]{1,8}){0,2}(:[0-9]{1,5})?", fullmatch=True)
_POLICIES = [
    {"type": "api-key"}, {"type": "api-key", "header": "X-Key", "query_param": "k"}, {"type": "basic-auth"},
    {"type": "jwt"}, {"type": "jwt", "algorithms": ["HS256", "RS256"], "issuer": "i", "audience": "a"},
    {"type": "jwt", "jwks_url": "http://127.0.0.1:1/jwks"},
    {"type": "rate-limit", "limit": 10}, {"type": "rate-limit", "limit": 5, "by": "consumer", "unit": "minute"},
    {"type": "rate-limit", "limit": 5, "scope": "cluster", "redis_url": "redis://127.0.0.1:1/0"},
    {"type": "quota", "limit": 100}, {"type": "ip-filter", "allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]},
    {"type": "cors"}, {"type": "cors", "allow_origins": ["https://a.test"], "allow_credentials": True},
    {"type": "request-headers", "set": {"X-A": "1"}}, {"type": "response-headers", "remove": ["Server"]},
    {"type": "cache", "ttl": 10}, {"type": "timeout", "connect": 1, "read": 2}, {"type": "retry"},
    {"type": "delivery", "mode": "direct"}, {"type": "delivery", "max_attempts": 3},
]


@st.composite
def _project(draw: st.DrawFn, name: str) -> dict[str, Any]:
    segs = draw(st.lists(st.from_regex(r"[a-z0-9._~-]{1,8}", fullmatch=True), min_size=1, max_size=3))
    targets = [{"url": draw(st.sampled_from(["http://127.0.0.1:9000", "http://127.0.0.1:9001/v1",
                                             "https://backend.test/api", "http://[::1]:8080/"])),
                "weight": draw(st.integers(0, 100))} for _ in range(draw(st.integers(1, 3)))]
    p = project(name, "/" + "/".join(segs), *[t["url"] for t in targets])
    p["targets"] = targets
    p["hosts"] = draw(st.lists(_HOST_NAME, max_size=2, unique=True))
    p["methods"] = draw(st.lists(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
                                 max_size=3, unique=True))
    p["policies"] = draw(st.lists(st.sampled_from(_POLICIES), max_size=3))
    if draw(st.integers(0, 4)) == 0:
        p["health_check"] = {"path": "/health", "interval": draw(st.sampled_from([1, 5, 10]))}
    if draw(st.integers(0, 4)) == 0:
        p["redrive"] = draw(st.integers(1, 5))
    return p


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document as the AMS builds it (`build_document`): projects with routes, targets, policies, and
    consumers with keys and credentials."""
    names = draw(st.lists(_NAME, max_size=4, unique=True))
    projects = {n: draw(_project(n)) for n in names}
    consumers = [{"name": c, "keys": [{"id": "k" + c, "sha256": hashlib.sha256(c.encode()).hexdigest()}],
                  "credentials": draw(st.sampled_from([
                      {}, {"basic_auth": [{"username": c, "password_hash": "scrypt$4$8$1$00$00"}]},
                      {"jwt": [{"key": c, "algorithm": "HS256", "secret": "s" * 32}]},
                      {"jwt": [{"key": c, "algorithm": "RS256", "public_key": "not a pem"}]}]))}
                 for c in draw(st.lists(_NAME, max_size=3, unique=True))]
    return build_document(ENVIRONMENT, draw(st.integers(0, 10 ** 6)), projects, consumers, "2026-12-01T00:00:00Z")


def _paths(obj: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield here
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*here, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*here, i))


def _deep(depth: int, leaf: Any = 0) -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with 1-4 fields replaced (by another type, a random JSON value, a deep or huge
    one), removed, or added; the digest recomputed (so the checks after it are reached) or not."""
    doc = json.loads(json.dumps(draw(valid_documents())))  # a copy: the policy samples are shared
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.integers(0, 9))
        if not path:  # the document itself
            if op < 3:
                doc.pop(draw(st.sampled_from(sorted(doc))), None)
            else:
                doc[draw(st.text(max_size=8))] = draw(json_values())
            continue
        key = path[-1]
        if op < 5:
            parent[key] = draw(json_values())
        elif op == 5:
            parent[key] = _deep(draw(st.sampled_from([10, 200, 400])))
        elif op == 6:
            parent[key] = draw(st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 64, 1e308, -0.0, 0.5]))
        elif op == 7:
            del parent[key]
        elif op == 8 and isinstance(parent, list):
            parent.append(parent[key])  # a duplicate element
        else:
            parent[key] = draw(st.sampled_from([None, "", [], {}, 0, True, "x", [None], {"": None}]))
    if draw(st.integers(0, 3)):
        with contextlib.suppress(Exception):  # (a document missing a digested field has no digest)
            doc["digest"] = document_digest(doc)
    return doc


@st.composite
def random_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Random JSON in the document's shape: the required keys, anything as their values, a right digest."""
    doc = {"environment": draw(st.sampled_from([ENVIRONMENT, ENVIRONMENT, "other", None, 1])),
           "revision": draw(st.one_of(st.integers(-5, 10 ** 6), _json_scalars())),
           "projects": draw(st.one_of(st.lists(json_values(), max_size=3), json_values())),
           "consumers": draw(st.one_of(st.lists(json_values(), max_size=3), json_values()))}
    with contextlib.suppress(Exception):
        doc["digest"] = document_digest(doc)
    return doc


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _text_inputs() -> st.SearchStrategy[bytes]:
    deep = st.builds(lambda n, open_, close: b'{"environment":"default","revision":1,"projects":[],"consumers":'
                     + open_ * n + close * n + b',"digest":"0"}',
                     st.sampled_from([100, 990, 1000, 3000, 100_000]),
                     st.sampled_from([b"[", b'{"a":']), st.sampled_from([b"]", b"}"]))
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"1e400", b"NaN", b"-Infinity", b"\xef\xbb\xbf{}",
                         b'{"revision":' + b"9" * 5000 + b"}", b'{"revision":1' + b"0" * 400 + b"}",
                         b'{"environment":"default","revision":1e999,"projects":[],"consumers":[],"digest":""}',
                         b'{"a":"\\ud800"}', b'{"a":"\xff"}', b"{" * 100_000, b"[" * 100_000]),
        deep,
    )


def document_inputs() -> st.SearchStrategy[bytes]:
    """What an AMS (or anything answering on its URL) may send as a document, as the body bytes."""
    return st.one_of(
        valid_documents().map(_encode),
        mutated_documents().map(_encode),
        mutated_documents().map(_encode),
        random_documents().map(_encode),
        _text_inputs(),
    )


class DocumentTarget:
    """The feed's path for one fetched body: `validate_document`, then `Gateway.apply` (compile_config,
    against the configuration the gateway already serves, so the reuse of unchanged projects runs too).
    The gateway is built on a loop that never runs: compiling needs none."""

    def __init__(self) -> None:
        from tandem.ags.gateway import Gateway

        self.loop = asyncio.new_event_loop()
        self.gw = Gateway(GatewaySettings(), self.loop)
        self.base = json.loads(json.dumps(build_document(
            ENVIRONMENT, 1, {p["name"]: p for p in fuzz_projects("http://127.0.0.1:9000", "http://127.0.0.1:9001",
                                                                  "http://127.0.0.1:9002")},
            fuzz_consumers(), "2026-12-01T00:00:00Z")))

    def close(self) -> None:
        self.gw.pools.close()
        self.loop.close()

    def problem(self, raw: bytes) -> str | None:
        """What is wrong with how the gateway takes `raw` (None: refused properly, or accepted and compiled)."""
        t0 = time.monotonic()
        try:
            doc = validate_document(raw, ENVIRONMENT)
        except ConfigRejected as exc:
            if not str(exc):
                return "ConfigRejected without a message"
            return self._timed(t0, "refusing")
        except BaseException as exc:  # noqa: B036 (RecursionError, MemoryError...: all are findings)
            return f"validate_document raised {type(exc).__name__}: {str(exc)[:300]}"
        for previous in (None, self.base):
            try:
                self.gw.config = self.gw.config.empty(ENVIRONMENT)
                if previous is not None:
                    self.gw.apply(previous)
                compiled = self.gw.apply(doc)
            except BaseException as exc:  # noqa: B036
                return (f"validated, then compiling raised {type(exc).__name__}: {str(exc)[:300]}"
                        + (" (over a previous configuration)" if previous is not None else ""))
            if compiled.revision != doc["revision"]:
                return f"compiled revision {compiled.revision!r}, document revision {doc['revision']!r}"
            served = {p["name"] for p in doc["projects"] if not p["context_path"].rstrip("/").startswith("/_tandem")}
            if not served <= set(compiled.projects):
                return f"projects {sorted(served - set(compiled.projects))} validated but not compiled"
        # the AMS side's check of the same bytes must not raise either (tandem.model.document)
        from tandem.model.document import verify_document
        try:
            verify_document(json.loads(raw))
        except BaseException as exc:  # noqa: B036
            return f"verify_document raised {type(exc).__name__}: {str(exc)[:300]}"
        return self._timed(t0, "accepting")

    @staticmethod
    def _timed(t0: float, what: str) -> str | None:
        took = time.monotonic() - t0
        return f"{what} the document took {took:.1f} s" if took > MAX_DOCUMENT_SECONDS else None
