"""The client side: one asyncio protocol per client connection, parsed by httptools.

Everything about the request head is checked before anything is sent
upstream: httptools (llhttp, strict) refuses malformed requests, both
`Content-Length` and `Transfer-Encoding`, and duplicate `Content-Length`s
while it parses the headers, before `on_headers_complete`; the gateway adds
header size/count, URL length, body size and `Host` checks. A refused
request is answered with a JSON error and the connection is closed (with a
short linger so the client reads the answer before the close).

Pipelined requests are answered in order: a request that arrives while
another is in flight is queued (with its body, if any, in its own buffer) and
the connection stops reading until the queue drains. Reading is also paused
while the upstream connection's write buffer is full (bit 2) and while a
connection is being opened with more than 256 KiB of body waiting (bit 4).

Client-side deadlines are not timers: the connection keeps the times the
sweeper (runtime.py) needs: `head_t` (the first URL byte of the head being
read: a head that trickles in is not given more time per byte), `idle_t`
(when it last became idle, waiting for a head), `last_rx` (the last read: the
body-progress deadline) and `send_t` (the last time its full write buffer
shrank: the send deadline). Setting them costs one attribute store per
request at most.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Final

import httptools

from tandem.ags.accesslog import NULL
from tandem.ags.error_responses import Reject, error_response
from tandem.ags.exchange import Exchange
from tandem.ags.router import normalize_path, split_host

if TYPE_CHECKING:
    from tandem.ags.gateway import Gateway

log = logging.getLogger("tandem.ags")

SKIP_REQUEST: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                          b"transfer-encoding", b"upgrade", b"host", b"x-forwarded-for", b"x-forwarded-proto",
                          b"x-forwarded-host", b"x-request-id", b"expect", b"content-length",
                          b"proxy-authorization", b"x-consumer-name"})
# also dropped from what a client sends (a backend could trust them for the client's address), though a
# policy may set them: not in SKIP_REQUEST, which the AMS's list of protected headers mirrors
DROP_REQUEST: Final = SKIP_REQUEST | {b"x-real-ip", b"forwarded"}
REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_CONNECTING = 1, 2, 4
# request header names as clients spell them -> the lower-case name when SKIP_REQUEST has it, else None
# (a dict hit avoids lower() for the common ones; other names are lowered)
_REQUEST_NAMES: Final[dict[bytes, bytes | None]] = {
    **{n: n for n in DROP_REQUEST}, **{n.title(): n for n in DROP_REQUEST},
    b"X-Request-ID": b"x-request-id", b"TE": b"te", b"X-Real-IP": b"x-real-ip",
    **{n: None for n in (b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Content-Type",
                         b"Authorization", b"Cookie", b"Origin", b"Referer", b"Cache-Control", b"Pragma",
                         b"If-None-Match", b"If-Modified-Since", b"user-agent", b"accept", b"accept-encoding",
                         b"accept-language", b"content-type", b"authorization", b"cookie", b"origin",
                         b"referer", b"cache-control")}}
_FORWARDED: Final = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\nX-Request-Id: %s\r\n\r\n"
_FORWARDED_NO_HOST: Final = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Request-Id: %s\r\n\r\n"
DISCARD_LIMIT: Final = 1024 * 1024
LINGER: Final = 2.0
REFUSED_LINGER: Final = 0.5  # a connection over MaxConnections: read and drop this long after its 503
_PATH_REFUSED: Final = re.compile(rb"%(?:2[fF]|5[cC]|00)|[\\;]")
_PATH_WHAT: Final = {b"%2f": "an encoded '/' (%2F)", b"%5c": "an encoded '\\' (%5C)", b"%00": "an encoded NUL (%00)",
              b"\\": "a '\\'", b";": "a ';'"}


class ClientProtocol(asyncio.Protocol):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.loop = gw.loop
        self.limits = limits = gw.settings
        self.max_url, self.max_hbytes, self.max_headers = limits.max_url_bytes, limits.max_header_bytes, limits.max_headers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.ip = b"-"
        self.forwarded = b"X-Forwarded-For: -\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "
        self.cur: Exchange | None = None  # the exchange being answered
        self.parsing: Exchange | None = None  # the exchange whose request is being read
        self.queue: deque[Exchange] = deque()
        self.out: list[bytes] = []
        self.paused = 0
        self.write_paused = False  # our transport's buffer is full: upstream reading is held
        self.closing = False
        self.closed = False
        self.advancing = False
        self.fatal: Reject | None = None
        self.last_rx = self.idle_t = self.loop.time()
        self.head_t = 0.0
        self.send_t = 0.0
        self.send_left = 0
        self.linger_until = 0.0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.hbytes = 0

    def __repr__(self) -> str:
        return f"<ClientProtocol {self.ip.decode()} cur={self.cur!r} queued={len(self.queue)} closing={self.closing}>"

    # ---- asyncio ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        gw = self.gw
        if len(gw.connections) >= self.limits.max_connections:
            self.closing = True  # data_received reads and drops
            gw.refuse_connection(self, transport)  # type: ignore[arg-type]
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0].encode() if peer else b"-"
        self.forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: " % self.ip
        self.gw.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.closing = True
        self.gw.connections.discard(self)
        self.gw.lingering.discard(self)
        cur = self.cur
        if cur is not None:
            cur.client_gone()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.send_t = self.loop.time()  # the send deadline runs from here, and again from each drop in the buffer
        self.send_left = self.transport.get_write_buffer_size() if self.transport is not None else 0
        cur = self.cur
        if cur is not None and cur.conn is not None:
            cur.hold_upstream(cur.conn)

    def resume_writing(self) -> None:
        self.write_paused = False
        cur = self.cur
        conn = cur.conn if cur is not None else None
        if conn is not None and not conn.reading and conn.transport is not None:
            conn.reading = True
            conn.transport.resume_reading()
            conn.deadline = self.loop.time() + cur.read_timeout  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if self.closing:
            return  # lingering after an error: read and drop
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, Reject):
                self.reject(ctx)
            else:
                log.error("gateway bug while parsing a request from %s", self.ip.decode(), exc_info=ctx)
                self.reject(Reject(500, "internal_error", "internal error"))
        except httptools.HttpParserUpgrade:
            pass  # refused in on_headers_complete already
        except httptools.HttpParserError as exc:
            self.reject(Reject(400, "bad_request", f"malformed request: {exc}"))
        cur = self.cur
        if cur is not None and cur.uout:
            cur.flush_up()
        if self.out:
            self.flush()

    # ---- httptools (no on_message_begin: the state is reset when a head is complete) ----
    @property
    def in_head(self) -> bool:
        """A request head has started arriving and is not complete."""
        return bool(self.url or self.headers)

    def refused_head(self) -> bool:
        """Whether the request being refused before its head was complete is a HEAD (its target has
        started, so its method is parsed): the answer has no body then."""
        return self.in_head and self.parser.get_method() == b"HEAD"

    def on_url(self, url: bytes) -> None:
        prev = self.url
        if prev:
            url = prev + url
        else:
            self.head_t = self.last_rx  # the head's deadline runs from its first URL byte, never restarted
        self.url = url
        if len(url) > self.max_url:
            raise Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.hbytes = n = self.hbytes + len(name) + len(value) + 4
        headers = self.headers
        headers.append((name, value))
        if n > self.max_hbytes or len(headers) > self.max_headers:
            raise Reject(431, "headers_too_large")

    def on_headers_complete(self) -> None:
        url, headers = self.url, self.headers
        self.url, self.headers, self.hbytes = b"", [], 0
        parser = self.parser
        if parser.should_upgrade():
            raise Reject(501, "upgrade_not_supported")
        gw = self.gw
        host = b""
        clen: bytes | None = None
        chunked = expect = connection = te_other = False
        hosts = 0
        rid: bytes | None = None
        xff: bytes | None = None
        parts: list[bytes] = []
        kinds = _REQUEST_NAMES
        for name, value in headers:
            low = kinds.get(name, name)  # a known spelling: its lower-case form if skipped, else None
            if low is name:
                low = name.lower()
                if low not in DROP_REQUEST:
                    low = None
            if low is not None:
                if low == b"host":
                    host = value
                    hosts += 1
                elif low == b"content-length":
                    clen = value
                elif low == b"transfer-encoding":
                    # exactly one `chunked`: llhttp takes "gzip, chunked" and a second header, which a
                    # backend would then read as a coded body; other codings are refused (501), not relayed
                    if chunked or value.lower().strip(b" \t") != b"chunked":
                        te_other = True
                    chunked = True
                elif low == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif low == b"x-request-id" and REQUEST_ID.fullmatch(value):
                    rid = value
                elif low == b"expect":
                    expect = value.lower() == b"100-continue"
                elif low == b"connection" or low == b"proxy-connection":
                    connection = True
                continue
            parts += [name, b": ", value, b"\r\n"]
        nhead = len(parts)
        if rid is None:
            gw.rid = n = gw.rid + 1
            rid = gw.rid_format % n
        method = parser.get_method()
        ex = Exchange(self, method, rid, perf_counter())
        ex.host = host
        self.parsing = ex
        if method == b"HEAD":  # before any refusal: an answer to a HEAD has no body
            ex.is_head = True
        if hosts > 1:
            raise Reject(400, "bad_request", "more than one Host header")
        if te_other:
            raise Reject(501, "transfer_encoding_not_supported")
        if method == b"TRACE" and not self.limits.allow_trace:
            raise Reject(405, "method_not_allowed", "TRACE is not allowed on this gateway")
        # (partition(), not `in` or find(): `bytes in bytes` tries the operand as an int first and pays for
        # a TypeError, find() parses its arguments as a tuple; partition() takes one, and only makes a
        # tuple when the separator is absent)
        url, q, query = url.partition(b"?")
        if q:
            ex.query = q + query
        ex.path = url
        if (url[:1] != b"/" or url.partition(b"/.")[1] or url.partition(b"%")[1] or url.partition(b";")[1]
                or url.partition(b"\\")[1]):
            if url.startswith(b"http://") or url.startswith(b"https://"):  # absolute-form
                start = url.find(b"//") + 2
                slash = url.find(b"/", start)
                host = url[start: slash if slash > 0 else None]
                url = url[slash:] if slash > 0 else b"/"
            bad = _PATH_REFUSED.search(url)
            if bad is not None:  # the one rule for what a backend could read as another path (docs/gateway.md)
                raise Reject(400, "bad_request",
                             f"the request path must not contain {_PATH_WHAT[bad.group().lower()]}")
            path = normalize_path(url)
            if path is None:
                raise Reject(400, "bad_request", "the request target must be a path without '..' above the root")
            ex.path = path
        else:
            path = url
        # llhttp keeps an HTTP/1.0 connection alive only when told to by a Connection header: without
        # one, keep-alive means HTTP/1.1, and get_http_version() (a str.format) is not needed
        # llhttp refuses versions other than 0.9, 1.0, 1.1 and 2.0, and keeps a 0.9 or 2.0 connection alive
        # only when a Connection header says so: the version needs reading only on this branch
        keep_alive = parser.should_keep_alive()
        if connection or not keep_alive:
            version = parser.get_http_version()
            if version == "1.0":
                ex.http10 = True
            elif version != "1.1":
                raise Reject(505, "version_not_supported", f"HTTP/{version} is not supported: HTTP/1.0 or 1.1 only")
        if not host and not ex.http10:
            raise Reject(400, "bad_request", "HTTP/1.1 requires a Host header")
        if not keep_alive:
            ex.keep_alive = False
        has_body = False
        if clen is not None:
            if int(clen) > self.limits.max_body_bytes:
                raise Reject(413, "payload_too_large")
            ex.clen = clen
            ex.has_body = has_body = clen != b"0"
            parts += [b"Content-Length: ", clen, b"\r\n"]
        elif chunked:
            ex.chunked = ex.has_body = has_body = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        router = gw.config.router
        # inlined: Router.match (tests/unit/test_inlined_copies.py)
        if router.depth == 1:  # its first probe: the project of a one-segment context path
            i = path.find(b"/", 1)
            route = router.plain.get(path[:i] if i > 0 else path)
            if route is None:
                route = router.match(path, split_host(host) if router.uses_hosts else b"", method)
        else:
            route = router.match(path, split_host(host) if router.uses_hosts else b"", method)
        if route is not None:
            ex.project = route
            ex.rest = path[len(route.context):]
            if route.chain is not None:
                ex.req_headers = headers
                ex.nhead = nhead
        if xff is None and host:  # the common case: the line prefix made once per connection
            parts += [self.forwarded, host, b"\r\nX-Request-Id: ", rid, b"\r\n\r\n"]
        else:
            parts.append(_FORWARDED % (self.ip if xff is None else xff + b", " + self.ip, host, rid) if host
                         else _FORWARDED_NO_HOST % (self.ip if xff is None else xff + b", " + self.ip, rid))
        ex.hparts = parts
        if not has_body:
            ex.req_complete = True
        if self.cur is None:
            self.cur = ex
            if expect and has_body and route is not None:
                self.out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            ex.start(self.last_rx, ex.t0)  # last_rx: set by data_received in this same callback
        else:
            self.queue.append(ex)
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.done:  # answered already (early response or error): drop the rest, within reason
            ex.body_bytes += len(body)
            if ex.body_bytes > DISCARD_LIMIT:
                self.close()
            return
        if ex.body_bytes + len(body) > self.limits.max_body_bytes:
            raise Reject(413, "payload_too_large")
        ex.send_body(body)

    def on_message_complete(self) -> None:
        if self.headers:  # trailer fields of a chunked body: dropped, never headers of the next request
            self.headers, self.hbytes = [], 0
        ex = self.parsing
        self.parsing = None
        if ex is not None and ex.has_body:
            if ex.done:
                ex.req_complete = True
                if ex is self.cur:
                    self.exchange_done(ex, False)
            else:
                ex.end_body()

    # ---- flow ----
    def pause(self, bit: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= bit

    def resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()
                self.last_rx = self.loop.time()  # the body deadline does not count time we did not read

    def flush(self) -> None:
        out = self.out  # the same list for the connection's life: the upstream side appends to it
        if out and self.transport is not None and not self.closing:  # (closing: our side is shut)
            self.transport.writelines(out)
            out.clear()

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        """An exchange finished its response; start the next one, or close. (Has an inlined copy of its
        common case in Exchange.on_end: tests/unit/test_inlined_copies.py runs both.)"""
        if ex is not self.cur or self.closed:
            return
        if close:
            self.cur = None
            self.close()
            return
        if not ex.req_complete:
            self.flush()
            return  # the rest of its body is still coming; on_message_complete calls again
        self.cur = None
        self.idle_t = self.loop.time()
        if self.advancing:
            return
        queue = self.queue
        if queue:
            self.advancing = True
            try:
                while self.cur is None and queue and not self.closing:
                    nxt = self.cur = queue.popleft()
                    nxt.start(self.loop.time(), perf_counter())
                    if nxt.uout and nxt is self.cur:
                        nxt.flush_up()
            finally:
                self.advancing = False
        out = self.out
        if out and not self.closing:
            self.transport.writelines(out)  # type: ignore[union-attr]
            out.clear()
        if self.cur is None and not self.closing:
            if self.fatal is not None:
                self.answer_and_close(self.fatal)
            elif self.gw.draining:
                self.close()
            elif self.paused & PAUSE_PIPELINE:
                self.resume(PAUSE_PIPELINE)

    def reject(self, r: Reject) -> None:
        """A request could not be parsed or is over a limit: it never completes upstream."""
        ex = r.exchange = self.parsing
        self.parsing = None
        self.pause(8)
        if ex is not None and ex in self.queue:
            self.queue.remove(ex)
        if ex is not None and ex is self.cur:
            if not ex.done and not ex.resp_started:
                ex.req_complete = False
                ex.fail(r.status, r.code, r.message)
            else:
                ex.drop_upstream()
                self.close()
        elif self.cur is not None:
            self.fatal = r  # answered once the exchanges before it are done
        else:
            self.answer_and_close(r)

    def answer_and_close(self, r: Reject) -> None:
        ex: Exchange | None = r.exchange
        rid = ex.rid if ex is not None else self.gw.next_request_id()
        self.out.append(error_response(r.status, r.code, rid, r.message, True, ex.is_head if ex is not None else self.refused_head()))
        self.gw.unrouted.record(r.status, 0.0, None)
        self.gw.unrouted.error(r.code)
        if self.gw.accesslog is not None:
            self.gw.accesslog.write(rid, self.ip, ex.method if ex else b"-", ex.path if ex else self.url[:200],
                                    ex.host if ex else b"", r.status, NULL, NULL, 0.0, None)
        self.close()

    def close(self) -> None:
        """Send what is queued, then close; keep reading (and dropping) for a moment so that
        a client still sending its body reads our answer instead of a reset."""
        if self.closing or self.transport is None:
            return
        self.flush()
        self.closing = True  # nothing more is written: the answers queued after this point are dropped
        self.queue.clear()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
            self.linger_until = self.loop.time() + LINGER
        else:
            transport.close()
