"""Cluster-scope rate limit across two real gateways sharing the real Redis.

Two independent AMS+AGS sets started through the CLI deploy the same
project (same name and policy, so the same Redis counter); 1,000 requests
spread over both gateways at a limit of 100 per window: exactly 100 pass,
the rest get 429 `rate_limited`, and the backend sees exactly 100.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.harness import CliCluster, echo_backend, logged_requests, wait_for

REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
WINDOW = 3600


def _redis_up() -> bool:
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[CliCluster]]:
    if not _redis_up():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL} (CI=true: required)")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    cs = [CliCluster(tmp_path_factory.mktemp(f"gw{i}")) for i in range(2)]
    try:
        for c in cs:
            c.start("AMS")
            c.start("AGS")
        yield cs
    finally:
        for c in cs:
            c.close()


def _deploy(c: CliCluster, name: str, url: str) -> None:
    body = {"name": name, "context_path": f"/{name}", "targets": [{"url": url}],
            "policies": [{"type": "rate-limit", "limit": 100, "window": 1, "unit": "hour", "by": "ip",
                          "scope": "cluster", "redis_url": REDIS_URL, "fail": "closed"}]}
    assert c.api.post("/api/v1/projects", json=body).status_code == 201
    r = c.api.post(f"/api/v1/projects/{name}/deploy", json={"environment": "default"})
    dep = r.json()["id"]
    wait_for(lambda: c.api.get(f"/api/v1/deployments/{dep}").json()["status"] == "deployed", 15, "deployed")


def _run(clusters: list[CliCluster], url: str, log: Path) -> tuple[int, list[int], list[str], int] | None:
    name = "rl-" + uuid.uuid4().hex[:10]  # a fresh counter in the shared Redis
    for c in clusters:
        _deploy(c, name, url)
    window = int(time.time()) // WINDOW
    before = len(logged_requests(log))
    clients = [httpx.Client(base_url=c.gateway_url, timeout=10, trust_env=False) for c in clusters]

    def one(i: int) -> tuple[int, str]:
        r = clients[i % 2].get(f"/{name}/x")
        return r.status_code, (r.json().get("code", "") if r.status_code != 200 else "")

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(1000)))
    finally:
        for cl in clients:
            cl.close()
    if int(time.time()) // WINDOW != window:
        return None  # crossed a window boundary: the count legitimately restarted
    passed = sum(1 for s, _ in results if s == 200)
    statuses = sorted({s for s, _ in results})
    codes = sorted({c for s, c in results if s != 200})
    wait_for(lambda: len(logged_requests(log)) - before >= passed, 5, "backend log flushed")
    return passed, statuses, codes, len(logged_requests(log)) - before


def test_two_gateways_share_one_cluster_limit_exactly(clusters: list[CliCluster], tmp_path: Path) -> None:
    with echo_backend(tmp_path / "requests.jsonl", "shared") as (url, _):
        outcome = _run(clusters, url, tmp_path / "requests.jsonl")
        if outcome is None:
            outcome = _run(clusters, url, tmp_path / "requests.jsonl")
        assert outcome is not None
        passed, statuses, codes, received = outcome
        assert passed == 100, outcome
        assert statuses == [200, 429] and codes == ["rate_limited"]
        assert received == 100  # refused requests never reached the backend
