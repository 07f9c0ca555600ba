"""cache through real processes: AMS and AGS started through the CLI, a real echo backend
logging every request it receives. A hit never reaches the backend. One gateway worker
process: the cache is per process, so with N workers a key is fetched up to N times."""

from __future__ import annotations

from pathlib import Path

from tests.support.harness import CliCluster, echo_backend, logged_requests, wait_for


def test_a_cache_hit_does_not_reach_the_backend(tmp_path: Path) -> None:
    log = tmp_path / "backend.jsonl"
    with echo_backend(log, "real") as (url, _), CliCluster(tmp_path / "c", workers=1) as c:
        c.start("AMS")
        c.start("AGS")
        r = c.api.post("/api/v1/projects", json={
            "name": "cached", "context_path": "/cached", "targets": [{"url": url + "/v1"}],
            "policies": [{"type": "cache", "ttl": 60, "vary": ["Accept"]}]})
        assert r.status_code == 201, r.text
        assert c.api.post("/api/v1/projects/cached/deploy", json={"environment": "default"}).status_code == 202

        first = wait_for(lambda: (x := c.gateway_get("/cached/items?page=1")).status_code == 200 and x, 10,
                         "the cached project served")
        assert first.headers["x-cache"] == "MISS"
        seen = len(logged_requests(log))
        assert logged_requests(log)[-1]["path"] == "/v1/items"

        for _ in range(5):
            hit = c.gateway_get("/cached/items?page=1")
            assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
            assert hit.content == first.content  # the backend's echo of the first request, byte for byte
            assert int(hit.headers["age"]) >= 0 and hit.headers["x-request-id"] != first.headers["x-request-id"]
        assert len(logged_requests(log)) == seen, "a cache hit reached the backend"

        # another Accept value is another entry: it goes to the backend once
        other = c.gateway_get("/cached/items?page=1", headers={"Accept": "text/plain"})
        assert other.headers["x-cache"] == "MISS" and len(logged_requests(log)) == seen + 1
        assert c.gateway_get("/cached/items?page=1", headers={"Accept": "text/plain"}).headers["x-cache"] == "HIT"
        # a request that asks for a fresh answer gets one
        fresh = c.gateway_get("/cached/items?page=1", headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-cache"] == "BYPASS" and len(logged_requests(log)) == seen + 2
        assert fresh.json()["path"] == "/v1/items"
