"""Reload under load: while wrk runs through the gateway, 20 redeploys of a 5,000-project
configuration cause no non-2xx response (Kong #6811, Tyk #1402)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.harness import CliCluster, echo_backend, wait_for

PROJECTS = 5000
REDEPLOYS = 20
FALLBACK_LOAD = """
import asyncio, signal, sys, httpx
stop = False
def on_int(*_):
    global stop
    stop = True
signal.signal(signal.SIGINT, on_int)
async def main():
    ok = bad = 0
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20), timeout=10) as c:
        async def one():
            nonlocal ok, bad
            while not stop:
                r = await c.get(sys.argv[1])
                ok += r.status_code < 300
                bad += r.status_code >= 300
        await asyncio.gather(*(one() for _ in range(20)))
    print(f"{ok + bad} requests in")
    if bad:
        print(f"Non-2xx or 3xx responses: {bad}")
asyncio.run(main())
"""


def _revision(c: CliCluster) -> int:
    m = re.search(r"^tandem_gateway_config_revision (\d+)", httpx.get(c.ha_url("AGS") + "/metrics").text, re.M)
    return int(m.group(1)) if m else -1


def _load(url: str, seconds: int) -> subprocess.Popen[str]:
    wrk = shutil.which("wrk")
    if wrk is not None:
        return subprocess.Popen([wrk, "-t1", "-c20", f"-d{seconds}s", "--timeout", "10s", url],
                                stdout=subprocess.PIPE, text=True)
    # no wrk on this machine: the same load from a small keep-alive client
    import sys

    return subprocess.Popen([sys.executable, "-c", FALLBACK_LOAD, url], stdout=subprocess.PIPE, text=True)


def test_twenty_redeploys_of_5000_projects_under_load(tmp_path: Path) -> None:
    with echo_backend(None) as (url, _), CliCluster(tmp_path) as c:
        c.start("AMS")
        c.start("AGS")
        projects = [{"name": f"p{i}", "context_path": f"/api{i}", "targets": [{"url": f"{url}/p{i}"}]}
                    for i in range(PROJECTS)]
        doc = {"format": "tandem-ams", "version": 1, "projects": projects,
               "environments": [{"name": "default", "revision": 1, "projects": projects}]}
        r = c.api.post("/api/v1/import", json=doc)
        assert r.status_code == 200, r.text
        wait_for(lambda: c.gateway_get(f"/api{PROJECTS - 1}/x").status_code == 200, 20, "5,000 projects served")
        start_revision = _revision(c)

        load = _load(c.gateway_url + "/api42/items", 60)  # stopped with SIGINT (wrk then prints its summary)
        try:
            time.sleep(1.0)
            t0 = time.monotonic()
            for i in range(REDEPLOYS):
                body = {"name": "p1", "context_path": "/api1", "targets": [{"url": f"{url}/v{i}"}]}
                assert c.api.put("/api/v1/projects/p1", json=body).status_code == 200
                assert c.api.post("/api/v1/projects/p1/deploy", json={}).status_code == 202
                wait_for(lambda i=i: c.gateway_get("/api1/x").json()["path"] == f"/v{i}/x", 10,
                         f"redeploy {i} served", interval=0.02)
            reload_time = time.monotonic() - t0
            time.sleep(0.5)
        finally:
            load.send_signal(signal.SIGINT)
            out, _ = load.communicate(timeout=30)
        assert _revision(c) >= start_revision + REDEPLOYS
        print(out)
        print(f"{REDEPLOYS} redeploys of {PROJECTS} projects applied in {reload_time:.1f} s under load")
        assert "Non-2xx or 3xx responses" not in out, out
        assert "Socket errors" not in out, out
        requests = re.search(r"(\d+) requests", out)
        assert requests and int(requests.group(1)) > 1000, out
