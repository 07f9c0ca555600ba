"""Policy validation in the AMS, in-process on a real store: every policy type's bad
parameters are a 422 naming the field with nothing written (create, replace,
declarative import); valid documents of every type read back identical; and a bad
policy never reaches a gateway (an in-process GatewayService pulling from the AMS
keeps its applied revision and its behaviour)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from tests.support.ags import send_and_read
from tests.support.ams import InProcessAms
from tests.support.echo import EchoServer
from tests.support.harness import free_port, wait_for_async
from tests.support.host import HostStandIn

BASE: dict[str, Any] = {"name": "pets", "version": "1", "context_path": "/pets",
                        "targets": [{"url": "http://127.0.0.1:9000/v1", "weight": 1}]}

# every type with every parameter given (none left to its default)
FULL: list[dict[str, Any]] = [
    {"type": "api-key", "header": "X-Key", "query_param": "key", "hide_credentials": False},
    {"type": "jwt", "header": "X-Token", "algorithms": ["RS256", "ES256"], "key_claim": "sub",
     "issuer": "https://issuer.example", "audience": "pets", "required_claims": ["exp", "iat"], "leeway": 1.5,
     "jwks_url": "https://issuer.example/.well-known/jwks.json", "jwks_cache_seconds": 60,
     "hide_credentials": True},
    {"type": "basic-auth", "realm": "pets", "hide_credentials": False},
    {"type": "rate-limit", "limit": 100, "window": 5, "unit": "minute", "by": "consumer", "scope": "cluster",
     "fail": "closed", "redis_url": "rediss://:pw@redis.example:6380/2", "redis_timeout": 0.25,
     "headers": False},
    {"type": "quota", "limit": 10_000, "period": "month", "by": "ip"},
    {"type": "ip-filter", "allow": ["10.0.0.0/8", "::1"], "deny": ["10.1.0.0/16"],
     "trusted_proxies": ["127.0.0.1/32", "fd00::/8"]},
    {"type": "cors", "allow_origins": ["https://a.example"], "allow_methods": ["GET", "POST"],
     "allow_headers": ["X-A"], "expose_headers": ["X-B"], "allow_credentials": True, "max_age": 60},
    {"type": "request-headers", "set": {"X-Set": "1"}, "add": {"X-Add": "2"}, "remove": ["X-Gone"],
     "rename": {"X-Old": "X-New"}},
    {"type": "response-headers", "set": {"X-Set": "1"}, "add": {}, "remove": [], "rename": {"Server": "X-Origin"}},
    {"type": "cache", "ttl": 30, "methods": ["GET"], "status_codes": [200, 404], "vary": ["Accept"],
     "max_body_bytes": 4096, "max_entries": 50},
    {"type": "timeout", "connect": 2.0, "read": 10.0},
    {"type": "retry", "attempts": 3, "backoff": 0.1, "on_status": [503], "methods": ["GET", "PUT", "TRACE"]},
    {"type": "delivery", "mode": "direct", "max_attempts": 5, "backoff_initial": 1.0, "backoff_max": 30.0,
     "ttl": 3600, "retention": 7200, "concurrency": 4, "max_messages": 500, "max_bytes": 1048576,
     "max_body_bytes": 4096, "delivered_statuses": [200, 202], "order_by_header": "X-Account"},
]

AUTH = {"type": "api-key"}
# (case, policies, field the 422 names, a word its message must contain)
BAD: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("api-key header", [{"type": "api-key", "header": "X Key"}], "policies[0].header", "pattern"),
    ("api-key query_param", [{"type": "api-key", "query_param": ""}], "policies[0].query_param", "character"),
    ("jwt jwks_url scheme", [{"type": "jwt", "jwks_url": "ftp://keys.example/jwks"}], "policies[0].jwks_url",
     "http"),
    ("jwt jwks_url host", [{"type": "jwt", "jwks_url": "https://"}], "policies[0].jwks_url", "host"),
    ("jwt jwks_cache_seconds", [{"type": "jwt", "jwks_cache_seconds": 0}], "policies[0].jwks_cache_seconds",
     "greater"),
    ("jwt hide_credentials", [{"type": "jwt", "hide_credentials": "yes"}], "policies[0].hide_credentials",
     "boolean"),
    ("basic-auth realm", [{"type": "basic-auth", "realm": 'a"b'}], "policies[0].realm", "pattern"),
    ("rate-limit limit", [{"type": "rate-limit", "limit": 0}], "policies[0].limit", "greater"),
    ("rate-limit limit missing", [{"type": "rate-limit"}], "policies[0].limit", "required"),
    ("rate-limit unit", [{"type": "rate-limit", "limit": 1, "unit": "day"}], "policies[0].unit", "second"),
    ("rate-limit window longer than a day", [{"type": "rate-limit", "limit": 1, "window": 25, "unit": "hour"}],
     "policies[0].window", "day"),
    ("rate-limit window 0", [{"type": "rate-limit", "limit": 1, "window": 0}], "policies[0].window", "greater"),
    ("rate-limit fail", [{"type": "rate-limit", "limit": 1, "fail": "maybe"}], "policies[0].fail", "open"),
    ("rate-limit cluster without redis", [{"type": "rate-limit", "limit": 1, "scope": "cluster"}],
     "policies[0].redis_url", "cluster"),
    ("rate-limit redis_url scheme", [{"type": "rate-limit", "limit": 1, "redis_url": "http://r:6379"}],
     "policies[0].redis_url", "redis://"),
    ("rate-limit redis_url host", [{"type": "rate-limit", "limit": 1, "redis_url": "redis://"}],
     "policies[0].redis_url", "host"),
    ("rate-limit redis_timeout", [{"type": "rate-limit", "limit": 1, "redis_timeout": 6}],
     "policies[0].redis_timeout", "less"),
    ("rate-limit by consumer without auth", [{"type": "rate-limit", "limit": 1, "by": "consumer"}],
     "policies[0].by", "auth policy"),
    ("quota period", [{"type": "quota", "limit": 1, "by": "ip", "period": "year"}], "policies[0].period",
     "minute"),
    ("quota by consumer (default) without auth", [{"type": "cors"}, {"type": "quota", "limit": 1}],
     "policies[1].by", "auth policy"),
    ("ip-filter trusted_proxies", [{"type": "ip-filter", "deny": ["10.0.0.1"], "trusted_proxies": ["proxy"]}],
     "policies[0].trusted_proxies", "CIDR"),
    ("cors max_age", [{"type": "cors", "max_age": -1}], "policies[0].max_age", "greater"),
    ("request-headers rename value", [{"type": "request-headers", "rename": {"X-A": "X B"}}],
     "policies[0].rename", "header name"),
    ("response-headers rename key", [{"type": "response-headers", "rename": {"X:A": "X-B"}}],
     "policies[0].rename", "header name"),
    ("request-headers protected", [{"type": "request-headers", "set": {"X-Forwarded-For": "1.2.3.4"}}],
     "policies[0].set", "gateway writes it"),
    ("request-headers consumer", [{"type": "request-headers", "rename": {"X-Who": "X-Consumer-Name"}}],
     "policies[0].rename", "gateway writes it"),
    ("response-headers framing", [{"type": "response-headers", "remove": ["Content-Length"]}],
     "policies[0].remove", "gateway writes it"),
    ("cache ttl", [{"type": "cache", "ttl": 0}], "policies[0].ttl", "greater"),
    ("cache methods", [{"type": "cache", "ttl": 5, "methods": ["POST"]}], "policies[0].methods[0]", "GET"),
    ("timeout read", [{"type": "timeout", "read": 0}], "policies[0].read", "greater"),
    ("retry POST", [{"type": "retry", "methods": ["GET", "POST"]}], "policies[0].methods", "not idempotent"),
    ("retry PATCH", [{"type": "retry", "methods": ["PATCH"]}], "policies[0].methods", "not idempotent"),
    ("retry CONNECT", [{"type": "retry", "methods": ["CONNECT"]}], "policies[0].methods", "not idempotent"),
    ("delivery mode", [AUTH, {"type": "delivery", "mode": "later"}], "policies[1].mode", "queued"),
]


@pytest.fixture
def ams(tmp_path: Path) -> Iterator[InProcessAms]:
    with InProcessAms(tmp_path / "ams") as a:
        assert a.client.get("/api/v1/health").status_code == 200  # bootstrap before measuring the log
        yield a


def _check_422(r: httpx.Response, field: str, word: str) -> None:
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["field"] == field, err
    assert err["message"].startswith(f"{field}:") and word.lower() in err["message"].lower(), err


@pytest.mark.parametrize(("case", "policies", "field", "word"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_is_422_naming_the_field_and_writes_nothing(ams: InProcessAms, case: str,
                                                               policies: list[dict[str, Any]], field: str,
                                                               word: str) -> None:
    c, h = ams.client, ams.headers
    assert c.post("/api/v1/projects", json=BASE, headers=h).status_code == 201
    before = ams.store.last_lsn()
    stored = c.get("/api/v1/projects/pets", headers=h).json()
    # create
    _check_422(c.post("/api/v1/projects", json={**BASE, "name": "other", "context_path": "/other",
                                                "policies": policies}, headers=h), field, word)
    # replace
    _check_422(c.put("/api/v1/projects/pets", json={**BASE, "policies": policies}, headers=h), field, word)
    # declarative import: the whole document refused
    doc = c.get("/api/v1/export", headers=h).json()
    bad = copy.deepcopy(doc)
    bad["projects"][0]["policies"] = policies
    _check_422(c.post("/api/v1/import", json=bad, headers=h), f"projects[0].{field}", word)
    assert ams.unchanged_since(before), "the change log moved"
    assert c.get("/api/v1/projects/pets", headers=h).json() == stored
    assert c.get("/api/v1/projects/other", headers=h).status_code == 404
    assert c.get("/api/v1/export", headers=h).json() == doc


def test_every_type_with_every_parameter_reads_back_identical(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    r = c.post("/api/v1/projects", json={**BASE, "policies": FULL}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["policies"] == FULL
    assert c.get("/api/v1/projects/pets", headers=h).json()["policies"] == FULL
    # replace with the same and with a smaller set: still exactly what was sent
    assert c.put("/api/v1/projects/pets", json={**BASE, "policies": FULL}, headers=h).json()["policies"] == FULL
    # export -> import -> export keeps them byte for byte
    doc = c.get("/api/v1/export", headers=h).json()
    assert doc["projects"][0]["policies"] == FULL
    assert c.post("/api/v1/import", json=doc, headers=h).status_code == 200
    assert json.dumps(c.get("/api/v1/export", headers=h).json()["projects"], sort_keys=True) == \
        json.dumps(doc["projects"], sort_keys=True)


def test_defaults_are_filled_in_and_stable(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    minimal = [AUTH, {"type": "rate-limit", "limit": 5, "by": "consumer"}, {"type": "quota", "limit": 9},
               {"type": "jwt"}, {"type": "ip-filter", "allow": ["10.0.0.0/8"]}, {"type": "retry"}]
    r = c.post("/api/v1/projects", json={**BASE, "policies": minimal}, headers=h)
    assert r.status_code == 201, r.text
    got = {p["type"]: p for p in r.json()["policies"]}
    assert got["rate-limit"] == {"type": "rate-limit", "limit": 5, "window": 1, "unit": "second", "by": "consumer",
                                 "scope": "node", "fail": "local", "redis_url": None, "redis_timeout": 0.1,
                                 "headers": True}
    assert got["quota"] == {"type": "quota", "limit": 9, "period": "day", "by": "consumer"}
    assert got["jwt"]["jwks_url"] is None and got["jwt"]["jwks_cache_seconds"] == 300
    assert got["jwt"]["hide_credentials"] is False
    assert got["ip-filter"]["trusted_proxies"] == []
    assert got["retry"]["methods"] == ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]
    # what was stored (defaults included) is a valid document itself: sent again, it comes back the same
    again = c.put("/api/v1/projects/pets", json=r.json(), headers=h)
    assert again.status_code == 200 and again.json() == r.json()


def test_openapi_import_carries_no_policies(ams: InProcessAms) -> None:
    """The OpenAPI import path creates a project without policies (there is no way to pass
    one), so it cannot smuggle a bad one in; the result is validated like any project."""
    body = (b'{"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, '
            b'"servers": [{"url": "http://127.0.0.1:9/x"}], "paths": {"/a": {"get": {}}},'
            b' "x-tandem-policies": [{"type": "rate-limit", "limit": 0}]}')
    r = ams.client.post("/api/v1/import/openapi", content=body, headers={**ams.headers,
                                                                        "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["policies"] == []


def _rsa_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_jwt_credentials_key_material(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers

    def consumer(name: str, cred: dict[str, Any]) -> httpx.Response:
        r: httpx.Response = c.post("/api/v1/consumers", json={"name": name, "credentials": {"jwt": [cred]}},
                                   headers=h)
        return r

    assert consumer("jwks", {"key": "https://issuer.example", "algorithm": "RS256"}).status_code == 201
    assert consumer("hs", {"key": "hs-issuer", "secret": "0123456789abcdef"}).status_code == 201
    assert consumer("rs", {"key": "rs-issuer", "algorithm": "RS256", "public_key": _rsa_public_pem()}).status_code \
        == 201
    # a garbage key is refused at the AMS, never sent to a gateway (docs/ams.md)
    _check_422(consumer("rs2", {"key": "rs2", "algorithm": "RS256", "public_key": "-----BEGIN..."}),
               "credentials.jwt[0].public_key", "PEM")
    before = ams.store.last_lsn()
    _check_422(consumer("bad1", {"key": "k1", "algorithm": "RS256", "secret": "0123456789abcdef"}),
               "credentials.jwt[0].secret", "public_key")
    _check_422(consumer("bad2", {"key": "k2", "algorithm": "ES256", "secret": "0123456789abcdef",
                                 "public_key": "pk"}), "credentials.jwt[0].secret", "public_key")
    _check_422(consumer("bad3", {"key": "k3", "algorithm": "HS256", "public_key": "pk"}),
               "credentials.jwt[0].public_key", "secret")
    assert ams.unchanged_since(before)


def test_basic_auth_passwords_are_scrypt_hashes(ams: InProcessAms) -> None:
    from tandem.ams.services.consumers import check_password

    r = ams.client.post("/api/v1/consumers", json={"name": "acme", "credentials": {
        "basic_auth": [{"username": "acme", "password": "correct horse"}]}}, headers=ams.headers)
    assert r.status_code == 201, r.text
    stored = ams.store.get("ams.consumers", "acme")["credentials"]["basic_auth"][0]["password_hash"]  # type: ignore[index]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert check_password("correct horse", stored) and not check_password("correct horsE", stored)
    # an exported scrypt hash imports again
    doc = ams.client.get("/api/v1/export", headers=ams.headers).json()
    assert ams.client.post("/api/v1/import", json=doc, headers=ams.headers).status_code == 200


# ---- acceptance: a bad policy never reaches a gateway ----

async def _get(port: int, path: str, key: str | None) -> tuple[int, bytes]:
    extra = f"X-API-Key: {key}\r\n".encode() if key else b""
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"Connection: close\r\n\r\n"
    (status, _headers, body), *_ = await send_and_read(port, req)
    return status, body


def test_bad_policy_never_reaches_a_gateway(tmp_path: Path) -> None:
    from tandem.ags.gateway_service import GatewayService
    from tandem.ags.settings import settings_from_profile

    with InProcessAms(tmp_path / "ams") as ams, ams.serve() as url:
        async def main() -> None:
            echo = EchoServer("b0")
            eport = await echo.start("127.0.0.1", 0)
            server = HostStandIn.for_ags(tmp_path / "ags", free_port(), url, token=ams.token)
            server.open_store()
            svc = GatewayService(server, settings_from_profile(  # type: ignore[arg-type]
                server.profile, env={"TANDEM_GATEWAY_FEED_BACKOFF_MAX": "0.5"}))
            port = server.profile.server.ClientPort
            try:
                async with httpx.AsyncClient(base_url=url, headers=ams.headers, timeout=10) as api:
                    good = {**BASE, "targets": [{"url": f"http://127.0.0.1:{eport}/v1", "weight": 1}],
                            "policies": [AUTH]}
                    assert (await api.post("/api/v1/projects", json=good)).status_code == 201
                    r = await api.post("/api/v1/consumers", json={"name": "acme"})
                    assert r.status_code == 201, r.text
                    key = (await api.post("/api/v1/consumers/acme/keys")).json()["key"]
                    await svc.start()
                    r = await api.post("/api/v1/projects/pets/deploy", json={"environment": "default"})
                    assert r.status_code == 202, r.text
                    revision = (await api.get("/api/v1/gateway/config?environment=default&revision=0")
                                ).json()["revision"]

                    async def applied() -> int:
                        gws = (await api.get("/api/v1/gateways")).json()
                        return int(next((g.get("applied") or 0 for g in gws if g["name"] == "test-AGS"), 0))

                    await wait_for_async(lambda: _at(applied, revision), 5, f"gateway applied revision {revision}")
                    await wait_for_async(lambda: _is(_get(port, "/pets/dogs", key), 200), 5, "served with the key")
                    assert (await _get(port, "/pets/dogs", None))[0] == 401
                    seen = len(echo.requests)

                    # bad policies: every one refused, nothing stored, no revision
                    for bad in ([AUTH, {"type": "rate-limit", "limit": 1, "scope": "cluster"}],
                                [{"type": "rate-limit", "limit": 1, "by": "consumer"}],
                                [AUTH, {"type": "retry", "methods": ["POST"]}]):
                        r = await api.put("/api/v1/projects/pets", json={**good, "policies": bad})
                        assert r.status_code == 422, r.text
                        assert r.json()["field"].startswith("policies["), r.json()
                    doc = (await api.get("/api/v1/export")).json()
                    doc["projects"][0]["policies"] = [{"type": "retry", "methods": ["PATCH"]}]
                    assert (await api.post("/api/v1/import", json=doc)).status_code == 422
                    assert (await api.get("/api/v1/projects/pets")).json()["policies"] == [
                        {"type": "api-key", "header": "X-API-Key", "query_param": None, "hide_credentials": True}]

                    # for a while (several feed polls' worth): the same revision, the same behaviour
                    loop = asyncio.get_running_loop()
                    end = loop.time() + 1.5
                    while loop.time() < end:
                        feed = (await api.get("/api/v1/gateway/config?environment=default&revision=0")).json()
                        assert feed["revision"] == revision
                        assert await applied() == revision and svc.revision == revision
                        assert (await _get(port, "/pets/dogs", None))[0] == 401
                        await asyncio.sleep(0.1)
                    assert len(echo.requests) == seen, "a request without a key reached the backend"

                    # a deploy of the unchanged project still works and serves the same thing
                    r = await api.post("/api/v1/projects/pets/deploy", json={"environment": "default"})
                    assert r.status_code == 202, r.text
                    await wait_for_async(lambda: _at(applied, revision + 1), 5, "gateway applied the redeploy")
                    assert (await _get(port, "/pets/dogs", key))[0] == 200
                    assert (await _get(port, "/pets/dogs", None))[0] == 401
                    assert echo.requests[-1]["path"] == "/v1/dogs"
            finally:
                if svc.serving:
                    await svc.stop(1.0)
                server.close_store()
                echo.close()

        uvloop.run(asyncio.wait_for(main(), 60))


async def _at(applied: Any, revision: int) -> bool:
    return bool(await applied() >= revision)


async def _is(pending: Any, status: int) -> bool:
    return bool((await pending)[0] == status)


@pytest.mark.parametrize(("hc", "field", "word"), [
    ({"interval": 1, "timeout": 1}, "health_check.timeout", "shorter"),
    ({"path": "health"}, "health_check.path", "pattern"),
    ({"unhealthy": 0}, "health_check.unhealthy", "greater"),
])
def test_health_check_validated(ams: InProcessAms, hc: dict[str, Any], field: str, word: str) -> None:
    c, h = ams.client, ams.headers
    before = ams.store.last_lsn()
    _check_422(c.post("/api/v1/projects", json={**BASE, "health_check": hc}, headers=h), field, word)
    assert ams.unchanged_since(before)
    good = {"path": "/health", "interval": 2, "timeout": 0.5, "healthy": 1, "unhealthy": 2}
    r = c.post("/api/v1/projects", json={**BASE, "health_check": good}, headers=h)
    assert r.status_code == 201 and r.json()["health_check"] == good
