"""Redrive and the queued/dead registry counts, in-process on a real store
(tests/support/ams.py): `POST /api/v1/projects/{name}/messages/redrive` bumps
the environment's revision and the project's counter, wakes a held poll, and
the fed document carries the counter under a valid digest; 404/409/422/403;
the counter survives a redeploy, an import and an undeploy (it only grows); the feed's `queued` and `dead` parameters reach `GET /api/v1/gateways`
without committing on every poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from tandem.ams.routes import gateway as gateway_routes
from tandem.ams.services import registry as registry_module
from tandem.model.document import verify_document
from tests.support.ams import InProcessAms
from tests.support.harness import wait_for

PETS = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9000"}]}
ORDERS = {"name": "orders", "context_path": "/orders", "targets": [{"url": "http://127.0.0.1:9001"}]}
FEED = "/api/v1/gateway/config"


@pytest.fixture
def ams(tmp_path: Path) -> Iterator[InProcessAms]:
    with InProcessAms(tmp_path / "ams") as a:
        for project in (PETS, ORDERS):
            assert a.client.post("/api/v1/projects", json=project, headers=a.headers).status_code == 201
        yield a


def redrive(ams: InProcessAms, name: str = "pets", body: Any = None, **kw: Any) -> Any:
    kw.setdefault("headers", ams.headers)
    if body is not None:
        kw["json"] = body
    return ams.client.post(f"/api/v1/projects/{name}/messages/redrive", **kw)


def job(ams: InProcessAms, name: str, action: str = "deploy", env: str = "default") -> dict[str, Any]:
    r = ams.client.post(f"/api/v1/projects/{name}/{action}", json={"environment": env}, headers=ams.headers)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "deployed", "no live gateway: done at once"
    return dict(r.json())


def feed(ams: InProcessAms, **params: Any) -> Any:
    return ams.client.get(FEED, params=params, headers=ams.headers)


def document(ams: InProcessAms, env: str = "default") -> dict[str, Any]:
    r = feed(ams, environment=env, revision=0, wait=0)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert verify_document(doc) is None
    return doc


def fed(doc: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in doc["projects"]}


def test_redrive_bumps_the_revision_and_the_document_carries_the_counter(ams: InProcessAms) -> None:
    job(ams, "pets")
    job(ams, "orders")
    before = document(ams)
    assert before["revision"] == 2 and all("redrive" not in p for p in before["projects"])
    r = redrive(ams, body={"environment": "default"})
    assert r.status_code == 202, r.text
    assert r.json() == {"project": "pets", "environment": "default", "redrive": 1, "revision": 3}
    doc = document(ams)
    assert doc["revision"] == 3 and doc["digest"] != before["digest"]
    assert fed(doc)["pets"]["redrive"] == 1 and "redrive" not in fed(doc)["orders"]
    assert {k: v for k, v in fed(doc)["pets"].items() if k != "redrive"} == fed(before)["pets"]
    # no body means the default environment, as for deploy
    assert redrive(ams).json() == {"project": "pets", "environment": "default", "redrive": 2, "revision": 4}
    assert fed(document(ams))["pets"]["redrive"] == 2
    # the stored snapshot itself stays as deployed: the counter lives beside it
    record = ams.store.get("ams.environments", "default")
    assert record["redrive"] == {"pets": 2} and "redrive" not in record["projects"]["pets"]


def test_a_held_poll_wakes_on_redrive(ams: InProcessAms, monkeypatch: pytest.MonkeyPatch) -> None:
    # the held poll re-checks only when notified (not every SLICE): a redrive must wake it
    monkeypatch.setattr(gateway_routes, "SLICE", 60.0)
    job(ams, "pets")
    result: dict[str, Any] = {}

    def poll() -> None:
        r = feed(ams, environment="default", revision=1, wait=8, gateway="gw1", applied=1)
        result.update(status=r.status_code, body=r.json() if r.status_code == 200 else None,
                      at=time.monotonic())

    t = threading.Thread(target=poll)
    t.start()
    wait_for(lambda: ams.app.state.services.state.polling_now("default"), 5, "the poll is held")
    t0 = time.monotonic()
    assert redrive(ams).status_code == 202
    t.join(15)
    assert result["status"] == 200 and result["body"]["revision"] == 2
    assert fed(result["body"])["pets"]["redrive"] == 1 and verify_document(result["body"]) is None
    assert result["at"] - t0 < 4.0, "woken by the redrive, not by the end of the 8 s wait"


def test_refusals_change_nothing(ams: InProcessAms) -> None:
    job(ams, "pets")
    before = ams.store.last_lsn()
    r = redrive(ams, "nobody")
    assert r.status_code == 404 and r.json()["code"] == "not_found" and "nobody" in r.json()["message"]
    r = redrive(ams, "orders")  # exists, not deployed
    assert r.status_code == 409 and r.json()["code"] == "not_deployed"
    assert "'orders'" in r.json()["message"] and "'default'" in r.json()["message"]
    r = redrive(ams, "pets", {"environment": "staging"})  # deployed elsewhere only
    assert r.status_code == 409 and r.json()["code"] == "not_deployed" and "'staging'" in r.json()["message"]
    for body, field in (({"environment": "no such/env"}, "environment"), ({"environment": 7}, "environment"),
                        ({"environment": "default", "extra": 1}, "extra"), ([], "body")):
        r = redrive(ams, "pets", body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == "invalid" and r.json()["field"] == field, (body, r.json())
    r = ams.client.post("/api/v1/projects/pets/messages/redrive", content=b"{",
                        headers={**ams.headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert redrive(ams, "bad name!").status_code == 422
    assert redrive(ams, headers={}).status_code == 401
    assert ams.unchanged_since(before), "nothing refused was written"
    gw = {"Authorization": "Bearer " + ams.client.post("/api/v1/gateway-tokens", json={"name": "gw1"},
                                                       headers=ams.headers).json()["token"]}
    before = ams.store.last_lsn()
    r = redrive(ams, headers=gw)
    assert r.status_code == 403 and r.json()["code"] == "forbidden", "a gateway token opens only the feed"
    assert ams.unchanged_since(before)
    assert document(ams)["revision"] == 1


def test_the_counter_survives_a_redeploy_an_import_and_an_undeploy(ams: InProcessAms) -> None:
    job(ams, "pets")
    job(ams, "pets", env="staging")
    assert redrive(ams).json()["redrive"] == 1
    assert redrive(ams).json()["redrive"] == 2
    assert redrive(ams, body={"environment": "staging"}).json()["redrive"] == 1
    # a redeploy replaces the snapshot, the counter stays (and keeps counting)
    changed = {**PETS, "version": "2"}
    assert ams.client.put("/api/v1/projects/pets", json=changed, headers=ams.headers).status_code == 200
    job(ams, "pets")
    pets = fed(document(ams))["pets"]
    assert pets["version"] == "2" and pets["redrive"] == 2
    # an import (the counters are not exported) keeps the counters of projects that stay deployed
    exported = ams.client.get("/api/v1/export", headers=ams.headers).json()
    assert "redrive" not in str(exported)
    assert ams.client.post("/api/v1/import", json=exported, headers=ams.headers).status_code == 200
    assert fed(document(ams))["pets"]["redrive"] == 2
    assert redrive(ams).json()["redrive"] == 3
    # an undeploy keeps the counter (it only grows: a gateway's last acted-on value stays below the next)
    job(ams, "pets", "undeploy")
    assert fed(document(ams, "staging"))["pets"]["redrive"] == 1
    assert redrive(ams).status_code == 409
    job(ams, "pets")
    assert fed(document(ams))["pets"]["redrive"] == 3, "a new deployment carries the counter on"
    assert redrive(ams).json()["redrive"] == 4


def test_registry_shows_queued_and_dead_without_a_commit_per_poll(ams: InProcessAms,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def gateways() -> dict[str, Any]:
        return {g["name"]: g for g in ams.client.get("/api/v1/gateways", headers=ams.headers).json()}

    def poll(**params: Any) -> None:
        r = feed(ams, environment="default", revision=0, wait=0, gateway="gw1", **params)
        assert r.status_code == 304, r.text

    poll(state="Active", applied=0)
    assert gateways()["gw1"]["queued"] == 0 and gateways()["gw1"]["dead"] == 0, "0 until reported"
    poll(state="Active", applied=0, queued=5, dead=2)
    gw1 = gateways()["gw1"]
    assert (gw1["queued"], gw1["dead"]) == (0, 0), "queued/dead alone wait for the next refresh"
    # a poll that commits anyway (the state changed) writes them
    before = ams.store.last_lsn()
    poll(state="Passive", applied=0, queued=5, dead=2)
    assert ams.store.last_lsn() > before
    gw1 = gateways()["gw1"]
    assert (gw1["queued"], gw1["dead"], gw1["state"]) == (5, 2, "Passive")
    # new counts alone: no commit within REFRESH ...
    before = ams.store.last_lsn()
    for n in range(5):
        poll(queued=n, dead=1)
    assert ams.unchanged_since(before) and gateways()["gw1"]["queued"] == 5
    # ... and written at the refresh (REFRESH shortened rather than waited for)
    monkeypatch.setattr(registry_module, "REFRESH", 0.0)
    poll(queued=7, dead=1)
    gw1 = gateways()["gw1"]
    assert (gw1["queued"], gw1["dead"], gw1["state"], gw1["applied"]) == (7, 1, "Passive", 0)
    # a poll without them keeps the last reported counts
    poll()
    assert (gateways()["gw1"]["queued"], gateways()["gw1"]["dead"]) == (7, 1)
    for bad in ({"queued": -1}, {"dead": "x"}):
        r = feed(ams, environment="default", revision=0, wait=0, gateway="gw1", **bad)
        assert r.status_code == 422 and r.json()["field"] in ("queued", "dead"), r.text


def test_openapi_documents_redrive_and_the_new_fields(ams: InProcessAms) -> None:
    spec = ams.client.get("/openapi.json").json()
    validate(spec)
    op = spec["paths"]["/api/v1/projects/{name}/messages/redrive"]["post"]
    assert {"202", "404", "409", "422"} <= set(op["responses"])
    feed_params = {p["name"] for p in spec["paths"][FEED]["get"]["parameters"]}
    assert {"queued", "dead"} <= feed_params
    gateway = spec["components"]["schemas"]["Gateway"]["properties"]
    assert {"queued", "dead"} <= set(gateway)
    assert "redrive" in spec["components"]["schemas"]["FeedProject"]["properties"]
