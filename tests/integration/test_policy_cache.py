"""cache through an in-process Gateway on real sockets, in front of a backend that counts
what reaches it and answers with the caching headers a test asks for."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvloop

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tandem.ags.settings import GatewaySettings
from tandem.net.sockets import listen_socket
from tests.support.ags import make_document, project, send_and_read
from tests.support.harness import wait_for_async


class Backend:
    """Answers every GET/HEAD with JSON {n, path, accept, authorization}; the query sets headers:
    cc=<Cache-Control>, cookie=1, etag=<tag>, vary=<Vary>, age=<Age>; size=N (&chunked=1): an N-byte body."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in rest if x)}
                url = urlsplit(target)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                self.hits[url.path] += 1
                out = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Date: Mon, 01 Jan 2024 00:00:00 GMT"]
                for key, name in (("cc", "Cache-Control"), ("etag", "ETag"), ("vary", "Vary"), ("age", "Age")):
                    if key in q:
                        out.append(f"{name}: {q[key]}".encode())
                if "cookie" in q:
                    out.append(b"Set-Cookie: session=1")
                if "size" in q:
                    body = b"z" * int(q["size"])
                else:
                    body = json.dumps({"n": self.hits[url.path], "path": url.path, "accept": headers.get("accept"),
                                       "authorization": headers.get("authorization")}).encode()
                if q.get("chunked") == "1":
                    out.append(b"Transfer-Encoding: chunked")
                    payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 40]), body[i:i + 40])
                                       for i in range(0, len(body), 40)) + b"0\r\n\r\n"
                else:
                    out.append(b"Content-Length: %d" % len(body))
                    payload = body
                writer.write(b"\r\n".join(out) + b"\r\n\r\n" + (b"" if method == "HEAD" else payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Env:
    def __init__(self, gw: Gateway, port: int, backend: Backend, url: str) -> None:
        self.gw, self.port, self.backend, self.url = gw, port, backend, url
        self.revision = 0

    def apply(self, *policies: dict[str, Any]) -> None:
        self.revision += 1
        doc = make_document([project("c", "/c", self.url, policies=list(policies))], self.revision)
        self.gw.apply(validate_document(doc, "default"))

    async def req(self, path: str, extra: bytes = b"", method: bytes = b"GET") -> tuple[int, dict[str, str], bytes]:
        data = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: api.test\r\n" + extra + b"\r\n"
        got: tuple[int, dict[str, str], bytes] = (
            await send_and_read(self.port, data, head_requests=1 if method == b"HEAD" else 0))[0]
        return got


def run(test: Callable[[Env], Awaitable[None]], *policies: dict[str, Any]) -> None:
    async def main() -> None:
        backend = Backend()
        url = await backend.start()
        gw = Gateway(GatewaySettings(access_log=""))
        sock = listen_socket("127.0.0.1", 0)
        await gw.listen(sock)
        env = Env(gw, sock.getsockname()[1], backend, url)
        env.apply(*(policies or ({"type": "cache", "ttl": 60},)))
        try:
            await asyncio.wait_for(test(env), 30)
        finally:
            await gw.drain(1.0)
            backend.close()

    uvloop.run(main())


def test_second_get_is_served_from_the_cache() -> None:
    async def t(env: Env) -> None:
        s1, h1, b1 = await env.req("/c/a?x=1")
        s2, h2, b2 = await env.req("/c/a?x=1")
        assert (s1, s2) == (200, 200) and b1 == b2 and json.loads(b2)["n"] == 1
        assert env.backend.hits["/a"] == 1, "the second GET reached the backend"
        assert h1["x-cache"] == "MISS" and "age" not in h1
        assert h2["x-cache"] == "HIT" and h2["age"] == "0"
        assert h2["content-type"] == "application/json" and int(h2["content-length"]) == len(b2)
        assert h2["x-request-id"] != h1["x-request-id"], "a hit gets its own request id"
        assert h2["date"] != "Mon, 01 Jan 2024 00:00:00 GMT", "the gateway writes its own Date"
        # another query string, another path, another host: other entries
        assert (await env.req("/c/a?x=2"))[1]["x-cache"] == "MISS"
        data = b"GET /c/a?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n"
        assert (await send_and_read(env.port, data))[0][1]["x-cache"] == "MISS"
        assert env.backend.hits["/a"] == 3
        # a redeploy with the same cache policy keeps the entries
        env.apply({"type": "cache", "ttl": 60})
        assert (await env.req("/c/a?x=1"))[1]["x-cache"] == "HIT" and env.backend.hits["/a"] == 3
        # a changed policy starts empty
        env.apply({"type": "cache", "ttl": 61})
        assert (await env.req("/c/a?x=1"))[1]["x-cache"] == "MISS" and env.backend.hits["/a"] == 4

    run(t)


def test_head_is_answered_from_a_get_entry_and_never_stores() -> None:
    async def t(env: Env) -> None:
        status, h, body = await env.req("/c/h", method=b"HEAD")
        assert status == 200 and h["x-cache"] == "MISS" and body == b""
        assert (await env.req("/c/h"))[1]["x-cache"] == "MISS", "a HEAD miss stored something"
        assert env.backend.hits["/h"] == 2
        _, _, full = await env.req("/c/h")
        status, h, body = await env.req("/c/h", method=b"HEAD")
        assert status == 200 and h["x-cache"] == "HIT" and body == b""
        assert int(h["content-length"]) == len(full)
        # the connection is still usable after the HEAD hit: a pipelined GET gets its whole body
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        writer.write(b"HEAD /c/h HTTP/1.1\r\nHost: api.test\r\n\r\nGET /c/h HTTP/1.1\r\nHost: api.test\r\n\r\n")
        head1 = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        head2 = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body2 = await asyncio.wait_for(reader.readexactly(len(full)), 5)
        writer.close()
        assert head1.startswith(b"HTTP/1.1 200") and b"X-Cache: HIT" in head1
        assert head2.startswith(b"HTTP/1.1 200") and b"X-Cache: HIT" in head2 and body2 == full
        assert env.backend.hits["/h"] == 2

    run(t)


def test_vary_headers_split_entries() -> None:
    async def t(env: Env) -> None:
        json_, text = b"Accept: application/json\r\n", b"Accept: text/plain\r\n"
        a1 = await env.req("/c/v", json_)
        b1 = await env.req("/c/v", text)
        a2 = await env.req("/c/v", json_)
        b2 = await env.req("/c/v", text)
        assert [r[1]["x-cache"] for r in (a1, b1, a2, b2)] == ["MISS", "MISS", "HIT", "HIT"]
        assert json.loads(a2[2])["accept"] == "application/json" and json.loads(b2[2])["accept"] == "text/plain"
        assert env.backend.hits["/v"] == 2
        assert (await env.req("/c/v"))[1]["x-cache"] == "MISS", "no Accept is a value of its own"
        # a response that varies on a header the policy does not list is not stored
        await env.req("/c/w?vary=Cookie", json_)
        assert (await env.req("/c/w?vary=Cookie", json_))[1]["x-cache"] == "MISS"
        # one it lists is
        await env.req("/c/w?vary=Accept", json_)
        assert (await env.req("/c/w?vary=Accept", json_))[1]["x-cache"] == "HIT"

    run(t, {"type": "cache", "ttl": 60, "vary": ["Accept"]})


def test_responses_that_may_not_be_stored_and_requests_that_bypass() -> None:
    async def t(env: Env) -> None:
        for query in ("cc=no-store", "cc=private", "cc=no-cache", "cookie=1", "cc=max-age%3D0", "vary=*"):
            first = await env.req(f"/c/n?{query}")
            second = await env.req(f"/c/n?{query}")
            assert first[1]["x-cache"] == second[1]["x-cache"] == "MISS", query
            assert json.loads(second[2])["n"] == json.loads(first[2])["n"] + 1, query
        assert "set-cookie" in (await env.req("/c/n?cookie=1"))[1], "the response itself is untouched"
        # stored, then requests that skip the cache reach the backend
        await env.req("/c/b")
        assert (await env.req("/c/b"))[1]["x-cache"] == "HIT"
        before = env.backend.hits["/b"]
        for extra in (b"Cache-Control: no-cache\r\n", b"Cache-Control: no-store\r\n", b"Pragma: no-cache\r\n",
                      b"Authorization: Bearer abc\r\n", b"Range: bytes=0-3\r\n"):
            r = await env.req("/c/b", extra)
            assert r[1]["x-cache"] == "BYPASS", extra
        assert env.backend.hits["/b"] == before + 5
        r = await env.req("/c/b", b"Authorization: Bearer abc\r\n")
        assert json.loads(r[2])["authorization"] == "Bearer abc", "a bypassed request was answered from cache"

    run(t)


def test_ttl_expiry_and_max_age() -> None:
    async def t(env: Env) -> None:
        await env.req("/c/t")
        assert (await env.req("/c/t"))[1]["x-cache"] == "HIT"

        async def expired() -> bool:
            return (await env.req("/c/t"))[1]["x-cache"] == "MISS"

        await wait_for_async(expired, 5, "the 1 s entry expired")
        assert env.backend.hits["/t"] == 2
        assert (await env.req("/c/t"))[1]["x-cache"] == "HIT", "stored again after the miss"

    run(t, {"type": "cache", "ttl": 1})

    async def t2(env: Env) -> None:
        # max-age below the policy's ttl shortens the entry's life; an upstream Age is already spent
        await env.req("/c/m?cc=max-age%3D1")
        assert (await env.req("/c/m?cc=max-age%3D1"))[1]["x-cache"] == "HIT"

        async def expired() -> bool:
            return (await env.req("/c/m?cc=max-age%3D1"))[1]["x-cache"] == "MISS"

        await wait_for_async(expired, 5, "the max-age=1 entry expired under a 60 s ttl")
        await env.req("/c/g?cc=max-age%3D50&age=20")
        r = await env.req("/c/g?cc=max-age%3D50&age=20")
        assert r[1]["x-cache"] == "HIT" and int(r[1]["age"]) >= 20

    run(t2, {"type": "cache", "ttl": 60})


def test_max_body_bytes() -> None:
    async def t(env: Env) -> None:
        for query, stored in (("size=100", True), ("size=101", False), ("size=100&chunked=1", True),
                              ("size=500&chunked=1", False)):
            _, _, first = await env.req(f"/c/s?{query}")
            status, h, second = await env.req(f"/c/s?{query}")
            assert status == 200 and first == second and len(second) == int(query.split("&")[0][5:]), query
            assert h["x-cache"] == ("HIT" if stored else "MISS"), query
        assert env.backend.hits["/s"] == 6

    run(t, {"type": "cache", "ttl": 60, "max_body_bytes": 100})


def test_max_entries_evicts_the_least_recently_used() -> None:
    async def t(env: Env) -> None:
        for p in ("/c/1", "/c/2", "/c/1", "/c/3"):  # 2 is the least recently used when 3 arrives
            await env.req(p)
        assert (await env.req("/c/1"))[1]["x-cache"] == "HIT"
        assert (await env.req("/c/2"))[1]["x-cache"] == "MISS"

    run(t, {"type": "cache", "ttl": 60, "max_entries": 2})


def test_if_none_match_on_a_hit_is_304() -> None:
    async def t(env: Env) -> None:
        await env.req('/c/e?etag="v1"')
        status, h, body = await env.req('/c/e?etag="v1"', b'If-None-Match: "v0", W/"v1"\r\n')
        assert status == 304 and h["x-cache"] == "HIT" and body == b"" and h["etag"] == '"v1"'
        status, h, body = await env.req('/c/e?etag="v1"', b'If-None-Match: "v2"\r\n')
        assert status == 200 and h["x-cache"] == "HIT" and json.loads(body)["n"] == 1
        assert env.backend.hits["/e"] == 1

    run(t)


def test_response_header_edits_apply_to_hits_too() -> None:
    async def t(env: Env) -> None:
        miss = await env.req("/c/r")
        hit = await env.req("/c/r")
        assert hit[1]["x-cache"] == "HIT"
        for h in (miss[1], hit[1]):
            assert h["x-edited"] == "yes" and "content-type" not in h

    run(t, {"type": "cache", "ttl": 60},
        {"type": "response-headers", "set": {"X-Edited": "yes"}, "remove": ["Content-Type"]})


def test_with_an_auth_policy_entries_are_shared_unless_vary_names_the_credential() -> None:
    import hashlib

    consumers = [{"name": n, "keys": [{"id": n, "sha256": hashlib.sha256(n.encode()).hexdigest()}]}
                 for n in ("alice", "bob")]

    async def t(env: Env) -> None:
        doc = make_document([project("c", "/c", env.url, policies=[
            {"type": "api-key"}, {"type": "cache", "ttl": 60, "vary": ["X-API-Key"]}])], 10, consumers=consumers)
        env.gw.apply(validate_document(doc, "default"))
        assert (await env.req("/c/k"))[0] == 401, "the auth step runs before the lookup"
        assert (await env.req("/c/k", b"X-API-Key: alice\r\n"))[1]["x-cache"] == "MISS"
        assert (await env.req("/c/k", b"X-API-Key: bob\r\n"))[1]["x-cache"] == "MISS"
        assert (await env.req("/c/k", b"X-API-Key: alice\r\n"))[1]["x-cache"] == "HIT"
        assert (await env.req("/c/k", b"X-API-Key: mallory\r\n"))[0] == 401, "a hit still needs a valid key"
        assert env.backend.hits["/k"] == 2

    run(t)
