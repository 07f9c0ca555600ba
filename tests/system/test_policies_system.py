"""Policies through real processes: AMS and AGS started through the CLI, an echo backend.

Consumers, keys and projects are made through the admin API and deployed;
each policy's allowed case, its refused cases (status and JSON `code`) and
what the backend received (or that it received nothing) are checked. The
`timeout` policy is covered by test_ags_system.py; jwt, rate-limit, quota
and cache have modules of their own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import CliCluster, free_port, logged_requests, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    with CliCluster.started(tmp_path_factory.mktemp("policies")) as c:
        yield c


def _get(c: CliCluster, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    return httpx.request(method, c.gateway_url + path, headers=headers, timeout=10)


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["code"]


def _received(log: Path, since: int) -> list[dict[str, Any]]:
    return logged_requests(log)[since:]


def _headers(req: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in req["headers"]}


def test_api_key_allowed_refused_and_revoked(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    assert cluster.api.post("/api/v1/consumers", json={"name": "acme"}).status_code == 201
    issued = cluster.api.post("/api/v1/consumers/acme/keys").json()
    cluster.deploy("keyed", "/keyed", url + "/k", [{"type": "api-key"}])
    before = len(logged_requests(log))
    assert _code(_get(cluster, "/keyed/x")) == (401, "missing_credentials")
    assert _code(_get(cluster, "/keyed/x", **{"X-API-Key": "tk_not-a-key"})) == (401, "invalid_credentials")
    assert _received(log, before) == []
    r = _get(cluster, "/keyed/x", **{"X-API-Key": issued["key"], "X-Consumer-Name": "someone-else"})
    assert r.status_code == 200, r.text
    got = _received(log, before)
    assert len(got) == 1 and got[0]["path"] == "/k/x"
    h = _headers(got[0])
    assert h["x-consumer-name"] == "acme" and "x-api-key" not in h
    assert cluster.api.delete(f"/api/v1/consumers/acme/keys/{issued['id']}").status_code == 204
    wait_for(lambda: _get(cluster, "/keyed/x", **{"X-API-Key": issued["key"]}).status_code == 401, 10,
             "revoked key refused")
    assert len(_received(log, before)) == 1


def test_basic_auth(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    r = cluster.api.post("/api/v1/consumers", json={
        "name": "bob", "credentials": {"basic_auth": [{"username": "bob", "password": "correct horse"}]}})
    assert r.status_code == 201, r.text
    cluster.deploy("basic", "/basic", url, [{"type": "basic-auth", "realm": "shop"}])
    before = len(logged_requests(log))
    r = _get(cluster, "/basic/x")
    assert _code(r) == (401, "missing_credentials") and 'realm="shop"' in r.headers["www-authenticate"]
    wrong = base64.b64encode(b"bob:wrong").decode()
    assert _code(_get(cluster, "/basic/x", Authorization=f"Basic {wrong}")) == (401, "invalid_credentials")
    assert _received(log, before) == []
    good = base64.b64encode(b"bob:correct horse").decode()
    for _ in range(3):
        assert _get(cluster, "/basic/x", Authorization=f"Basic {good}").status_code == 200
    got = _received(log, before)
    assert len(got) == 3 and _headers(got[0])["x-consumer-name"] == "bob"
    assert "authorization" not in _headers(got[0])


def test_ip_filter(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    cluster.deploy("nolocal", "/nolocal", url, [{"type": "ip-filter", "deny": ["127.0.0.0/8", "::1/128"]}])
    cluster.deploy("office", "/office", url, [{"type": "ip-filter", "allow": ["10.8.0.0/16"],
                                                 "trusted_proxies": ["127.0.0.1/32"]}])
    before = len(logged_requests(log))
    assert _code(_get(cluster, "/nolocal/x")) == (403, "ip_forbidden")
    assert _code(_get(cluster, "/office/x")) == (403, "ip_forbidden")
    assert _code(_get(cluster, "/office/x", **{"X-Forwarded-For": "10.8.1.1, 192.0.2.1"})) == (403, "ip_forbidden")
    assert _received(log, before) == []
    assert _get(cluster, "/office/x", **{"X-Forwarded-For": "10.8.1.1"}).status_code == 200
    got = _received(log, before)
    assert len(got) == 1 and _headers(got[0])["x-forwarded-for"] == "10.8.1.1, 127.0.0.1"


def test_cors(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    cluster.deploy("web", "/web", url, [{"type": "cors", "allow_origins": ["https://shop.example"],
                                          "allow_methods": ["GET", "POST"], "max_age": 60}])
    before = len(logged_requests(log))
    r = _get(cluster, "/web/x", "OPTIONS", Origin="https://shop.example", **{"Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://shop.example"
    assert r.headers["access-control-allow-methods"] == "GET, POST" and r.headers["access-control-max-age"] == "60"
    r = _get(cluster, "/web/x", "OPTIONS", Origin="https://other.example",
             **{"Access-Control-Request-Method": "GET"})
    assert _code(r) == (403, "cors_forbidden")
    r = _get(cluster, "/web/x", "OPTIONS", Origin="https://shop.example",
             **{"Access-Control-Request-Method": "DELETE"})
    assert _code(r) == (403, "cors_forbidden")
    assert _received(log, before) == []  # preflights are answered at the gateway
    r = _get(cluster, "/web/x", Origin="https://shop.example")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
    assert _headers(_received(log, before)[0])["origin"] == "https://shop.example"


def test_request_and_response_headers(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    cluster.deploy("hdr", "/hdr", url, [
        {"type": "request-headers", "set": {"X-Tenant": "blue"}, "remove": ["X-Debug"]},
        {"type": "response-headers", "remove": ["X-Backend"], "add": {"X-Frame-Options": "DENY"}}])
    before = len(logged_requests(log))
    r = _get(cluster, "/hdr/x", **{"X-Debug": "1", "X-Tenant": "red"})
    assert r.status_code == 200 and "x-backend" not in r.headers and r.headers["x-frame-options"] == "DENY"
    h = _headers(_received(log, before)[0])
    assert h["x-tenant"] == "blue" and "x-debug" not in h


def test_retry_then_give_up(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    dead = f"http://127.0.0.1:{free_port()}"
    body = {"name": "flaky", "context_path": "/flaky", "targets": [{"url": dead}, {"url": url}],
            "policies": [{"type": "retry", "attempts": 2, "backoff": 0.01}]}
    assert cluster.api.post("/api/v1/projects", json=body).status_code == 201
    r = cluster.api.post("/api/v1/projects/flaky/deploy", json={"environment": "default"})
    assert r.status_code == 202
    wait_for(lambda: _get(cluster, "/flaky/x").status_code == 200, 10, "flaky deployed")
    for _ in range(4):  # one target refuses connections: every request still succeeds
        assert _get(cluster, "/flaky/x").status_code == 200
    before = len(logged_requests(log))
    r = _get(cluster, "/flaky/status?code=503")
    assert r.status_code == 503
    assert len(_received(log, before)) == 3  # the first try and two retries reached the live backend
    before = len(logged_requests(log))
    r = httpx.post(cluster.gateway_url + "/flaky/status?code=503", content=b"body", timeout=10)
    assert r.status_code == 503 and len(_received(log, before)) == 1  # a body is never sent twice


def test_active_health_check_takes_a_failing_target_out(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    dead = f"http://127.0.0.1:{free_port()}"
    body = {"name": "hc", "context_path": "/hc", "targets": [{"url": url}, {"url": dead}],
            "health_check": {"path": "/health", "interval": 0.2, "timeout": 0.1, "healthy": 1, "unhealthy": 2}}
    assert cluster.api.post("/api/v1/projects", json=body).status_code == 201, body
    assert cluster.api.post("/api/v1/projects/hc/deploy", json={"environment": "default"}).status_code == 202
    wait_for(lambda: f"health: target {dead} of hc is down" in cluster.log_text("AGS"), 10,
             "the dead target reported down by the health checks")
    before = len(logged_requests(log))
    for _ in range(4):
        assert _get(cluster, "/hc/x").status_code == 200
    # every request reached the live target (the probes of the live target land in the same log: not counted)
    assert [r["path"] for r in _received(log, before) if r["path"] != "/health"] == ["/x"] * 4
    assert any(r["path"] == "/health" for r in logged_requests(log))  # the live target was probed too
