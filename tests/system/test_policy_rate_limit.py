"""rate-limit through real processes: AMS and AGS started through the CLI, an echo backend, projects
made through the admin API and deployed. Allowed requests carry RateLimit-* and reach the backend;
the one over the limit gets 429 `rate_limited` with Retry-After and never does."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.harness import CliCluster, logged_requests

REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HOUR = 3600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    # one worker process (two workers sharing a node's count: test_node_limit_is_one_budget_for_all_workers)
    with CliCluster.started(tmp_path_factory.mktemp("ratelimit"), workers=1) as c:
        yield c


def _get(c: CliCluster, path: str, **headers: str) -> httpx.Response:
    return httpx.get(c.gateway_url + path, headers=headers, timeout=5, trust_env=False)


def _in_one_window(attempt: Callable[[str], None]) -> None:
    """Run `attempt(fresh project name)`; once more if an hour boundary passed meanwhile."""
    for _ in range(2):
        before = int(time.time()) // HOUR
        attempt(f"rl{uuid.uuid4().hex[:8]}")
        if int(time.time()) // HOUR == before:
            return
    raise AssertionError("two runs crossed an hour boundary")


def _check_limit(c: CliCluster, log: Path, path: str, limit: int, **headers: str) -> None:
    before = len(logged_requests(log))
    for left in range(limit - 1, -1, -1):
        r = _get(c, path + "/x", **headers)
        assert r.status_code == 200, r.text
        assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == (str(limit), str(left))
        assert 1 <= int(r.headers["ratelimit-reset"]) <= HOUR
        assert r.json()["path"] == "/x"  # it reached the backend
    assert len(logged_requests(log)) == before + limit
    r = _get(c, path + "/over", **headers)
    assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= HOUR and r.headers["ratelimit-remaining"] == "0"
    assert r.headers["x-request-id"] == r.json()["request_id"]
    time.sleep(0.2)  # give a wrongly forwarded request time to show up in the backend's log
    assert len(logged_requests(log)) == before + limit
    assert all(req["path"] != "/over" for req in logged_requests(log))


def test_node_limit_per_ip_and_per_consumer(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend

    def attempt(name: str) -> None:
        path = f"/{name}"
        cluster.deploy(name, path, url, [{"type": "rate-limit", "limit": 3, "window": 1, "unit": "hour"}])
        _check_limit(cluster, log, path, 3)

    _in_one_window(attempt)

    keys = {}
    for who in ("acme", "globex"):
        assert cluster.api.post("/api/v1/consumers", json={"name": who}).status_code == 201
        keys[who] = cluster.api.post(f"/api/v1/consumers/{who}/keys").json()["key"]

    def per_consumer(name: str) -> None:
        path = f"/{name}"
        cluster.deploy(name, path, url, [{"type": "api-key"}, {"type": "rate-limit", "limit": 2, "window": 1,
                                                                   "unit": "hour", "by": "consumer"}])
        r = _get(cluster, path + "/x")  # refused by the auth step before it is counted
        assert (r.status_code, r.json()["code"]) == (401, "missing_credentials")
        _check_limit(cluster, log, path, 2, **{"X-API-Key": keys["acme"]})
        r = _get(cluster, path + "/x", **{"X-API-Key": keys["globex"]})  # a budget of its own
        assert (r.status_code, r.headers["ratelimit-remaining"]) == (200, "1")

    _in_one_window(per_consumer)


def test_cluster_limit_in_redis(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    try:
        r: Any = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        r.ping()
    except (redis.RedisError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} unreachable: {exc} (CI=true: this test must run)")
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    url, log = backend

    def attempt(name: str) -> None:
        path = f"/{name}"
        cluster.deploy(name, path, url, [{"type": "rate-limit", "limit": 3, "window": 1, "unit": "hour",
                                             "scope": "cluster", "redis_url": REDIS_URL, "fail": "closed"}])
        try:
            _check_limit(cluster, log, path, 3)
            keys = list(r.scan_iter(match=f"tandem:rl:{name}:*"))
            assert len(keys) == 1 and int(r.get(keys[0]) or 0) == 4  # the refused request was counted too, once
        finally:
            for k in r.scan_iter(match=f"tandem:rl:{name}:*"):
                r.delete(k)

    _in_one_window(attempt)


def test_node_limit_is_one_budget_for_all_workers(tmp_path: Path, backend: tuple[str, Path]) -> None:
    """With Workers = 2 a client's connections land on either worker: node scope still lets `limit`
    requests through per node, not `limit` per worker process."""
    url, log = backend
    with CliCluster.started(tmp_path, workers=2) as c:
        def attempt(name: str) -> None:
            path = f"/{name}"
            c.deploy(name, path, url, [{"type": "rate-limit", "limit": 10, "window": 1, "unit": "hour"}])
            before = len(logged_requests(log))
            statuses, workers = [], set()
            for _ in range(40):  # a new connection each time: SO_REUSEPORT spreads them over the workers
                r = _get(c, path + "/x")
                statuses.append(r.status_code)
                workers.add(r.headers["x-request-id"].split("-")[0])  # each worker has its own id prefix
            assert len(workers) == 2, workers  # both workers answered
            assert statuses == [200] * 10 + [429] * 30
            assert len(logged_requests(log)) - before == 10

        _in_one_window(attempt)
