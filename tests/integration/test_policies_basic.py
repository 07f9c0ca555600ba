"""api-key, basic-auth, ip-filter, cors, request/response-headers and retry on a real in-process gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tandem.passwords import hash_password
from tests.support.ags import make_document, project, run_gateway, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import free_port

KEY = "tk_secret-key-1"
CONSUMERS = [
    {"name": "acme", "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
     "credentials": {"basic_auth": [{"username": "ann", "password_hash": hash_password("pw-ann", log2_n=10)}],
                     "jwt": []}},
]


class Env:
    def __init__(self, gw: Gateway, port: int, backends: list[EchoServer], urls: list[str]) -> None:
        self.gw, self.port, self.backends, self.urls = gw, port, backends, urls
        self.revision = 1

    def apply(self, *projects: dict[str, Any]) -> None:
        self.revision += 1
        self.gw.apply(validate_document(make_document(list(projects), self.revision, consumers=CONSUMERS),
                                        "default"))

    async def req(self, method: str, path: str, *headers: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: api.test\r\n" + "".join(h + "\r\n" for h in headers)
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        return (await send_and_read(self.port, head.encode() + b"\r\n" + body))[0]

    def seen(self, i: int = 0) -> list[dict[str, Any]]:
        return self.backends[i].requests

    def last_headers(self, i: int = 0) -> dict[str, str]:
        return {k.lower(): v for k, v in self.seen(i)[-1]["headers"]}


def run(test: Callable[[Env], Awaitable[None]], backends: int = 1, **settings: Any) -> None:
    async def start(gw: Gateway, port: int, echoes: list[EchoServer], urls: list[str]) -> None:
        await test(Env(gw, port, echoes, urls))

    run_gateway(start, backends, **settings)


def _code(body: bytes) -> str:
    return str(json.loads(body)["code"])


def test_api_key_header_and_query() -> None:
    async def t(env: Env) -> None:
        env.apply(project("k", "/k", env.urls[0], policies=[{"type": "api-key", "query_param": "apikey"}]))
        status, h, body = await env.req("GET", "/k/x")
        assert (status, _code(body)) == (401, "missing_credentials")
        status, h, body = await env.req("GET", "/k/x", "X-API-Key: wrong")
        assert (status, _code(body)) == (401, "invalid_credentials")
        assert env.seen() == []
        status, h, body = await env.req("GET", "/k/x", f"X-API-Key: {KEY}", "X-Consumer-Name: forged")
        assert status == 200, body
        got = env.last_headers()
        assert got["x-consumer-name"] == "acme" and "x-api-key" not in got  # hidden, and not forgeable
        status, _, body = await env.req("GET", f"/k/x?a=1&apikey={KEY}&b=2")
        assert status == 200 and env.seen()[-1]["query"] == "a=1&b=2"
        assert [v for k, v in env.seen()[-1]["headers"] if k.lower() == "x-consumer-name"] == ["acme"]

    run(t)


def test_api_key_revoked_when_the_consumers_change() -> None:
    async def t(env: Env) -> None:
        p = project("k", "/k", env.urls[0], policies=[{"type": "api-key"}])
        env.apply(p)
        assert (await env.req("GET", "/k/x", f"X-API-Key: {KEY}"))[0] == 200
        CONSUMERS[0]["keys"], saved = [], CONSUMERS[0]["keys"]
        try:
            env.apply(p)  # the project document is the same; the consumers are not
            status, _, body = await env.req("GET", "/k/x", f"X-API-Key: {KEY}")
            assert (status, _code(body)) == (401, "invalid_credentials")
        finally:
            CONSUMERS[0]["keys"] = saved

    run(t)


def test_basic_auth() -> None:
    async def t(env: Env) -> None:
        env.apply(project("b", "/b", env.urls[0], policies=[{"type": "basic-auth", "realm": "pets"}]))
        status, h, body = await env.req("GET", "/b/x")
        assert (status, _code(body)) == (401, "missing_credentials")
        assert h["www-authenticate"].startswith('Basic realm="pets"')
        bad = base64.b64encode(b"ann:nope").decode()
        status, h, body = await env.req("GET", "/b/x", f"Authorization: Basic {bad}")
        assert (status, _code(body)) == (401, "invalid_credentials")
        status, h, body = await env.req("GET", "/b/x", "Authorization: Basic !!!")
        assert (status, _code(body)) == (401, "invalid_credentials")
        assert env.seen() == []
        good = base64.b64encode(b"ann:pw-ann").decode()
        results = await asyncio.gather(*(env.req("GET", "/b/x", f"Authorization: Basic {good}") for _ in range(5)))
        assert [r[0] for r in results] == [200] * 5
        got = env.last_headers()
        assert got["x-consumer-name"] == "acme" and "authorization" not in got
        cache = env.gw.services.state("basic-auth-verdicts", dict)
        assert len(cache.entries) == 2  # one verification per distinct (user, password), however many requests

    run(t)


def test_ip_filter_with_trusted_proxy() -> None:
    async def t(env: Env) -> None:
        env.apply(project("d", "/d", env.urls[0], policies=[{"type": "ip-filter", "deny": ["127.0.0.0/8"]}]),
                  project("a", "/a", env.urls[0], policies=[{"type": "ip-filter", "allow": ["10.1.0.0/16", "::1"],
                                                             "trusted_proxies": ["127.0.0.1/32"]}]))
        status, _, body = await env.req("GET", "/d/x")
        assert (status, _code(body)) == (403, "ip_forbidden")
        status, _, body = await env.req("GET", "/a/x")  # the proxy itself is not in the allow list
        assert (status, _code(body)) == (403, "ip_forbidden")
        assert env.seen() == []
        status, _, body = await env.req("GET", "/a/x", "X-Forwarded-For: 10.1.2.3")
        assert status == 200
        # a client cannot forge an allowed address in front of what the trusted proxy appended
        status, _, body = await env.req("GET", "/a/x", "X-Forwarded-For: 10.1.2.3, 192.0.2.7")
        assert (status, _code(body)) == (403, "ip_forbidden")
        status, _, body = await env.req("GET", "/a/x", "X-Forwarded-For: ::1, 2001:db8::1")
        assert (status, _code(body)) == (403, "ip_forbidden")
        status, _, body = await env.req("GET", "/a/x", "X-Forwarded-For: 2001:db8::1, ::1")
        assert status == 200  # IPv6: ::1 is allowed
        assert len(env.seen()) == 2

    run(t)


def test_cors_preflight_and_actual() -> None:
    async def t(env: Env) -> None:
        env.apply(project("c", "/c", env.urls[0], policies=[
            {"type": "cors", "allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"],
             "allow_headers": ["X-Trace"], "expose_headers": ["X-Backend"], "allow_credentials": True,
             "max_age": 120}]))
        status, h, body = await env.req("OPTIONS", "/c/x", "Origin: https://app.example",
                                        "Access-Control-Request-Method: PUT",
                                        "Access-Control-Request-Headers: x-trace")
        assert status == 204, body
        assert h["access-control-allow-origin"] == "https://app.example"
        assert h["access-control-allow-methods"] == "GET, PUT" and h["access-control-max-age"] == "120"
        assert h["access-control-allow-credentials"] == "true" and h["access-control-allow-headers"] == "X-Trace"
        for extra in (("Origin: https://evil.example", "Access-Control-Request-Method: GET"),
                      ("Origin: https://app.example", "Access-Control-Request-Method: DELETE"),
                      ("Origin: https://app.example", "Access-Control-Request-Method: GET",
                       "Access-Control-Request-Headers: X-Other")):
            status, h, body = await env.req("OPTIONS", "/c/x", *extra)
            assert (status, _code(body)) == (403, "cors_forbidden")
        assert env.seen() == []  # preflights never reach the backend
        status, h, _ = await env.req("GET", "/c/x", "Origin: https://app.example")
        assert status == 200 and h["access-control-allow-origin"] == "https://app.example"
        assert h["access-control-expose-headers"] == "X-Backend" and h["vary"] == "Origin"
        status, h, _ = await env.req("GET", "/c/x", "Origin: https://evil.example")
        assert status == 200 and "access-control-allow-origin" not in h
        status, h, _ = await env.req("OPTIONS", "/c/x")  # not a preflight: proxied
        assert status == 200 and len(env.seen()) == 3

    run(t)


def test_request_and_response_headers() -> None:
    async def t(env: Env) -> None:
        env.apply(project("h", "/h", env.urls[0], policies=[
            {"type": "request-headers", "remove": ["X-Drop"], "rename": {"X-Old": "X-New"},
             "set": {"X-Env": "prod"}, "add": {"X-Tag": "two"}},
            {"type": "response-headers", "remove": ["X-Backend"], "set": {"Cache-Control": "no-store"},
             "add": {"X-Served-By": "tandem"}}]))
        status, h, body = await env.req("GET", "/h/x", "X-Drop: 1", "X-Old: v", "X-Env: dev", "X-Tag: one")
        assert status == 200
        sent = [(k.lower(), v) for k, v in env.seen()[-1]["headers"]]
        assert ("x-drop" not in dict(sent)) and dict(sent)["x-new"] == "v" and "x-old" not in dict(sent)
        assert [v for k, v in sent if k == "x-env"] == ["prod"]
        assert [v for k, v in sent if k == "x-tag"] == ["one", "two"]
        assert "x-backend" not in h and h["cache-control"] == "no-store" and h["x-served-by"] == "tandem"
        assert json.loads(body)["path"] == "/x"

    run(t)


def test_protected_headers_cannot_be_edited() -> None:
    async def t(env: Env) -> None:
        env.apply(project("h", "/h", env.urls[0], policies=[{"type": "response-headers",
                                                             "remove": ["Content-Length"]}]))
        status, _, body = await env.req("GET", "/h/x")
        assert (status, _code(body)) == (501, "policy_not_supported")

    run(t)


async def _flaky(fail_first: int) -> tuple[asyncio.AbstractServer, list[int], str]:
    """A backend answering 503 to its first `fail_first` requests, then 200."""
    seen: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            seen.append(1)
            code = 503 if len(seen) <= fail_first else 200
            w.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % code)
            await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_retry_idempotent_without_body() -> None:
    async def t(env: Env) -> None:
        server, seen, url = await _flaky(2)
        try:
            env.apply(project("r", "/r", url, policies=[{"type": "retry", "attempts": 2, "backoff": 0.01}]))
            status, _, body = await env.req("GET", "/r/x")
            assert (status, body, len(seen)) == (200, b"ok", 3)  # two 503s dropped, the third answer relayed
            seen.clear()
            status, _, body = await env.req("POST", "/r/x", body=b"data")
            assert (status, len(seen)) == (503, 1)  # a request with a body is never sent twice
            seen.clear()
            status, _, _ = await env.req("PUT", "/r/x")
            assert status == 200 and len(seen) == 3
            seen.clear()
            env.apply(project("r", "/r", url, policies=[{"type": "retry", "attempts": 1, "backoff": 0.01}]))
            status, _, _ = await env.req("GET", "/r/x")
            assert (status, len(seen)) == (503, 2)  # attempts exhausted: the last answer stands
        finally:
            server.close()

    run(t)


def test_retry_on_refused_connection_then_another_target() -> None:
    async def t(env: Env) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        env.apply(project("r", "/r", dead, policies=[{"type": "retry", "attempts": 2, "backoff": 0.01}]))
        status, _, body = await env.req("GET", "/r/x")
        assert (status, _code(body)) == (502, "upstream_unavailable")
        env.apply(project("r", "/r", dead, env.urls[0], policies=[{"type": "retry", "attempts": 2}]))
        for _ in range(4):
            assert (await env.req("GET", "/r/x"))[0] == 200

    run(t)


def test_no_policy_projects_have_no_chain() -> None:
    async def t(env: Env) -> None:
        env.apply(project("p", "/p", env.urls[0]))
        assert env.gw.config.projects["p"].chain is None
        assert (await env.req("GET", "/p/x"))[0] == 200

    run(t)


def test_async_step_with_pipelining_a_large_body_and_a_client_that_leaves() -> None:
    """The first check of a password runs off the loop: requests behind it on the connection wait their
    turn, a body arriving meanwhile is held (and the client paused) until the request is admitted, and a
    client that disconnects during the check leaves nothing behind."""
    async def t(env: Env) -> None:
        env.apply(project("b", "/b", env.urls[0], policies=[{"type": "basic-auth"}]))
        good = base64.b64encode(b"ann:pw-ann").decode()
        body = b"x" * (600 * 1024)  # more than the exchange buffers before a connection is attached
        req = (f"POST /b/one HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {good}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        req += f"GET /b/two HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {good}\r\n\r\n".encode()
        req += b"GET /b/three HTTP/1.1\r\nHost: a\r\n\r\n"
        out = await send_and_read(env.port, req, responses=3)
        assert [r[0] for r in out] == [200, 200, 401]
        first, second = (json.loads(r[2]) for r in out[:2])
        assert (first["path"], first["body_bytes"]) == ("/one", len(body))
        assert first["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert second["path"] == "/two"

        other = base64.b64encode(b"ann:another-try").decode()  # a new pair: checked off the loop again
        r, w = await asyncio.open_connection("127.0.0.1", env.port)
        w.write(f"GET /b/gone HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {other}\r\n\r\n".encode())
        await w.drain()
        w.close()  # gone before the verdict
        await asyncio.sleep(0)
        seen = len(env.seen())
        status, _, body2 = await env.req("GET", "/b/x", f"Authorization: Basic {other}")
        assert (status, _code(body2)) == (401, "invalid_credentials")
        assert len(env.seen()) == seen and not any(s["path"] == "/gone" for s in env.seen())

    run(t)
