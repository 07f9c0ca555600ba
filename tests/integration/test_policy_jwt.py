"""The jwt policy in an in-process gateway on real sockets: an echo backend, a JWKS server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt as pyjwt
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tandem.ags.compiled_config import validate_document
from tandem.ags.gateway import Gateway
from tandem.ags.policies.jwt import Jwks
from tandem.ags.settings import GatewaySettings
from tandem.net.httpmini import MiniHTTPServer, Request, Response
from tandem.net.sockets import listen_socket
from tests.support.ags import make_document, project, send_and_read
from tests.support.echo import EchoServer
from tests.support.harness import free_port, wait_for_async

SECRET = "integration-secret-" * 4
RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC1 = RSA1.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
CONSUMERS = [
    {"name": "acme", "keys": [], "credentials": {"jwt": [{"key": "acme-hs", "algorithm": "HS256", "secret": SECRET}]}},
    {"name": "globex", "keys": [],
     "credentials": {"jwt": [{"key": "globex-rs", "algorithm": "RS256", "public_key": PUBLIC1}]}},
    {"name": "idp-user", "keys": [], "credentials": {"jwt": [{"key": "https://idp.test"}]}},
]


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def token(iss: str = "acme-hs", key: Any = SECRET, alg: str = "HS256", kid: str | None = None, **claims: Any) -> str:
    body = {"iss": iss, "exp": int(time.time()) + 300, **claims}
    return pyjwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


class JwksServer:
    """A JWKS endpoint on the test's loop: `doc` is what it serves, `hits` counts fetches."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/jwks"
        self.doc: dict[str, Any] = {"keys": []}
        self.status = 200
        self.hits = 0
        self.http: MiniHTTPServer | None = None

    async def start(self) -> None:
        self.http = MiniHTTPServer()
        self.http.route("GET", "/jwks", self.serve)
        await self.http.start("127.0.0.1", self.port)

    async def serve(self, req: Request) -> Response:
        self.hits += 1
        return Response.json(self.doc, self.status)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None


class Env:
    def __init__(self, gw: Gateway, port: int, backend: EchoServer, url: str, jwks: JwksServer) -> None:
        self.gw, self.port, self.backend, self.url, self.jwks = gw, port, backend, url, jwks
        self.revision = 0

    def apply(self, *policies: dict[str, Any]) -> None:
        self.revision += 1
        doc = make_document([project("pets", "/pets", self.url + "/v1", policies=list(policies))], self.revision,
                            consumers=CONSUMERS)
        self.gw.apply(validate_document(doc, "default"))

    async def get(self, tok: str | None = None, extra: bytes = b"", scheme: bytes = b"Bearer ",
                  header: bytes = b"Authorization") -> tuple[int, dict[str, str], Any]:
        auth = b"" if tok is None else header + b": " + scheme + tok.encode() + b"\r\n"
        req = b"GET /pets/x HTTP/1.1\r\nHost: api.test\r\n" + auth + extra + b"\r\n"
        status, headers, body = (await send_and_read(self.port, req))[0]
        return status, headers, json.loads(body)

    def keyset(self, url: str) -> Jwks:
        jw = self.gw.services.state(("jwt-jwks", url), lambda: None)
        assert isinstance(jw, Jwks)
        return jw


def run(test: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        echo = EchoServer("b")
        port = await echo.start("127.0.0.1", 0)
        gw = Gateway(GatewaySettings(access_log=""))
        sock = listen_socket("127.0.0.1", 0)
        await gw.listen(sock)
        jwks = JwksServer()
        await jwks.start()
        env = Env(gw, sock.getsockname()[1], echo, f"http://127.0.0.1:{port}", jwks)
        try:
            await asyncio.wait_for(test(env), 30)
        finally:
            await jwks.stop()
            await gw.drain(1.0)
            echo.close()

    uvloop.run(main())


def seen_headers(env: Env, i: int = -1) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in env.backend.requests[i]["headers"]]


def test_allowed_tokens_reach_the_backend_with_the_consumer_name() -> None:
    async def t(env: Env) -> None:
        env.apply({"type": "jwt"})
        tok = token()
        status, _, body = await env.get(tok, b"X-Consumer-Name: admin\r\n")  # a client cannot claim a consumer
        assert status == 200, body
        h = seen_headers(env)
        assert [v for k, v in h if k == "x-consumer-name"] == ["acme"]
        assert ("authorization", "Bearer " + tok) in h  # not hidden by default
        status, _, _ = await env.get(token("globex-rs", RSA1, "RS256"))
        assert status == 200 and ("x-consumer-name", "globex") in seen_headers(env)

        env.apply({"type": "jwt", "hide_credentials": True, "header": "X-Token"})
        status, _, _ = await env.get(tok, header=b"X-Token", scheme=b"")
        assert status == 200
        h = seen_headers(env)
        assert ("x-consumer-name", "acme") in h and not any(k == "x-token" for k, _ in h)
        status, _, _ = await env.get(tok, header=b"X-Token")  # the Bearer form works in any header
        assert status == 200 and len(env.backend.requests) == 4

    run(t)


def test_refused_tokens_never_reach_the_backend() -> None:
    async def t(env: Env) -> None:
        env.apply({"type": "jwt", "audience": "pets", "algorithms": ["HS256", "RS256"]})
        now = int(time.time())
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cases: list[tuple[str | None, bytes, str]] = [
            (None, b"Bearer ", "missing_credentials"),
            (token(aud="pets"), b"Basic ", "missing_credentials"),
            ("garbage", b"Bearer ", "invalid_credentials"),
            (token(aud="pets", key="wrong-secret-" * 4), b"Bearer ", "invalid_credentials"),
            (token("globex-rs", other, "RS256", aud="pets"), b"Bearer ", "invalid_credentials"),
            (token("nobody", aud="pets"), b"Bearer ", "invalid_credentials"),
            (token(aud="pets", key=SECRET + "x", alg="HS384"), b"Bearer ", "invalid_credentials"),
            (token("globex-rs", SECRET, "HS256", aud="pets"), b"Bearer ", "invalid_credentials"),
            (token(aud="pets", exp=now - 10), b"Bearer ", "token_expired"),
            (token(aud="pets", nbf=now + 600), b"Bearer ", "token_not_yet_valid"),
            (token(aud="elsewhere"), b"Bearer ", "invalid_claims"),
            (token(), b"Bearer ", "invalid_claims"),
        ]
        for tok, scheme, code in cases:
            status, headers, body = await env.get(tok, scheme=scheme)
            assert (status, body["code"]) == (401, code), (tok, body)
            assert body["request_id"] == headers["x-request-id"] and headers["content-type"] == "application/json"
            want = "Bearer" if code == "missing_credentials" else 'Bearer error="invalid_token"'
            assert headers["www-authenticate"] == want
        assert env.backend.requests == []
        status, _, _ = await env.get(token(aud="pets"))
        assert status == 200 and len(env.backend.requests) == 1

    run(t)


def test_jwks_key_rotation_by_kid_and_rate_limited_refetch() -> None:
    async def t(env: Env) -> None:
        env.jwks.doc = {"keys": [jwk(RSA1, "k1")]}
        env.apply({"type": "jwt", "jwks_url": env.jwks.url, "algorithms": ["RS256"]})
        iss = "https://idp.test"
        t1 = token(iss, RSA1, "RS256", "k1")
        status, _, body = await env.get(t1)
        assert status == 200, body
        assert ("x-consumer-name", "idp-user") in seen_headers(env) and env.jwks.hits == 1
        assert (await env.get(t1))[0] == 200 and env.jwks.hits == 1  # cached keys, cached token

        env.jwks.doc = {"keys": [jwk(RSA2, "k2")]}  # the issuer rotates its key
        status, _, body = await env.get(token(iss, RSA2, "RS256", "k2"))
        assert status == 200, body
        assert env.jwks.hits == 2  # the unknown kid fetched the set again
        # the old key is gone, and another unknown kid within 10 s does not fetch again
        status, _, body = await env.get(token(iss, RSA1, "RS256", "k1", jti="fresh"))
        assert (status, body["code"]) == (401, "invalid_credentials")
        status, _, body = await env.get(token(iss, RSA2, "RS256", "k3"))
        assert (status, body["code"]) == (401, "invalid_credentials")
        assert env.jwks.hits == 2
        # a good signature by a known key, but no consumer has that key claim
        status, _, body = await env.get(token("https://other.idp", RSA2, "RS256", "k2"))
        assert (status, body["code"]) == (401, "invalid_credentials")
        # the JWKS key's signature does not work with an HS token claiming the same kid
        status, _, body = await env.get(token(iss, SECRET, "HS256", "k2"))
        assert (status, body["code"]) == (401, "invalid_credentials")
        assert len(env.backend.requests) == 3

    run(t)


def test_jwks_down_with_a_warm_cache_still_serves() -> None:
    async def t(env: Env) -> None:
        env.jwks.doc = {"keys": [jwk(RSA1, "k1")]}
        env.apply({"type": "jwt", "jwks_url": env.jwks.url, "jwks_cache_seconds": 1})
        iss = "https://idp.test"
        assert (await env.get(token(iss, RSA1, "RS256", "k1")))[0] == 200
        await env.jwks.stop()
        jw = env.keyset(env.jwks.url)

        async def refresh_failed() -> bool:  # every request meanwhile is served with the cached keys
            status, _, body = await env.get(token(iss, RSA1, "RS256", "k1", jti=str(time.monotonic())))
            assert status == 200, body
            return jw.error is not None and jw.fetches >= 2
        await wait_for_async(refresh_failed, 10, "a background refresh tried the JWKS and failed")
        assert (await env.get(token(iss, RSA1, "RS256", "k1", n=1)))[0] == 200
        # a kid the cached set does not know while the JWKS is down: the gateway cannot tell, so 503
        status, headers, body = await env.get(token(iss, RSA2, "RS256", "k-new"))
        assert (status, body["code"]) == (503, "auth_unavailable") and "www-authenticate" not in headers
        # back up: the next refresh replaces the set
        env.jwks.doc = {"keys": [jwk(RSA2, "k-new")]}
        await env.jwks.start()
        await wait_for_async(lambda: _status(env, token(iss, RSA2, "RS256", "k-new", jti=str(time.monotonic()))) ,
                             15, "the refreshed set serves the new key")

    run(t)


async def _status(env: Env, tok: str) -> bool:
    return (await env.get(tok))[0] == 200


def test_jwks_cold_and_unreachable_is_503_not_401() -> None:
    async def t(env: Env) -> None:
        dead = f"http://127.0.0.1:{free_port()}/jwks"
        env.apply({"type": "jwt", "jwks_url": dead})
        iss = "https://idp.test"
        for _ in range(3):  # the first fetches and fails; the next within a second do not wait on it again
            status, headers, body = await env.get(token(iss, RSA1, "RS256", "k1"))
            assert (status, body["code"]) == (503, "auth_unavailable"), body
            assert "www-authenticate" not in headers and "could not be fetched" in body["message"]
        assert env.keyset(dead).fetches == 1
        # a missing token is still the client's fault
        status, _, body = await env.get(None)
        assert (status, body["code"]) == (401, "missing_credentials")

        env.jwks.status = 500  # a JWKS that answers, with an error
        env.apply({"type": "jwt", "jwks_url": env.jwks.url})
        status, _, body = await env.get(token(iss, RSA1, "RS256", "k1"))
        assert (status, body["code"]) == (503, "auth_unavailable") and env.jwks.hits == 1
        assert env.backend.requests == []
        env.jwks.status = 200  # it recovers: within the cold retry interval the gateway tries again
        env.jwks.doc = {"keys": [jwk(RSA1, "k1")]}
        await wait_for_async(lambda: _status(env, token(iss, RSA1, "RS256", "k1", jti=str(time.monotonic()))), 10,
                             "served once the JWKS answers")

    run(t)
