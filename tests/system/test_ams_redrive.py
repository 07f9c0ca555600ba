"""Redrive through a real AMS process (`tandem server -mode AMS -profile server1
-nobackground`): a gateway held in a long poll on the feed wakes with a
document whose project carries `redrive` under a valid digest; the registry
shows the `queued`/`dead` counts the gateway reported; the counter is in the
store, so it is still there (and keeps counting) after the server restarts."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tandem.model.document import verify_document
from tests.support.harness import Home, Server, wait_for

PROJECT = {"name": "orders", "context_path": "/orders", "targets": [{"url": "http://127.0.0.1:9/v1"}]}
FEED = "/api/v1/gateway/config"


def start(home: Home) -> tuple[Server, httpx.Client]:
    server = home.server("server1/AMS").start()
    server.wait_state("Standalone", "Active", timeout=20)
    token_file = home.path / "profiles" / "server1" / "AMS" / "data" / "admin.token"
    url = f"http://127.0.0.1:{server.client_port}"
    wait_for(lambda: httpx.get(url + "/api/v1/health", timeout=2).status_code == 200 and token_file.exists(),
             10, "admin API up and the admin token written")
    token = token_file.read_text().strip()
    return server, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_redrive_reaches_a_polling_gateway_and_survives_a_restart(home: Home) -> None:
    server, api = start(home)
    with api:
        assert api.post("/api/v1/projects", json=PROJECT).status_code == 201
        r = api.post("/api/v1/projects/orders/deploy", json={"environment": "prod"})
        assert r.status_code == 202 and r.json()["revision"] == 1, r.text
        r = api.post("/api/v1/projects/orders/messages/redrive", json={"environment": "default"})
        assert r.status_code == 409 and r.json()["code"] == "not_deployed", r.text

        held: dict[str, Any] = {}

        def poll() -> None:
            resp = api.get(FEED, params={"environment": "prod", "revision": 1, "wait": 25, "gateway": "gw1",
                                         "applied": 1, "state": "Active", "queued": 3, "dead": 2})
            held.update(status=resp.status_code, doc=resp.json() if resp.status_code == 200 else None)

        t = threading.Thread(target=poll)
        t.start()
        wait_for(lambda: any(g["name"] == "gw1" for g in api.get("/api/v1/gateways").json()), 10,
                 "gw1 registered by its poll")
        (gw1,) = api.get("/api/v1/gateways").json()
        assert (gw1["queued"], gw1["dead"], gw1["applied"], gw1["environment"]) == (3, 2, 1, "prod")
        r = api.post("/api/v1/projects/orders/messages/redrive", json={"environment": "prod"})
        assert r.status_code == 202, r.text
        assert r.json() == {"project": "orders", "environment": "prod", "redrive": 1, "revision": 2}
        t.join(20)
        assert not t.is_alive() and held["status"] == 200, held
        doc = held["doc"]
        assert doc["revision"] == 2 and verify_document(doc) is None
        assert [(p["name"], p["redrive"]) for p in doc["projects"]] == [("orders", 1)]

    server.stop()
    server, api = start(home)
    with api:
        doc = api.get(FEED, params={"environment": "prod", "revision": 0, "wait": 0}).json()
        assert doc["revision"] == 2 and doc["projects"][0]["redrive"] == 1 and verify_document(doc) is None
        r = api.post("/api/v1/projects/orders/messages/redrive", json={"environment": "prod"})
        assert r.json() == {"project": "orders", "environment": "prod", "redrive": 2, "revision": 3}
