"""The gateway's hand-inlined copies of methods, each run against the method it copies.

A few methods are copied by hand into the hot path (no Python call: docs/gateway.md, "Inlined
copies"), kept only where callgrind showed the copy saves at least ~1% of a request's instructions
(docs/benchmarks.md). Each copy starts with the marker `# inlined: <Class.method>
(tests/unit/test_inlined_copies.py)`; every pair named by a marker has a test here that runs the
copy and the method on the same inputs and compares what they did. `test_every_copy_is_marked_and_covered`
fails on a copy without the marker, or a marker naming a pair this file does not cover.
"""

from __future__ import annotations

import asyncio
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tandem.ags.exchange as exchange_mod
import tandem.ags.protocol as protocol_mod
from tandem.ags.balancer import Balancer
from tandem.ags.exchange import Exchange
from tandem.ags.gateway import Gateway
from tandem.ags.metrics import ProjectStats
from tandem.ags.policies.api_key import ApiKeyStep, identified, query_value
from tandem.ags.policies.base import drop_upstream_header, request_header
from tandem.ags.protocol import ClientProtocol
from tandem.ags.router import split_host
from tandem.ags.settings import GatewaySettings
from tandem.ags.upstream import UpstreamConnection
from tests.support.ags import SinkTransport, project

# the copies are a property of the Python source: with the hot path compiled (tandem/native.py) this
# module runs in tests/unit/test_native.py's pure-Python pass
pytestmark = pytest.mark.pure_python

AGS = Path(__file__).resolve().parents[2] / "src" / "tandem" / "ags"
MARKER = re.compile(r"# inlined: (?P<pair>\w+\.\w+) \(tests/unit/test_inlined_copies\.py\)")
# every pair a marker may name -> the test here that runs the copy against the method
COVERED = {
    "Router.match": "test_router_match_copy",
    "Balancer.pick": "test_balancer_pick_copy",
    "Exchange.attach": "test_exchange_attach_copy",
    "ProjectStats.record": "test_project_stats_record_copy",
    "Exchange.finish": "test_finish_and_exchange_done_copy",
    "ClientProtocol.exchange_done": "test_finish_and_exchange_done_copy",
    "Chain.on_response": "test_chain_on_response_copy",
    "base.request_header": "test_api_key_helpers_copy",
    "base.drop_upstream_header": "test_api_key_helpers_copy",
    "api_key.identified": "test_api_key_helpers_copy",
}


# ---- a gateway on fake transports (nothing is sent: the loop never runs) ----
class Rig:
    """A gateway, one client connection and one idle upstream connection per target."""

    def __init__(self, projects: list[dict[str, Any]], consumers: list[dict[str, Any]] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.time = lambda: 50.0  # type: ignore[method-assign]  # one instant: both paths read it alike
        self.gw = Gateway(GatewaySettings(), self.loop)
        self.gw.apply({"environment": "default", "revision": 1, "projects": projects,
                       "consumers": consumers or []})
        self.ups: list[UpstreamConnection] = []
        for p in self.gw.config.projects.values():
            for t in p.balancer.targets:
                up = UpstreamConnection(t.pool)
                up.connection_made(SinkTransport())
                t.pool.release(up)
                self.ups.append(up)
        self.client = SinkTransport()
        self.cp = ClientProtocol(self.gw)
        self.cp.connection_made(self.client)

    def close(self) -> None:
        self.loop.close()

    def respond(self, response: bytes) -> None:
        """The response of the upstream connection the current exchange holds."""
        ex = self.cp.cur
        assert ex is not None and ex.conn is not None
        ex.conn.data_received(response)


def response(status: int, body: bytes = b"{}") -> bytes:
    return (b"HTTP/1.1 %d X\r\nDate: Thu, 03 Dec 2026 08:00:00 GMT\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """perf_counter() of the protocol and the exchange, set by the test (clock[0])."""
    now = [1000.0]
    monkeypatch.setattr(exchange_mod, "perf_counter", lambda: now[0])
    monkeypatch.setattr(protocol_mod, "perf_counter", lambda: now[0])
    yield now


# ---- the source: every copy marked, every marker covered ----
def test_every_copy_is_marked_and_covered() -> None:
    """Every comment in src/tandem/ags that speaks of an inlined copy (or of keeping copies in step) is the
    marker, alone on its line, and names a pair this file covers."""
    names = set(globals())
    seen: set[str] = set()
    for path in sorted(AGS.rglob("*.py")):
        lines = path.read_text().splitlines()
        with path.open("rb") as fh:
            for tok in tokenize.tokenize(fh.readline):
                if tok.type != tokenize.COMMENT:
                    continue
                low = tok.string.lower()
                if "inline" not in low and "in step" not in low and "copy" not in low:
                    continue
                where = f"{path.relative_to(AGS)}:{tok.start[0]}"
                m = MARKER.fullmatch(tok.string)
                assert m is not None, f"{where}: a copy without the uniform marker: {tok.string}"
                assert lines[tok.start[0] - 1].strip() == tok.string, f"{where}: the marker has a line of its own"
                pair = m.group("pair")
                assert pair in COVERED and COVERED[pair] in names, f"{where}: {pair} has no test in this file"
                seen.add(pair)
    assert seen == set(COVERED), f"pairs covered here with no copy in the source: {set(COVERED) - seen}"


def test_the_methods_say_they_have_a_copy() -> None:
    from tandem.ags.policies.chain import Chain
    from tandem.ags.router import Router

    for method in (Exchange.attach, Router.match, Balancer.pick, ProjectStats.record, Exchange.finish,
                   ClientProtocol.exchange_done, Chain.on_response, request_header, drop_upstream_header,
                   identified):
        assert "inlined copy" in " ".join((method.__doc__ or "").split()), method.__qualname__


def test_the_pool_keeps_its_lists() -> None:
    """The exchange and the client protocol use Pool's methods, never its idle list or busy set."""
    for name in ("exchange.py", "protocol.py"):
        text = (AGS / name).read_text()
        assert not re.search(r"\.(idle|busy|waiters)\b", text), name


# ---- Router.match's first probe (protocol.on_headers_complete) ----
ROUTER_CONFIGS = [
    [project("p0", "/api0", "http://h/"), project("p1", "/api1", "http://h/"),
     project("root", "/", "http://h/")],
    [project("p0", "/api0", "http://h/"), project("hosted", "/api0", "http://h/", hosts=["b.example"]),
     project("gets", "/api1", "http://h/", methods=["GET"]), project("any1", "/api1", "http://h/")],
    [project("deep", "/a/b", "http://h/"), project("a", "/a", "http://h/")],
    [project("only", "/api0", "http://h/")],
]
ROUTER_REQUESTS = [(b"GET", b"/api0/items/42", b"a"), (b"GET", b"/api0", b"b.example"), (b"POST", b"/api1/x", b"a"),
                   (b"GET", b"/api1/x", b"B.Example:8080"), (b"GET", b"/a/b/c", b"a"), (b"GET", b"/a/x", b"a"),
                   (b"GET", b"/nowhere", b"a"), (b"GET", b"/", b"a"), (b"GET", b"/api0x/y", b"a")]


@pytest.mark.parametrize("config", range(len(ROUTER_CONFIGS)))
def test_router_match_copy(config: int) -> None:
    rig = Rig(ROUTER_CONFIGS[config])
    try:
        router = rig.gw.config.router
        for method, path, host in ROUTER_REQUESTS:
            rig.cp.cur = Exchange(rig.cp, b"GET", b"busy", 0.0)
            rig.cp.queue.clear()
            rig.cp.data_received(b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (method, path, host))
            (ex,) = rig.cp.queue
            want = router.match(path, split_host(host) if router.uses_hosts else b"", method)
            assert ex.project is want, (method, path, host)
    finally:
        rig.close()


# ---- Balancer.pick (Exchange.start) ----
@pytest.mark.parametrize("targets,down", [
    (1, [0.0]),  # one target, up
    (1, [1e12]),  # one target, down: handed out anyway
    (1, [-5.0]),
    (2, [0.0, 0.0]),
    (2, [1e12, 0.0]),
    (3, [1e12, 1e12, 1e12]),
])
def test_balancer_pick_copy(targets: int, down: list[float]) -> None:
    urls = [f"http://127.0.0.{i + 1}:9/" for i in range(targets)]
    rig = Rig([project("p0", "/api0", *urls)])
    try:
        bal = rig.gw.config.projects["p0"].balancer
        for t, d in zip(bal.targets, down, strict=True):
            t.down_until = d
        for _ in range(4):
            twin = Balancer.__new__(Balancer)
            twin.targets, twin.cycle, twin.i = bal.targets, bal.cycle, bal.i
            now = rig.loop.time()
            want = twin.pick(now)
            rig.cp.data_received(b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n")
            ex = rig.cp.cur
            assert ex is not None and ex.target is want and bal.i == twin.i
            rig.respond(response(200))
    finally:
        rig.close()


def test_balancer_pick_copy_without_targets() -> None:
    rig = Rig([project("p0", "/api0")])
    try:
        bal = rig.gw.config.projects["p0"].balancer
        assert Balancer.pick(bal, rig.loop.time()) is None
        rig.cp.data_received(b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b" 502 " in bytes(rig.client.data) and b"upstream_unavailable" in bytes(rig.client.data)
    finally:
        rig.close()


# ---- Exchange.attach (Exchange.start, with a pooled connection) ----
ATTACH_REQUESTS = [
    b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api0 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"GET /api0/a/b?x=1&y=2 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r-7\r\n\r\n",
    b"POST /api0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel",  # the rest comes later
    b"PUT /api0/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("target_url", ["http://127.0.0.1:9/", "http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1"])
@pytest.mark.parametrize("case", range(len(ATTACH_REQUESTS)))
def test_exchange_attach_copy(case: int, target_url: str, clock: list[float]) -> None:
    seen = []
    for by_method in (False, True):
        rig = Rig([project("p0", "/api0", target_url)])
        try:
            rig.gw.rid_format = b"rid-%x"
            up = rig.ups[0]
            pool = up.pool
            connecting: list[Any] = []
            with pytest.MonkeyPatch.context() as mp:
                if by_method:  # no idle connection when start() looks: the exchange connects, then attach() runs
                    mp.setattr(rig.loop, "create_task", lambda coro, seen=connecting: seen.append(coro) or coro.close())
                    mp.setattr(pool, "take", lambda: None)
                rig.cp.data_received(ATTACH_REQUESTS[case])
            ex = rig.cp.cur
            assert ex is not None
            if by_method:
                assert len(connecting) == 1 and ex.conn is None
                conn = pool.take()
                assert conn is up
                ex.attach(conn)
                ex.flush_up()
            seen.append((bytes(up.transport.data), ex.conn is up, up.ex is ex, up.got_data, up.deadline, up.reused,
                         ex.t_up, ex.upstream_addr, list(ex.uout), ex.uout_size, repr(pool)))
            rig.respond(response(200))
            seen.append((bytes(rig.client.data), rig.cp.cur))
        finally:
            rig.close()
    assert seen[:2] == seen[2:]


# ---- ProjectStats.record, finish() and ClientProtocol.exchange_done (Exchange.on_end) ----
TIMINGS = [0.0, 0.0001, 0.0005, 0.0007, 0.01, 0.3, 2.5, 29.0, 30.0, 45.0]


def test_project_stats_record_copy(clock: list[float]) -> None:
    rig = Rig([project("p0", "/api0", "http://127.0.0.1:9/")])
    try:
        st = rig.gw.config.projects["p0"].stats
        ref = ProjectStats()
        statuses = list(range(200, 1000))
        for n, status in enumerate(statuses):
            took = TIMINGS[n % len(TIMINGS)]
            clock[0] = t0 = 1000.0 + n
            rig.cp.data_received(b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n")
            clock[0] = end = t0 + took
            rig.respond(response(status, b"" if status in (204, 304) else b"{}"))
            assert rig.cp.cur is None
            ref.record(status, end - t0, end - t0)  # went upstream at once: upstream time = latency
        # requests sent upstream after a pipelined one: an upstream time of their own
        for n, status in enumerate((200, 404, 503, 302, 700)):
            clock[0] = t0 = 5000.0 + n
            rig.cp.data_received(b"GET /api0/a HTTP/1.1\r\nHost: a\r\n\r\nGET /api0/b HTTP/1.1\r\nHost: a\r\n\r\n")
            clock[0] = started = t0 + TIMINGS[n + 3]
            rig.respond(response(200))  # (not the copy: a request is queued)
            ref.record(200, started - t0, started - t0)
            clock[0] = end = started + TIMINGS[n + 1]
            rig.respond(response(status))
            ref.record(status, end - t0, end - started)
        assert st.to_json() == ref.to_json()
    finally:
        rig.close()


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[Any, ...]] = []

    def write(self, *args: Any) -> None:
        self.lines.append(args)


def on_end_by_the_methods(self: Exchange, conn: UpstreamConnection, reusable: bool) -> None:
    """What Exchange.on_end does, with finish() and exchange_done called instead of their copies."""
    self.conn = None
    if reusable and self.req_complete and not self.done:
        conn.pool.release(conn)
    else:
        conn.pool.discard(conn)
    if self.done:
        return
    if self.capture is not None:
        self.capture.end(self)
    if self.resp_chunked:
        self.cp.out.append(b"0\r\n\r\n")
    self.finish(not self.keep_alive or not self.req_complete)


FINISH_CASES = [
    (b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n", response(200)),
    (b"GET /api0/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r-1\r\n\r\n", response(404, b"nope")),
    (b"HEAD /api0/x HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
    (b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"POST /api0/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", response(201)),
    (b"GET /api0/x HTTP/1.1\r\nHost: a\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"),
    (b"GET /api0/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", response(200)),
    (b"GET /api0/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", response(500)),
]


@pytest.mark.parametrize("case", range(len(FINISH_CASES)))
def test_finish_and_exchange_done_copy(case: int, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    request_bytes, response_bytes = FINISH_CASES[case]
    seen = []
    for by_methods in (False, True):
        if by_methods:
            monkeypatch.setattr(Exchange, "on_end", on_end_by_the_methods)
        rig = Rig([project("p0", "/api0", "http://127.0.0.1:9/")])
        try:
            log = RecordingLog()
            rig.gw.accesslog = log
            rig.gw.rid_format = b"rid-%x"
            pool = rig.ups[0].pool
            # (the copy starts the keep-alive wait at the sweeper's clock, exchange_done at loop.time(): at most
            # 250 ms apart, the sweeper's interval; one instant here)
            assert pool.now == rig.loop.time()
            for n in range(3):  # the keep-alive connection serves the next request too
                clock[0] = 1000.0 + n
                rig.cp.data_received(request_bytes)
                clock[0] = 1000.25 + n
                if rig.cp.cur is None:
                    break
                rig.respond(response_bytes)
            st = rig.gw.config.projects["p0"].stats
            seen.append((bytes(rig.client.data), st.to_json(), log.lines, rig.cp.cur, rig.cp.closing,
                         rig.cp.paused, len(rig.cp.out), rig.cp.idle_t,
                         repr(pool), [u.ex for u in rig.ups]))
        finally:
            rig.close()
    assert seen[0] == seen[1]


# ---- Chain.on_response (Exchange.on_head), when the chain only adds header lines ----
@pytest.mark.parametrize("policies", [
    [{"type": "rate-limit", "limit": 1000, "window": 1}],
    [{"type": "rate-limit", "limit": 2, "window": 60}, {"type": "cors", "allow_origins": ["*"]}],
    [{"type": "ip-filter", "allow": ["0.0.0.0/0"]}],
])
def test_chain_on_response_copy(policies: list[dict[str, Any]], clock: list[float]) -> None:
    seen = []
    for by_method in (False, True):
        rig = Rig([project("p0", "/api0", "http://127.0.0.1:9/", policies=policies)])
        try:
            rig.gw.rid_format = b"rid-%x"
            chain = rig.gw.config.projects["p0"].chain
            assert chain is not None and not chain.hooks  # no retry, cache or response edit: the copy runs
            if by_method:
                chain.hooks = True  # (with none of them, on_response does only what the copy does)
            for _ in range(3):
                rig.cp.data_received(b"GET /api0/x HTTP/1.1\r\nHost: a\r\nOrigin: http://o\r\n\r\n")
                if rig.cp.cur is not None:
                    rig.respond(response(200))
            seen.append(re.sub(rb"Date: [^\r]*", b"", bytes(rig.client.data)))
        finally:
            rig.close()
    assert seen[0] == seen[1] and seen[0].count(b"HTTP/1.1 ") == 3


# ---- request_header, drop_upstream_header and identified (ApiKeyStep.request) ----
class StepEx:
    """What an auth step reads and writes on an exchange."""

    def __init__(self, headers: list[tuple[bytes, bytes]], query: bytes) -> None:
        self.req_headers = headers
        self.hparts: list[bytes] = []
        for name, value in headers:
            self.hparts += [name, b": ", value, b"\r\n"]
        self.nhead = len(self.hparts)
        self.hparts += [b"X-Forwarded-For: 10.0.0.7\r\n", b"\r\n"]
        self.query = query
        self.consumer: str | None = None
        self.edit: Any = None

    def state(self) -> tuple[Any, ...]:
        return (list(self.hparts), self.nhead, self.consumer, self.query,
                None if self.edit is None else (self.edit.ops, self.edit.query))


def request_by_the_helpers(step: ApiKeyStep, ex: Any) -> Any:
    """ApiKeyStep.request with request_header, drop_upstream_header and identified called."""
    from tandem.ags.policies.api_key import query_without
    from tandem.ags.policies.base import Answer, edit

    key = request_header(ex, step.lheader)
    from_query = False
    if key is None and step.query_param is not None and ex.query:
        key = query_value(ex.query, step.query_param)
        from_query = key is not None
    if not key:
        return ("answer", 401, "missing_credentials")
    consumer = step.keys.get(__import__("hashlib").sha256(key).hexdigest())
    if consumer is None:
        return ("answer", 401, "invalid_credentials")
    if step.hide:
        if from_query:
            edit(ex).query = query_without(ex.query, step.query_param)
        else:
            drop_upstream_header(ex, step.lheader)
    identified(ex, consumer)
    assert Answer
    return None


API_KEY_CASES = [
    ([(b"X-API-Key", b"k1")], b""),
    ([(b"x-api-key", b"k1"), (b"Accept", b"*/*")], b""),
    ([(b"Accept", b"*/*"), (b"X-Api-Key", b"k2"), (b"X-API-KEY", b"k1")], b""),  # the first one counts
    ([(b"X-API-Key", b"nope")], b""),
    ([(b"Accept", b"*/*")], b""),
    ([(b"Accept", b"*/*")], b"?a=1&apikey=k2&b=2"),
    ([(b"X-API-Key", b"")], b"?apikey=k1"),
    ([(b"X-API-Key", b"k1"), (b"User-Agent", b"t"), (b"X-Api-Key", b"k2")], b"?apikey=k2"),
    ([(b"Accept", b"*/*")], b"?apikey=nope"),
]


@pytest.mark.parametrize("hide", [True, False])
@pytest.mark.parametrize("query_param", [None, b"apikey"])
def test_api_key_helpers_copy(hide: bool, query_param: bytes | None) -> None:
    import hashlib

    keys = {hashlib.sha256(b"k1").hexdigest(): "alice", hashlib.sha256(b"k2").hexdigest(): "bjørn"}
    step = ApiKeyStep(b"X-API-Key", query_param, hide, keys)
    for headers, query in API_KEY_CASES:
        for _ in range(2):  # the second time the key is known (no sha256)
            a, b = StepEx(headers, query), StepEx(headers, query)
            got = step.request(a)
            want = request_by_the_helpers(step, b)
            assert (None if got is None else ("answer", got.status, got.code)) == want, (headers, query)
            assert a.state() == b.state(), (headers, query)
