"""One proxied request: from the parsed request head to the last response byte.

The client protocol creates an `Exchange` when a request head is complete
and calls `start()` when it is the connection's turn (HTTP/1.1 pipelining
answers in order). The exchange picks a target, takes a pooled connection
or opens one, streams the request body as it arrives (re-chunked when the
client sent it chunked) and relays the response the same way. Neither body
is ever held whole: bytes queue only in the transports, and each side
pauses the other's reading when its write buffer is full.

Failures before the response head is sent become JSON errors (502, 504);
after it, the client connection is closed, so a truncated body can never be
mistaken for a complete one. A request that failed on a reused keep-alive
connection before any response byte (the backend closed it while idle) is
retried once on a new connection if it had no body.

This is the hot path: the common case (pooled connection, response with a
Content-Length) runs in `start()`, `on_head()` and `on_end()` with as few
Python calls as possible; rare cases live in separate methods.
"""

from __future__ import annotations

from bisect import bisect_left
from http import HTTPStatus
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from tandem.ags.accesslog import NULL
from tandem.ags.balancer import Balancer, Target
from tandem.ags.error_responses import PoolBusy, error_body, error_response, http_date
from tandem.ags.metrics import BUCKETS

if TYPE_CHECKING:
    from tandem.ags.protocol import ClientProtocol
    from tandem.ags.upstream import UpstreamConnection

class _Error:
    __slots__ = ("status", "code", "message", "headers", "body")

    def __init__(self, status: int, code: str, message: str | None) -> None:
        self.status, self.code, self.message, self.body = status, code, message, b""
        self.headers: list[bytes] = []


STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CONNECTING_BUFFER: Final = 256 * 1024


class Exchange:
    # per-request state; the class values are the defaults, so __init__ sets only what every request has
    project: Any = None
    path: bytes = b""  # normalised request path (raw until the head is checked)
    rest: bytes = b""  # the path after the project's context path
    query: bytes = b""  # b"" or b"?..."
    host: bytes = b""  # the client's Host header
    hparts: list[bytes]  # forwarded header lines after Host, ending with the blank line
    clen: bytes | None = None
    chunked: bool = False
    has_body: bool = False
    req_complete: bool = False
    is_head: bool = False
    http10: bool = False
    keep_alive = True
    conn: UpstreamConnection | None = None
    target: Target | None = None
    tried: set[Target] | None = None
    retried = False
    body_bytes = 0
    uout_size = 0
    status = 0
    resp_started: bool = False
    resp_chunked: bool = False
    resp_close: bool = False
    no_body: bool = False
    done: bool = False
    t_up = 0.0
    read_timeout = 60.0
    upstream_addr: bytes = b"null"  # (accesslog.NULL: a compiled class takes only literal defaults)
    # policies (tandem.ags.policies): set only for projects with a chain
    req_headers: list[tuple[bytes, bytes]] | tuple[()] = ()  # the request's headers as received
    nhead = 0  # how many items of `hparts` are forwarded header runs (name, ": ", value, "\r\n")
    admitted = False  # the chain passed this request
    hook: Any = None  # the project's Chain when it has response-side work
    resp_extra: list[bytes] | None = None  # header lines added to whatever answer goes out
    edit: Any = None  # pending request header edits (policies.base.RequestEdit)
    consumer: str | None = None  # identified by an auth policy
    client_ip: bytes = b""  # set by the chain: the peer, or the client behind a trusted proxy
    capture: Any = None  # a cache fill in progress: .feed(bytes), .end(exchange)
    attempts = 0  # upstream attempts made for the retry policy
    queued: Any = None  # the project's delivery step (policies.delivery) while the body is collected

    def __init__(self, cp: ClientProtocol, method: bytes, rid: bytes, t0: float) -> None:
        self.cp, self.method, self.rid, self.t0 = cp, method, rid, t0
        self.uout: list[bytes] = []  # upstream-bound bytes waiting for a connection or a flush

    def __repr__(self) -> str:
        return (f"<Exchange {self.method!r} {self.path!r} rid={self.rid!r} project="
                f"{self.project.name if self.project is not None else None} status={self.status} done={self.done}>")

    # ---- request side ----
    def start(self, now: float, t: float) -> None:
        """`now`: the loop's clock (`loop.time()`) and `t`: `perf_counter()`, both read by the caller
        in this callback (`t` is `t0` when the request starts as soon as its head is parsed)."""
        p = self.project
        if p is None:
            self.fail(404, "no_route")
            return
        if p.refusal is not None:
            self.fail(501, "policy_not_supported", p.refusal)
            return
        chain = p.chain
        if chain is not None:
            if not self.admitted:
                self.client_ip = self.cp.ip
                # True: every step passed now (the common case: no admit(), no second start()); False: the
                # chain answered, or a step's I/O is pending and admit() or answer() comes later
                if not chain.run(self):
                    return
                if self.edit is not None:
                    self.apply_edit()
            if chain.queue is not None:  # queued delivery: stored and answered 202, never proxied now
                self.enqueue(chain.queue)
                return
        self.read_timeout = timeout = p.read_timeout
        cycle = p.balancer.cycle
        # inlined: Balancer.pick (tests/unit/test_inlined_copies.py)
        if len(cycle) == 1 and cycle[0].down_until <= now:  # one target, up
            target = cycle[0]
        else:
            target = p.balancer.pick(now)
        if target is None:
            self.fail(502, "upstream_unavailable", "no target with a weight above 0")
            return
        self.target = target
        conn = target.pool.take()
        if conn is not None:  # the common case: a pooled keep-alive connection, the head written at once
            # inlined: Exchange.attach (tests/unit/test_inlined_copies.py)
            conn.ex = self
            conn.got_data = False
            self.conn = conn
            conn.deadline = now + timeout
            self.t_up = t
            self.upstream_addr = target.log_name
            rest = self.rest
            head = b"".join([self.method, b" ", target.join_base + rest if rest else target.base_path or b"/",
                             self.query, target.line_tail, *self.hparts])
            uout = self.uout
            if uout:
                uout.insert(0, head)
            else:
                conn.transport.write(head)
            if self.cp.write_paused:  # the client still has not taken the previous response
                self.hold_upstream(conn)
            return
        self.cp.loop.create_task(self.connect(target))  # (no idle connection: what use() would do)

    def admit(self, later: bool) -> None:
        """The policy chain passed the request: apply its header edits and send it upstream."""
        if self.done:
            return
        self.admitted = True
        if self.edit is not None:
            self.apply_edit()
        if later:
            self.start(self.cp.loop.time(), perf_counter())
            if not self.done:
                self.flush_up()
            self.cp.flush()
        else:
            self.start(self.cp.last_rx, self.t0)

    def apply_edit(self) -> None:
        """Rebuild the forwarded header lines with the chain's edits (`policies.base.RequestEdit`)."""
        e = self.edit
        parts, n = self.hparts, self.nhead  # the first `nhead` parts are the forwarded header runs
        head = e.apply_flat(parts[:n])
        self.nhead = len(head)
        head += parts[n:]
        self.hparts = head
        if e.query is not None:
            self.query = e.query

    def answer(self, a: Any, later: bool = False) -> None:
        """Reply with the gateway's own response (`policies.base.Answer`): an error or a local reply."""
        if self.done:
            return
        self.drop_upstream()
        self.status = status = a.status
        close = not self.keep_alive or not self.req_complete or self.cp.gw.draining
        if a.code is None:
            body = a.body
        else:
            body = error_body(a.code, self.rid, a.message)
            self.count_error(a.code)
        head = [STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status, b"Date: ", http_date(), b"\r\n"]
        if a.code is not None:
            head.append(b"Content-Type: application/json\r\n")
        head += a.headers
        if self.resp_extra is not None:
            head += self.resp_extra
        no_body = self.is_head or status == 204 or status == 304 or status < 200
        if status != 204 and status != 304:
            head.append(b"Content-Length: %d\r\n" % len(body))
        if close:
            head.append(b"Connection: close\r\n")
        head += [b"X-Request-Id: ", self.rid, b"\r\n\r\n"]
        if not no_body:
            head.append(body)
        self.cp.out.append(b"".join(head))
        self.resp_started = True
        self.finish(close)
        if later:
            self.cp.flush()

    def count_error(self, code: str) -> None:
        """One of the gateway's own error answers, for tandem_gateway_errors_total (off the 2xx path)."""
        (self.project.stats if self.project is not None else self.cp.gw.unrouted).error(code)

    def resend(self) -> None:
        """Send the request again (the retry policy, after its backoff): another target when one is up."""
        if self.done:
            return
        p = self.project
        now = self.cp.loop.time()
        if self.tried is None:
            self.tried = set()
        if self.target is not None:
            self.tried.add(self.target)
        target = p.balancer.pick(now, self.tried) or p.balancer.pick(now)
        if target is None:
            self.fail(502, "upstream_unavailable", "no target left to retry on")
            self.cp.flush()
            return
        self.use(target)
        self.flush_up()

    def use(self, target: Target) -> None:
        self.target = target
        conn = target.pool.take()
        if conn is not None:
            self.attach(conn)
        else:
            self.cp.loop.create_task(self.connect(target))

    async def connect(self, target: Target) -> None:
        p, loop = self.project, self.cp.loop
        try:
            conn = await target.pool.connect(p.connect_timeout)
        except (OSError, TimeoutError) as exc:
            if not isinstance(exc, PoolBusy):
                Balancer.failed(target, loop.time(), self.cp.gw.settings.fail_timeout)
            if self.done:
                return
            if self.tried is None:
                self.tried = set()
            self.tried.add(target)
            # nothing was sent (the body waits in uout until a connection is attached): try another
            nxt = p.balancer.pick(loop.time(), self.tried)
            if nxt is not None:
                self.use(nxt)
                self.flush_up()  # (an idle pooled connection is attached at once: nothing else would flush)
            elif self.hook is not None and self.again(f"cannot connect to {target.host}:{target.port}"):
                return
            elif isinstance(exc, TimeoutError):
                self.fail(504, "upstream_timeout", f"connecting to {target.host}:{target.port} timed out")
            else:
                self.fail(502, "upstream_unavailable", f"cannot connect to {target.host}:{target.port}")
            return
        Balancer.succeeded(target)
        if self.done:
            target.pool.release(conn)
            return
        self.attach(conn)
        self.flush_up()

    def attach(self, conn: UpstreamConnection) -> None:
        """Send the request on `conn` (its head first, then what `uout` holds, at the next flush). (Has an
        inlined copy in start(), with the clock values read there: tests/unit/test_inlined_copies.py runs both.)"""
        target = self.target
        assert target is not None
        conn.ex = self
        conn.got_data = False
        self.conn = conn
        conn.deadline = self.cp.loop.time() + self.read_timeout
        self.t_up = perf_counter()
        self.upstream_addr = target.log_name
        rest = self.rest
        upath = target.join_base + rest if rest else target.base_path or b"/"  # "/v1" + "/pets"
        self.uout.insert(0, b"".join([self.method, b" ", upath, self.query, target.line_tail, *self.hparts]))
        if self.uout_size:
            self.uout_size = 0
            self.cp.resume(4)
        if self.cp.write_paused:  # the client still has not taken the previous response
            self.hold_upstream(conn)

    @staticmethod
    def hold_upstream(conn: UpstreamConnection) -> None:
        """Stop reading the backend while the client's write buffer is full (a slow client
        is not a slow upstream: no read deadline meanwhile)."""
        if conn.reading and conn.transport is not None:
            conn.reading = False
            conn.transport.pause_reading()
        conn.deadline = float("inf")

    def send_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.chunked:
            self.uout += [b"%x\r\n" % len(data), data, b"\r\n"]
        else:
            self.uout.append(data)
        if self.conn is None:
            if self.queued is not None:  # collected whole for the queue, up to its limit
                if self.body_bytes > self.queued.max_body_bytes:
                    self.fail(413, "payload_too_large", self.queued.too_large(self.body_bytes))
                    self.cp.flush()
                return
            self.uout_size += len(data)
            if self.uout_size > CONNECTING_BUFFER:
                self.cp.pause(4)

    def end_body(self) -> None:
        self.req_complete = True
        if self.chunked:
            self.uout.append(b"0\r\n\r\n")
        elif self.queued is not None:
            self.queued.accept(self)

    def enqueue(self, step: Any) -> None:
        """Queued delivery (`policies.delivery`): collect the whole body (nothing goes upstream now), then
        hand the message to the queue; its answer (202, 503, 413) comes from the step."""
        if self.clen is not None and int(self.clen) > step.max_body_bytes:
            self.fail(413, "payload_too_large", step.too_large(int(self.clen)))
            return
        if self.chunked:  # what arrived so far went in as chunks: keep only the data
            self.uout = self.uout[1::3]
            self.chunked = False
        self.queued = step
        if self.uout_size:
            self.uout_size = 0
            self.cp.resume(4)
        if self.body_bytes > step.max_body_bytes:
            self.fail(413, "payload_too_large", step.too_large(self.body_bytes))
        elif self.req_complete:
            step.accept(self)

    def flush_up(self) -> None:
        conn = self.conn
        if conn is not None and self.uout and conn.transport is not None:
            conn.transport.writelines(self.uout)
            self.uout.clear()

    # ---- response side (called by UpstreamConnection) ----
    def on_head(self, status: int, headers: list[bytes], has_length: bool, connection: list[bytes] | None) -> bool:
        """Queue the response head for the client; True when the body can be relayed as it is.
        `headers`: a slot for the status line, then the kept header lines as (name, ": ", value, "\\r\\n")
        runs (see UpstreamConnection); `connection`: Connection header values naming other headers."""
        self.status = status
        cp = self.cp
        parts = headers
        parts[0] = STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status
        if connection:  # Connection names more headers to drop (hop-by-hop by declaration)
            drop = {t.strip().lower() for v in connection for t in v.split(b",")} - {b"close", b"keep-alive", b""}
            if drop:
                parts = [parts[0]] + [b"".join(parts[i:i + 4]) for i in range(1, len(parts), 4)
                                      if parts[i].lower() not in drop]
        plain = True
        hook = self.hook
        if hook is not None:  # a project with policies: its chain edits the head (and may retry or cache)
            if hook.hooks:
                edited = hook.on_response(self, status, parts)
                if edited is None:  # dropped: the retry policy sends the request again
                    return False
                parts = edited
                plain = self.capture is None
            # inlined: Chain.on_response (tests/unit/test_inlined_copies.py)
            elif self.resp_extra is not None:  # (no retry, cache or response edit: only header lines to add)
                parts += self.resp_extra
        clen = has_length
        if self.is_head or status == 204 or status == 304:
            self.no_body = True
            plain = False
        elif not clen:
            plain = False
            if self.http10:
                self.resp_close = True  # HTTP/1.0: the close ends the body
            else:
                self.resp_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive or self.resp_close or cp.gw.draining:
            parts.append(b"Connection: close\r\n")
            self.keep_alive = False
        elif self.http10:
            parts.append(b"Connection: keep-alive\r\n")  # an HTTP/1.0 client closes unless told
        parts += [b"X-Request-Id: ", self.rid, b"\r\n\r\n"]
        cp.out.append(b"".join(parts))
        self.resp_started = True
        return plain

    def on_body(self, data: bytes) -> None:
        """Bodies that are not relayed as they are: re-chunked, or dropped (HEAD, 204, 304)."""
        if self.done or self.no_body:
            return
        if self.capture is not None:
            self.capture.feed(data)
        if self.resp_chunked:
            self.cp.out += [b"%x\r\n" % len(data), data, b"\r\n"]
        else:
            self.cp.out.append(data)

    def on_end(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.conn = None
        pool = conn.pool
        if reusable and self.req_complete and not self.done:
            pool.release(conn)
        else:
            pool.discard(conn)
        if self.done:
            return
        if self.capture is not None:
            self.capture.end(self)
        cp = self.cp
        if self.resp_chunked:
            cp.out.append(b"0\r\n\r\n")
        # inlined: Exchange.finish (tests/unit/test_inlined_copies.py)
        # (its common case: a project, an upstream time, no abort)
        self.done = True
        now = perf_counter()
        took = now - self.t0
        t_up = self.t_up
        p = self.project
        st = p.stats
        status = self.status
        # inlined: ProjectStats.record (tests/unit/test_inlined_copies.py)
        st.classes[status // 100 if status < 600 else 5] += 1
        i = bisect_left(BUCKETS, took)
        st.lat[i] += 1
        st.lat_sum += took
        if t_up == self.t0:  # the request went upstream as soon as it was parsed
            up = took
        else:
            up = now - t_up
            i = bisect_left(BUCKETS, up)
        st.up[i] += 1
        st.up_sum += up
        accesslog = cp.gw.accesslog
        if accesslog is not None:
            accesslog.write(self.rid, cp.ip, self.method, self.path + self.query, self.host, status,
                            p.log_name, self.upstream_addr, took, up)
        if not self.keep_alive or not self.req_complete or cp.cur is not self or cp.closing or cp.advancing or cp.queue:
            cp.exchange_done(self, not self.keep_alive or not self.req_complete)
            return
        # inlined: ClientProtocol.exchange_done (tests/unit/test_inlined_copies.py)
        # (its common case: a kept-alive connection, nothing queued; `closing` is also set when it is closed)
        cp.cur = None
        cp.idle_t = pool.now  # the sweeper's clock (at most 250 ms behind): the keep-alive deadline's start
        out = cp.out
        if out:
            cp.transport.writelines(out)  # type: ignore[union-attr]
            out.clear()
        if cp.fatal is not None:
            cp.answer_and_close(cp.fatal)
        elif cp.gw.draining:
            cp.close()
        elif cp.paused & 1:  # PAUSE_PIPELINE
            cp.resume(1)

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.done:
            return
        if not self.resp_started:
            if self.hook is not None and self.again("the upstream closed the connection without a response"):
                return
            if conn.reused and not conn.got_data and not self.has_body and not self.retried:
                self.retried = True  # the backend closed an idle keep-alive connection: once more, fresh
                self.cp.loop.create_task(self.connect(self.target))  # type: ignore[arg-type]
                return
            self.fail(502, "upstream_unavailable", "the upstream closed the connection without a response")
        elif self.resp_close and not conn.complete:  # a response delimited by the connection's close
            self.finish(True)
        else:
            self.abort("upstream closed the connection mid-response")

    def on_upstream_error(self, conn: UpstreamConnection, reason: str) -> None:
        self.drop_upstream()
        if not self.resp_started and self.hook is not None and self.again(reason):
            return
        if not self.resp_started:
            self.fail(502, "upstream_unavailable", reason)
        else:
            self.abort(reason)

    def on_timeout(self) -> None:
        self.drop_upstream()
        if not self.resp_started and self.hook is not None and self.again("upstream read timeout"):
            return
        if not self.resp_started:
            self.fail(504, "upstream_timeout")
        else:
            self.abort("upstream read timeout mid-response")

    def again(self, reason: str) -> bool:
        """Whether the retry policy sends the request again after this failure (it schedules it)."""
        retry = self.hook.retry
        return retry is not None and retry.again(self, reason)

    # ---- ending ----
    def drop_upstream(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.pool.discard(conn)

    def fail(self, status: int, code: str, message: str | None = None) -> None:
        """Answer with the gateway's own JSON error (only before the response head went out)."""
        if self.done:
            return
        if self.resp_extra is not None:  # headers a policy added (CORS, RateLimit-*) go on errors too
            self.answer(_Error(status, code, message))
            return
        self.drop_upstream()
        self.status = status
        self.count_error(code)
        close = not self.keep_alive or not self.req_complete or self.cp.gw.draining
        self.cp.out.append(error_response(status, code, self.rid, message, close, self.is_head))
        self.resp_started = True
        self.finish(close)

    def abort(self, reason: str) -> None:
        self.drop_upstream()
        self.finish(True, aborted=reason)

    def client_gone(self) -> None:
        if not self.done:
            self.drop_upstream()
            if not self.resp_started:
                self.status = 499
            self.finish(True, aborted="client closed the connection")

    def finish(self, close: bool, aborted: str | None = None) -> None:
        """Count and log the answered request, then hand the connection back (`exchange_done`). (Has an
        inlined copy of its common case in on_end: tests/unit/test_inlined_copies.py runs both.)"""
        self.done = True
        cp = self.cp
        gw = cp.gw
        now = perf_counter()
        took = now - self.t0
        up = now - self.t_up if self.t_up else None
        p = self.project
        st = p.stats if p is not None else gw.unrouted
        status = self.status
        st.record(status, took, up)
        if gw.accesslog is not None:
            gw.accesslog.write(self.rid, cp.ip, self.method, self.path + self.query, self.host, status,
                               p.log_name if p is not None else NULL, self.upstream_addr, took, up)
        cp.exchange_done(self, close or aborted is not None)
