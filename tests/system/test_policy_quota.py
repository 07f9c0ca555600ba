"""quota with real `tandem server` processes: the count survives a gateway restart, and a
kill -9 of the active gateway of a replicated pair (the new active continues it exactly:
total passes == limit), because an allowed request is only let through once its count is
committed and on the passive (SPEC section 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.harness import CliCluster, Home, echo_backend, logged_requests, wait_for

TOKEN = "test-admin-token-quota-pair"


def _setup_api(api: httpx.Client, backend: str, limit: int) -> str:
    """A consumer with a key and a deployed project behind api-key + quota; returns the clear key."""
    r = api.post("/api/v1/consumers", json={"name": "ann"})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/consumers/ann/keys")
    assert r.status_code == 201, r.text
    key = str(r.json()["key"])
    project = {"name": "pets", "context_path": "/pets", "targets": [{"url": f"{backend}/v1"}],
               "policies": [{"type": "api-key"}, {"type": "quota", "limit": limit, "period": "day"}]}
    r = api.post("/api/v1/projects", json=project)
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/projects/pets/deploy", json={"environment": "default"})
    assert r.status_code == 202, r.text
    return key


def _get(port: int, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(f"http://127.0.0.1:{port}/pets/dogs", headers=headers, timeout=10, trust_env=False)


def _deployed(port: int) -> Callable[[], Any]:
    def check() -> bool:  # without a key: nothing is counted while we wait
        try:
            r = _get(port, None)
        except httpx.HTTPError:
            return False
        return r.status_code == 401 and r.json()["code"] == "missing_credentials"
    return check


def test_quota_survives_a_gateway_restart(tmp_path: Path) -> None:
    log = tmp_path / "echo.jsonl"
    with echo_backend(log, "quota") as (backend, _), CliCluster(tmp_path / "cluster") as c:
        c.start("AMS")
        c.start("AGS")
        key = _setup_api(c.api, backend, limit=5)
        port = c.ports["AGS"][0]
        wait_for(_deployed(port), 10, "the project deployed to the gateway")
        for left in (4, 3, 2):
            r = _get(port, key)
            assert r.status_code == 200 and r.headers["x-quota-remaining"] == str(left)

        c.stop("AGS")  # SIGTERM by pid; the counts are in its store
        c.start("AGS")
        for left in (1, 0):
            r = _get(port, key)
            assert r.status_code == 200 and r.headers["x-quota-remaining"] == str(left)
        passed = len(logged_requests(log))
        r = _get(port, key)
        assert r.status_code == 429 and r.json()["code"] == "quota_exceeded"
        assert int(r.headers["retry-after"]) > 0 and r.headers["ratelimit-remaining"] == "0"
        assert passed == 5 and len(logged_requests(log)) == 5  # the 6th never reached the backend


def test_quota_survives_a_failover_of_a_replicated_gateway_pair(home: Home, tmp_path: Path) -> None:
    limit = 6
    ams = home.server("haprofile1/primary/AMS")  # alone: Standalone
    ams.start(env={"TANDEM_ADMIN_TOKEN": TOKEN})
    ams.wait_state("Standalone", timeout=10)
    log = tmp_path / "echo.jsonl"
    with echo_backend(log, "quota-pair") as (backend, _), \
            httpx.Client(base_url=ams.prof.client_url, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10, trust_env=False) as api:
        key = _setup_api(api, backend, limit)
        active, passive = home.start_pair("haprofile1", "AGS", env={"TANDEM_GATEWAY_TOKEN": TOKEN})
        wait_for(_deployed(active.client_port), 10, "the active gateway serves the project")
        passed = 0
        for _ in range(3):
            r = _get(active.client_port, key)
            assert r.status_code == 200, r.text
            passed += 1

        active.kill9()  # no clean hand-over: only what the passive stored counts
        passive.wait_state("Standalone", "Active", timeout=10)
        wait_for(_deployed(passive.client_port), 10, "the new active gateway serves the project")
        statuses = []
        for _ in range(limit):
            r = _get(passive.client_port, key)
            statuses.append(r.status_code)
            if r.status_code != 200:
                assert r.status_code == 429 and r.json()["code"] == "quota_exceeded", r.text
                break
            passed += 1
        assert passed == limit, f"{passed} requests passed in total, statuses after the failover: {statuses}"
        assert len(logged_requests(log)) == limit
