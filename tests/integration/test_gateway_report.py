"""Gateway reports end to end (issue 16), on real sockets: a real AMS app (uvicorn), a real
GatewayService whose Reporter posts to it, real traffic through the gateway to an echo backend.
The AMS alone then shows the gateway's HA status (even while it is passive and never polled) and its
traffic per project; the report route takes gateway tokens and admins only and validates by field."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import uvloop

from tandem.ags.gateway_service import GatewayService
from tandem.ags.settings import settings_from_profile
from tests.support.ams import InProcessAms
from tests.support.echo import EchoServer
from tests.support.harness import free_port, wait_for_async
from tests.support.host import HostStandIn


async def _gateway(api: httpx.AsyncClient, name: str) -> dict[str, Any] | None:
    for g in (await api.get("/api/v1/gateways")).json():
        if g["name"] == name:
            return dict(g)
    return None


async def _pets(api: httpx.AsyncClient, want: int) -> dict[str, Any] | None:
    r = await api.get("/api/v1/traffic", params={"minutes": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["interval"] == 10 and body["minutes"] == 5
    for p in body["projects"]:
        if p["project"] == "pets" and p["totals"]["requests"] >= want:
            return {"body": body, **p}
    return None


def test_the_ams_shows_each_gateways_ha_and_traffic(tmp_path: Path) -> None:
    with InProcessAms(tmp_path / "ams") as ams, ams.serve() as url:
        async def main() -> None:
            echo = EchoServer("b0")
            echo_port = await echo.start("127.0.0.1", 0)
            port = free_port()
            async with httpx.AsyncClient(base_url=url, headers=ams.headers, timeout=10) as api:
                gw_token = (await api.post("/api/v1/gateway-tokens", json={"name": "gw"})).json()["token"]
                host = HostStandIn.for_ags(tmp_path / "ags", port, primary_url=url, token=gw_token)
                host.open_store()
                host.state, host.serving = "Passive", False
                settings = settings_from_profile(host.profile, env={"TANDEM_GATEWAY_INPROCESS": "1"})
                svc = GatewayService(host, settings)  # type: ignore[arg-type]
                try:
                    # passive: it serves nothing and never polls, but it reports
                    await svc.prepare()
                    g = await wait_for_async(lambda: _gateway(api, "test-AGS"), 5, "the passive gateway listed")
                    assert g["live"] is False and g["reported_at"] is not None
                    assert g["ha"]["state"] == "Passive" and g["ha"]["serving"] is False
                    assert g["ha"]["type"] == "none" and g["ha"]["server"] == "test-AGS"

                    r = await api.post("/api/v1/projects", json={
                        "name": "pets", "context_path": "/pets", "targets": [{"url": f"http://127.0.0.1:{echo_port}/v1"}]})
                    assert r.status_code == 201, r.text
                    assert (await api.post("/api/v1/projects/pets/deploy",
                                           json={"environment": "default"})).status_code == 202
                    host.state, host.serving = "Active", True
                    host.history.append({"at": "2026-12-08T00:00:00+00:00", "from": "Passive", "to": "Active",
                                         "epoch": 1, "reason": "peer dead, lock acquired"})
                    await svc.start()
                    await wait_for_async(lambda: svc.revision >= 1, 5, "the deployment applied")

                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as gw:
                        for _ in range(20):
                            assert (await gw.get("/pets/fast")).status_code == 200
                        slow = await asyncio.gather(*(gw.get("/pets/slow", params={"s": "0.3"}) for _ in range(5)))
                        assert [s.status_code for s in slow] == [200] * 5
                        for _ in range(3):
                            assert (await gw.get("/pets/status", params={"code": "503"})).status_code == 503
                        for _ in range(4):
                            assert (await gw.get("/nowhere")).status_code == 404

                    pets = await wait_for_async(lambda: _pets(api, 28), 5, "the traffic reported within ~1 s")
                    totals = pets["totals"]
                    assert totals["requests"] == 28 and totals["classes"] == {"2xx": 25, "5xx": 3}, totals
                    assert totals["p50_ms"] is not None and totals["p50_ms"] < 100, totals  # 23 of 28 are fast
                    assert 250 <= totals["p99_ms"] <= 500, totals  # the slow ones: (250, 500] ms
                    assert totals["rps"] > 0
                    series = pets["series"]
                    assert len(series) == 30 and [s["start"] % 10 for s in series] == [0] * 30
                    assert sum(s["requests"] for s in series) == 28
                    assert all(b["start"] - a["start"] == 10 for a, b in zip(series, series[1:], strict=False))
                    no_route = next(p for p in pets["body"]["projects"] if p["project"] == "_no_route")
                    assert no_route["totals"]["errors"] == {"no_route": 4}
                    assert no_route["totals"]["classes"] == {"4xx": 4}
                    only = (await api.get("/api/v1/traffic", params={"minutes": 1, "project": "pets"})).json()
                    assert [p["project"] for p in only["projects"]] == ["pets"] and len(only["projects"][0]["series"]) == 6

                    g = await wait_for_async(lambda: _gateway(api, "test-AGS"), 5, "the gateway listed")
                    await wait_for_async(lambda: _active(api), 5, "the listing shows the active state")
                    g = await _gateway(api, "test-AGS")
                    assert g is not None and g["ha"]["history"][-1]["reason"] == "peer dead, lock acquired"
                    assert g["ha"]["history"][-1]["from"] == "Passive" and g["applied"] >= 1
                    assert svc.reporter is not None and svc.reporter.sent >= 2 and svc.reporter.failures == 0
                finally:
                    if svc.serving:
                        await svc.stop(1.0)
                    await svc.close()
                    assert svc.reporter_task is None
                    host.close_store()
                    echo.close()

        uvloop.run(main())


async def _active(api: httpx.AsyncClient) -> bool:
    g = await _gateway(api, "test-AGS")
    return bool(g and g["ha"] and g["ha"]["state"] == "Active" and g["live"])


def report(**extra: Any) -> dict[str, Any]:
    return {"environment": "default", "gateway": "gw1", "pair": "p", "applied": 0,
            "ha": {"state": "Active"}, "traffic": {"interval": 10, "buckets": []}, **extra}


def test_the_report_route_takes_gateways_and_admins_validates_and_writes_nothing(tmp_path: Path) -> None:
    with InProcessAms(tmp_path / "ams") as ams:
        c = ams.client
        gw = {"Authorization": f"Bearer {c.post('/api/v1/gateway-tokens', json={'name': 'gw'}, headers=ams.headers).json()['token']}"}
        viewer = c.post("/api/v1/users", headers=ams.headers, json={"name": "v", "role": "viewer"}).json()["token"]
        before = ams.store.last_lsn()
        r = c.post("/api/v1/gateway/report", headers=gw, json=report())
        assert r.status_code == 200 and r.json() == {"known": 0}, r.text
        r = c.post("/api/v1/gateway/report", headers=ams.headers, json=report(gateway="gw2"))
        assert r.status_code == 200, r.text
        # no store write, no audit entry: a report is telemetry (a token's last-use stamp aside)
        assert ams.unchanged_since(before)
        assert not [e for e in c.get("/api/v1/audit", headers=ams.headers).json()["entries"]
                    if "report" in e["target"]]

        bad = report(traffic={"interval": 10, "buckets": [
            {"start": 100, "projects": {"pets": {"requests": 1, "latency": [1, 0]}}}]})
        r = c.post("/api/v1/gateway/report", headers=gw, json=bad)
        assert r.status_code == 422 and r.json()["field"] == "traffic.buckets[0].projects.pets.latency", r.text
        bad = report(traffic={"interval": 10, "buckets": [{"start": 100, "projects": {"no/slash": {
            "requests": 1, "latency": [0] * 16}}}]})
        r = c.post("/api/v1/gateway/report", headers=gw, json=bad)
        assert r.status_code == 422 and "traffic.buckets[0].projects" in r.json()["field"], r.text
        r = c.post("/api/v1/gateway/report", headers=gw, json=report(gateway="a b"))
        assert r.status_code == 422 and r.json()["field"] == "gateway", r.text
        r = c.post("/api/v1/gateway/report", headers=gw, json=report(traffic={"buckets": [
            {"start": 10 * i, "projects": {}} for i in range(41)]}))
        assert r.status_code == 422 and r.json()["field"] == "traffic.buckets", r.text

        r = c.post("/api/v1/gateway/report", headers={"Authorization": f"Bearer {viewer}"}, json=report())
        assert r.status_code == 403 and r.json()["role"] == "admin", r.text
        assert c.get("/api/v1/traffic", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        r = c.get("/api/v1/traffic", headers=gw)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
        assert c.get("/api/v1/gateways", headers=gw).status_code == 403
        assert c.get("/api/v1/traffic?minutes=6", headers=ams.headers).status_code == 422
        listed = {g["name"]: g for g in c.get("/api/v1/gateways", headers=ams.headers).json()}
        assert listed["gw1"]["ha"]["state"] == "Active" and listed["gw1"]["live"] is False
