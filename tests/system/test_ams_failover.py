"""[ams] acceptance: "if the active AMS dies mid-deployment the new active resumes it".

A replicated AMS pair (haprofile1, sync replication), no AGS process: gateway
g1 is played by this test through the real config feed. A deployment with a
live gateway stays `in_progress` until that gateway reports `applied >=
revision` (deployments.py), so one long poll as g1 first makes the deployment
wait for it. Then the active is SIGKILLed while the job is `in_progress`; the
new active must hold the job as it was (same id, same revision, g1 pending),
serve the deployed project on the feed, and its deployment worker must record
`deployed` once g1 reports the revision to it. Meanwhile a writer creates
consumers across the failover, switching between the two URLs: every write
that got a 201 must be on the new active (and on the restarted old one).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.support.harness import Home, Server, http_get, wait_for

PAIR = "haprofile1"
TOKEN = "test-admin-token-ams-failover"
ENV = {"TANDEM_ADMIN_TOKEN": TOKEN}
HDR = {"Authorization": f"Bearer {TOKEN}"}
PROJECT = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9/v1"}]}


def url(srv: Server) -> str:
    return str(srv.prof.client_url)


def both_in_sync(home: Home) -> bool:
    return len(home.in_sync(PAIR, "AMS")) == 2


def start_pair(home: Home) -> tuple[Server, Server]:
    return home.start_pair(PAIR, "AMS", env=ENV)


def digest(srv: Server) -> dict[str, Any] | None:
    code, body = http_get(f"{srv.ha}/ha/digest", timeout=5)
    return body if code == 200 and isinstance(body, dict) else None


def stores_equal(a: Server, b: Server) -> bool:
    da, db = digest(a), digest(b)
    return bool(da and db and da["digest"] == db["digest"] and da["lsn"] == db["lsn"])


def feed(c: httpx.Client, srv: Server, revision: int, applied: int, wait: float) -> httpx.Response:
    """One config-feed poll as gateway g1 (registers it as live for 30 s)."""
    params: dict[str, str | int | float] = {"environment": "default", "revision": revision, "wait": wait,
                                            "gateway": "g1", "pair": "p", "state": "Active",
                                            "applied": applied}
    return c.get(f"{url(srv)}/api/v1/gateway/config", params=params, headers=HDR)


def deployment(c: httpx.Client, srv: Server, dep_id: str) -> dict[str, Any]:
    r = c.get(f"{url(srv)}/api/v1/deployments/{dep_id}", headers=HDR)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def stored_status(c: httpx.Client, srv: Server, dep_id: str) -> str | None:
    """The status as stored (the list does not derive `deployed` from the gateways as the view does)."""
    r = c.get(f"{url(srv)}/api/v1/deployments", headers=HDR)
    assert r.status_code == 200, r.text
    return next((d["status"] for d in r.json() if d["id"] == dep_id), None)


def names(c: httpx.Client, srv: Server, what: str) -> set[str]:
    r = c.get(f"{url(srv)}/api/v1/{what}", headers=HDR)
    assert r.status_code == 200, r.text
    return {x["name"] for x in r.json()}


class Writer(threading.Thread):
    """Creates consumers one by one, failing over between the two URLs like a client would."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.acked: list[str] = []
        self.ambiguous: list[str] = []
        self.other: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        with httpx.Client(timeout=httpx.Timeout(3.0, connect=0.3)) as c:
            while not self.halt.is_set() and i < 5000:
                name = f"w{i:05d}"
                i += 1
                deadline = time.monotonic() + 20
                attempt = 0
                while time.monotonic() < deadline and not self.halt.is_set():
                    base = self.urls[attempt % 2]
                    attempt += 1
                    try:
                        r = c.post(f"{base}/api/v1/consumers", json={"name": name}, headers=HDR)
                        code = r.status_code
                    except httpx.ConnectError:
                        time.sleep(0.02)  # refused: nothing happened, try the peer
                        continue
                    except httpx.HTTPError as exc:
                        # sent, no answer: it may or may not exist
                        self.ambiguous.append(f"{name}:{type(exc).__name__}")
                        break
                    if code == 201:
                        self.acked.append(name)
                    elif code == 409:
                        self.ambiguous.append(f"{name}:409")  # a retry of an unanswered one that did land
                    elif code == 503:  # not active / not durable: not acknowledged
                        time.sleep(0.02)
                        continue
                    else:
                        self.other.append(f"{name}:{code}")
                    break

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def test_active_dies_mid_deployment_new_active_resumes_it(home: Home) -> None:
    p, s = start_pair(home)
    with httpx.Client(timeout=10) as c:
        # acknowledged writes before anything happens
        r = c.post(f"{url(p)}/api/v1/projects", json=PROJECT, headers=HDR)
        assert r.status_code == 201, r.text
        before = [f"before{i:02d}" for i in range(20)]
        for n in before:
            r = c.post(f"{url(p)}/api/v1/consumers", json={"name": n}, headers=HDR)
            assert r.status_code == 201, r.text

        # gateway g1 polls once: it is live now, so a deployment waits for it
        r = feed(c, p, revision=0, applied=0, wait=1)
        assert r.status_code in (200, 304), r.text
        r = c.post(f"{url(p)}/api/v1/projects/pets/deploy", json={"environment": "default"}, headers=HDR)
        assert r.status_code == 202, r.text
        dep = r.json()
        dep_id, revision = dep["id"], dep["revision"]
        assert dep["status"] == "in_progress" and isinstance(revision, int) and revision >= 1, dep
        view = deployment(c, p, dep_id)
        assert view["status"] == "in_progress", view
        assert [(g["name"], g["status"]) for g in view["gateways"]] == [("g1", "pending")], view

        writer = Writer([url(p), url(s)])
        writer.start()
        try:
            wait_for(lambda: len(writer.acked) >= 20, 20, "writes flowing on the first active")
            p.kill9()  # dies with the deployment in progress
            s.wait_state("Standalone", "Active", timeout=10)
            acked_at_takeover = len(writer.acked)
            wait_for(lambda: len(writer.acked) >= acked_at_takeover + 20, 20,
                     "writes flowing on the new active")

            # the new active holds the job as it was: same revision, still waiting for g1
            view = deployment(c, s, dep_id)
            assert view["status"] == "in_progress" and view["revision"] == revision, view
            assert [(g["name"], g["status"]) for g in view["gateways"]] == [("g1", "pending")], view
            assert stored_status(c, s, dep_id) == "in_progress"
            # ... and serves the deployed project on the feed (consumer writes raise the
            # environment's revision too, so the document's revision is at least the job's)
            r = feed(c, s, revision=0, applied=0, wait=0)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["revision"] >= revision and [x["name"] for x in doc["projects"]] == ["pets"], doc

            # g1 reports the job's revision applied to the new active: its worker completes the job
            r = feed(c, s, revision=revision, applied=revision, wait=0)
            assert r.status_code in (200, 304), r.text
            wait_for(lambda: stored_status(c, s, dep_id) == "deployed", 10,
                     "the new active's worker records the deployment deployed")
            view = deployment(c, s, dep_id)
            assert view["status"] == "deployed" and view["revision"] == revision, view
            assert view["error"] is None, view
            assert [(g["name"], g["status"]) for g in view["gateways"]] == [("g1", "applied")], view
        finally:
            writer.stop()
        assert not writer.is_alive()

        # no acknowledged write was lost across the failover
        report = (f"acknowledged={len(writer.acked)} ambiguous={writer.ambiguous} "
                  f"other={writer.other[:5]}")
        print(report)
        assert len(writer.acked) >= 40 and not writer.other, report
        present = names(c, s, "consumers")
        lost = [n for n in [*before, *writer.acked] if n not in present]
        assert lost == [], f"lost {lost[:10]}; {report}"
        assert "pets" in names(c, s, "projects")

        # the old active returns as passive and holds the same store, the deployment included
        p.start(env=ENV)
        p.wait_state("Passive", timeout=30)
        wait_for(lambda: both_in_sync(home), 20, "returning server recorded in sync")
        wait_for(lambda: stores_equal(p, s), 20, "both stores equal")
