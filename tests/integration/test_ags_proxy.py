"""The data plane on real sockets in one process: a Gateway in front of echo backends."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tests.support.ags import make_document, project, run_gateway, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import free_port

GET = b"GET %s HTTP/1.1\r\nHost: api.test\r\n\r\n"


class Env:
    def __init__(self, gw: Gateway, port: int, backends: list[EchoServer], urls: list[str]) -> None:
        self.gw, self.port, self.backends, self.urls = gw, port, backends, urls

    def apply(self, projects: list[dict[str, Any]], revision: int = 1) -> None:
        self.gw.apply(validate_document(make_document(projects, revision), "default"))

    async def get(self, path: str, extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: api.test\r\n" + extra + b"\r\n"
        return (await send_and_read(self.port, req))[0]


def run(test: Callable[[Env], Awaitable[None]], backends: int = 1, tmp: Path | None = None,
        **settings: Any) -> None:
    async def start(gw: Gateway, port: int, echoes: list[EchoServer], urls: list[str]) -> None:
        env = Env(gw, port, echoes, urls)
        env.apply([project("pets", "/pets", env.urls[0] + "/v1")])
        await test(env)

    run_gateway(start, backends, access_log=str(tmp / "access.log") if tmp else "", **settings)


def test_path_rewrite_forwarded_headers_and_request_id(tmp_path: Path) -> None:
    async def t(env: Env) -> None:
        status, headers, body = await env.get("/pets/dogs/1?color=brown",
                                              b"X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\n")
        seen = json.loads(body)
        assert status == 200
        assert (seen["path"], seen["query"]) == ("/v1/dogs/1", "color=brown")
        h = {k.lower(): v for k, v in seen["headers"]}
        assert h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert (h["x-forwarded-proto"], h["x-forwarded-host"]) == ("http", "api.test")
        assert h["host"] == env.urls[0].removeprefix("http://")
        assert "connection" not in h
        assert headers["x-request-id"] == h["x-request-id"]
        status, headers, _ = await env.get("/pets", b"X-Request-Id: abc-123\r\n")
        assert headers["x-request-id"] == "abc-123"
        assert json.loads(_)["path"] == "/v1"
        log = tmp_path / "access.log"
        for _ in range(100):  # the sweeper flushes the access log (about every 0.1 s)
            if log.exists() and b"abc-123" in log.read_bytes():
                break
            await asyncio.sleep(0.05)
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert lines[-1]["request_id"] == "abc-123" and lines[-1]["project"] == "pets"
        assert lines[-1]["status"] == 200 and lines[-1]["upstream_ms"] is not None

    run(t, tmp=tmp_path)


def test_no_route_is_json_404_with_request_id() -> None:
    async def t(env: Env) -> None:
        status, headers, body = await env.get("/nothing/here")
        assert status == 404 and headers["content-type"] == "application/json"
        err = json.loads(body)
        assert err["code"] == "no_route" and err["request_id"] == headers["x-request-id"]
        assert env.backends[0].requests == []

    run(t)


def test_keepalive_pipelining_and_upstream_reuse() -> None:
    async def t(env: Env) -> None:
        reqs = b"".join(GET % p for p in (b"/pets/a", b"/pets/b", b"/pets/c"))
        out = await send_and_read(env.port, reqs, responses=3)
        assert [json.loads(b)["path"] for _, _, b in out] == ["/v1/a", "/v1/b", "/v1/c"]
        for i in range(5):
            assert (await env.get(f"/pets/{i}"))[0] == 200
        pool = next(iter(env.gw.pools.pools.values()))
        assert len(pool.idle) == 1 and not pool.busy  # one upstream connection served all, one after another

    run(t)


def test_head_204_304_keep_the_connection_in_sync() -> None:
    async def t(env: Env) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", env.port)
        w.write(b"HEAD /pets/x HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
        w.write(GET % b"/pets/status?code=204" + GET % b"/pets/status?code=304" + GET % b"/pets/after")
        rest = b""
        while rest.count(b"HTTP/1.1") < 3 or not rest.endswith(b"}"):
            rest += await asyncio.wait_for(r.read(65536), 5)
        w.close()
        assert rest.startswith(b"HTTP/1.1 204")  # nothing of a HEAD body in between
        assert b"HTTP/1.1 304" in rest and b'"path": "/v1/after"' in rest

    run(t)


def test_chunked_both_ways_and_http10() -> None:
    async def t(env: Env) -> None:
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"hello ", b"chunked ", b"world")) + b"0\r\n\r\n"
        req = b"POST /pets/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        status, _, resp = (await send_and_read(env.port, req))[0]
        seen = json.loads(resp)
        assert seen["body_sha256"] == hashlib.sha256(b"hello chunked world").hexdigest()
        status, headers, resp = (await send_and_read(env.port, GET % b"/pets/bytes?n=100000&chunked=1"))[0]
        assert status == 200 and headers["transfer-encoding"] == "chunked" and len(resp) == 100000
        r, w = await asyncio.open_connection("127.0.0.1", env.port)
        w.write(b"GET /pets/bytes?n=5000&chunked=1 HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(r.read(), 5)  # HTTP/1.0: no chunking, the close ends the body
        w.close()
        head, _, data = raw.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower() and data == b"x" * 5000

    run(t)


def _never_arrived(env: Env) -> None:
    assert env.backends[0].requests == [], env.backends[0].requests


SMUGGLING = [
    b"POST /pets/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /pets/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST /pets/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /pets/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /pets/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"GET /pets/a HTTP/1.1\r\nHost: a\r\nX:  bad\x00value\r\n\r\n",
    b"GET /pets/a HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET /pets/a HTTP/1.1\nHost: a\n\n",
    b"GET /pets/a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /pets/../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /pets/a HTTP/1.1\r\n\r\n",
]


def test_smuggling_and_malformed_requests_get_400_and_never_reach_the_backend() -> None:
    async def t(env: Env) -> None:
        for raw in SMUGGLING:
            status, headers, body = (await send_and_read(env.port, raw))[0]
            assert status == 400, (raw, status, body)
            assert json.loads(body)["code"] == "bad_request" and headers["connection"] == "close"
        _never_arrived(env)

    run(t)


def test_limits() -> None:
    async def t(env: Env) -> None:
        cases = [
            (b"GET /pets/a HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n", 431, "headers_too_large"),
            (b"GET /pets/a HTTP/1.1\r\nHost: a\r\n" + b"X-H: 1\r\n" * 30 + b"\r\n", 431, "headers_too_large"),
            (b"GET /pets/" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri_too_long"),
            (b"POST /pets/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413, "payload_too_large"),
            (b"GET /pets/a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501,
             "upgrade_not_supported"),
            (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501, "upgrade_not_supported"),
        ]
        for raw, status, code in cases:
            got, _, body = (await send_and_read(env.port, raw))[0]
            assert (got, json.loads(body)["code"]) == (status, code), raw[:60]
        _never_arrived(env)
        # a chunked body over the limit is cut: the backend never sees a complete request
        big = b"1000\r\n" + b"z" * 4096 + b"\r\n"
        raw = b"POST /pets/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + big * 2 + b"0\r\n\r\n"
        got, _, body = (await send_and_read(env.port, raw))[0]
        assert (got, json.loads(body)["code"]) == (413, "payload_too_large")
        await asyncio.sleep(0.1)
        _never_arrived(env)

    run(t, max_header_bytes=2048, max_headers=20, max_url_bytes=1024, max_body_bytes=4096)


def test_backend_down_502_and_failover_to_a_live_target() -> None:
    async def t(env: Env) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        env.apply([project("down", "/down", dead), project("mixed", "/mixed", dead, env.urls[0])], 2)
        status, _, body = await env.get("/down/x")
        assert (status, json.loads(body)["code"]) == (502, "upstream_unavailable")
        results = [(await env.get("/mixed/x"))[0] for _ in range(6)]
        assert results == [200] * 6  # a refused connect moves to the next target; nothing was sent yet
        target = env.gw.config.projects["mixed"].balancer.targets[0]
        assert target.down_until > 0  # passive health: marked down

    run(t)


def test_slow_backend_504_and_timeout_policy() -> None:
    async def t(env: Env) -> None:
        env.apply([project("slow", "/slow", env.urls[0]),
                   project("patient", "/patient", env.urls[0], policies=[{"type": "timeout", "read": 3}])], 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await env.get("/slow/slow?s=3")
        assert (status, json.loads(body)["code"]) == (504, "upstream_timeout")
        assert loop.time() - started < 2.0
        assert (await env.get("/patient/slow?s=1"))[0] == 200

    run(t, read_timeout=0.5)


def test_weighted_round_robin_over_targets() -> None:
    async def t(env: Env) -> None:
        targets = [{"url": env.urls[0], "weight": 3}, {"url": env.urls[1], "weight": 1}]
        env.apply([project("w", "/w", targets=targets)], 2)
        names = [json.loads((await env.get("/w/x"))[2])["backend"] for _ in range(8)]
        assert names.count("b0") == 6 and names.count("b1") == 2

    run(t, backends=2)


def test_in_flight_requests_finish_on_the_old_configuration() -> None:
    async def t(env: Env) -> None:
        env.apply([project("pets", "/pets", env.urls[0])], 2)
        slow = asyncio.ensure_future(env.get("/pets/slow?s=0.5"))
        await asyncio.sleep(0.1)
        env.apply([project("pets", "/pets", env.urls[1])], 3)  # swapped while the slow one is in flight
        fresh = json.loads((await env.get("/pets/x"))[2])
        old = json.loads((await slow)[2])
        assert (old["backend"], fresh["backend"]) == ("b0", "b1")
        assert env.gw.config.revision == 3

    run(t, backends=2)


def test_policy_the_gateway_cannot_enforce_is_refused() -> None:
    async def t(env: Env) -> None:
        env.apply([project("keyed", "/keyed", env.urls[0], policies=[{"type": "made-up"}])], 2)
        status, _, body = await env.get("/keyed/x")
        assert (status, json.loads(body)["code"]) == (501, "policy_not_supported")
        _never_arrived(env)

    run(t)


def test_upstream_garbage_is_502() -> None:
    async def bad_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async def t(env: Env) -> None:
        server = await asyncio.start_server(bad_backend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env.apply([project("bad", "/bad", f"http://127.0.0.1:{port}")], 2)
        status, _, body = await env.get("/bad/x")
        assert (status, json.loads(body)["code"]) == (502, "upstream_unavailable")
        server.close()

    run(t)


def test_idle_keepalive_closed_by_the_backend_is_retried_once() -> None:
    served: list[int] = []

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: drop it unanswered
        writer.close()

    async def t(env: Env) -> None:
        server = await asyncio.start_server(one_per_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env.apply([project("flaky", "/flaky", f"http://127.0.0.1:{port}")], 2)
        assert [(await env.get("/flaky/x"))[0] for _ in range(3)] == [200, 200, 200]
        assert len(served) == 3
        server.close()

    run(t)


def test_expect_100_continue_and_http10_keepalive() -> None:
    async def t(env: Env) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", env.port)
        w.write(b"POST /pets/up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # the gateway answers Expect itself
        w.write(b"hello")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        w.close()
        seen = env.backends[0].requests[-1]
        assert seen["body_bytes"] == 5 and all(k.lower() != "expect" for k, _ in seen["headers"])
        out = await send_and_read(env.port, b"GET /pets/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                            b"GET /pets/b HTTP/1.0\r\n\r\n", responses=2)
        assert [h.get("connection") for _, h, _ in out] == ["keep-alive", "close"]

    run(t)


def test_a_slow_client_holds_the_backend_instead_of_filling_memory() -> None:
    async def t(env: Env) -> None:
        size = 5 * 1024 * 1024
        env.apply([project("pets", "/pets", env.urls[0]), project("other", "/other", env.urls[1])], 2)
        r, w = await asyncio.open_connection("127.0.0.1", env.port, limit=2**20)
        import socket as s

        w.get_extra_info("socket").setsockopt(s.SOL_SOCKET, s.SO_RCVBUF, 65536)
        # nobody reads: the first response fills the client's buffer as it completes, the second
        # needs a new upstream connection, which must start held
        w.write(GET % b"/pets/bytes?n=150000" + GET % b"/other/bytes?n=%d" % size)
        await asyncio.sleep(0.8)
        buffered = max(cp.transport.get_write_buffer_size() for cp in env.gw.connections if cp.transport)
        assert buffered < 1024 * 1024, buffered  # the backend was paused, not drained into our memory
        got = 0
        while got < size + 150000:
            chunk = await asyncio.wait_for(r.read(1 << 20), 10)
            assert chunk
            got += len(chunk)
        w.close()

    run(t, backends=2)


def test_trailers_never_become_headers_of_the_next_request() -> None:
    async def t(env: Env) -> None:
        smuggle = (b"POST /pets/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
                   b"GET /pets/next HTTP/1.1\r\nHost: a\r\n\r\n")
        out = await send_and_read(env.port, smuggle, responses=2)
        assert [s for s, _, _ in out] == [200, 200]
        nxt = env.backends[0].requests[-1]
        assert nxt["path"] == "/v1/next"
        names = {k.lower() for k, _ in nxt["headers"]}
        assert "x-trailer" not in names, nxt["headers"]
        assert dict((k.lower(), v) for k, v in nxt["headers"])["x-forwarded-for"] == "127.0.0.1"

    run(t)


def test_response_trailers_do_not_leak_into_the_next_response() -> None:
    async def chunked_with_trailer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\nX-Leak: 1\r\n\r\n")
            await writer.drain()

    async def t(env: Env) -> None:
        server = await asyncio.start_server(chunked_with_trailer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env.apply([project("tr", "/tr", f"http://127.0.0.1:{port}")], 2)
        for _ in range(3):  # the same pooled upstream connection each time
            status, headers, body = await env.get("/tr/x")
            assert (status, body) == (200, b"ok") and "x-leak" not in headers, headers
        server.close()

    run(t)


def test_failover_to_a_target_with_an_idle_pooled_connection() -> None:
    """A refused target, then one whose pooled keep-alive connection is attached at once: the request
    must still be written (it once waited forever in the exchange's buffer)."""
    async def t(env: Env) -> None:
        assert (await env.get("/pets/warm"))[0] == 200  # leaves an idle connection to backend 0
        dead = f"http://127.0.0.1:{free_port()}"
        env.apply([project("mixed", "/mixed", dead, env.urls[0])], 2)
        for _ in range(4):
            status, _, _ = await asyncio.wait_for(env.get("/mixed/x"), 3)
            assert status == 200

    run(t)


def test_a_response_without_date_gets_one_and_a_backends_date_is_kept() -> None:
    backend_dates = [None, b"date: Tue, 01 Jan 2030 00:00:00 GMT\r\n", None, b"Date: Wed, 02 Jan 2030 00:00:00 GMT\r\n"]

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for date in backend_dates:  # one keep-alive connection: what one response had must not carry over
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + (date or b"") + b"\r\nok")
            await writer.drain()

    async def t(env: Env) -> None:
        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env.apply([project("nd", "/nd", f"http://127.0.0.1:{port}")], 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        seen = []
        for _ in backend_dates:
            writer.write(GET % b"/nd/x")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert await reader.readexactly(2) == b"ok"
            dates = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"date:")]
            assert len(dates) == 1, head  # exactly one Date, never two
            seen.append(dates[0])
        writer.close()
        server.close()
        assert seen[1] == b"Tue, 01 Jan 2030 00:00:00 GMT" and seen[3] == b"Wed, 02 Jan 2030 00:00:00 GMT"
        for added in (seen[0], seen[2]):  # the gateway's own, in the IMF-fixdate form
            assert re.fullmatch(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", added), added
            assert abs(parsedate_to_datetime(added.decode()).timestamp() - time.time()) < 60

    run(t)
