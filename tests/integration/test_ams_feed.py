"""The AMS side of the config feed and durable deployments, in-process on a real
store: long poll (immediate on a revision mismatch, 304 after `wait`, woken by a
deploy), the digest, the gateway registry, per-gateway deployment status, and a
pending job left by a dead active resumed by the next one."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.ams.services import deployments as deployments_module
from tandem.model.document import verify_document
from tandem.store import Op
from tests.support.ams import InProcessAms
from tests.support.harness import wait_for

PROJECT = {"name": "pets", "context_path": "/pets", "targets": [{"url": "http://127.0.0.1:9000"}]}
FEED = "/api/v1/gateway/config"


@pytest.fixture
def ams(tmp_path: Path) -> Iterator[InProcessAms]:
    with InProcessAms(tmp_path / "ams") as a:
        assert a.client.post("/api/v1/projects", json=PROJECT, headers=a.headers).status_code == 201
        yield a


def feed(ams: InProcessAms, **params: Any) -> Any:
    return ams.client.get(FEED, params=params, headers=ams.headers)


def deploy(ams: InProcessAms, env: str = "default") -> dict[str, Any]:
    r = ams.client.post("/api/v1/projects/pets/deploy", json={"environment": env}, headers=ams.headers)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/deployments/{r.json()['id']}"
    job: dict[str, Any] = r.json()
    return job


def test_mismatch_answers_at_once_with_a_verifiable_document(ams: InProcessAms) -> None:
    deploy(ams)
    t0 = time.monotonic()
    r = feed(ams, environment="default", revision=0, wait=30)
    assert time.monotonic() - t0 < 1.0
    doc = r.json()
    assert r.status_code == 200 and doc["revision"] == 1 and doc["environment"] == "default"
    assert [p["name"] for p in doc["projects"]] == ["pets"]
    assert verify_document(doc) is None
    assert verify_document({**doc, "revision": 2}) is not None
    assert verify_document({**doc, "projects": []}).startswith("digest mismatch")  # type: ignore[union-attr]


def test_same_revision_is_304_after_wait(ams: InProcessAms) -> None:
    t0 = time.monotonic()
    r = feed(ams, environment="default", revision=0, wait=1)
    elapsed = time.monotonic() - t0
    assert r.status_code == 304 and r.content == b""
    assert 0.9 <= elapsed < 3.0, elapsed


def test_a_held_poll_wakes_on_deploy(ams: InProcessAms) -> None:
    result: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        r = feed(ams, environment="default", revision=0, wait=20, gateway="gw1")
        result.update(status=r.status_code, body=r.json(), elapsed=time.monotonic() - t0)

    started = time.monotonic()
    t = threading.Thread(target=poll)
    t.start()
    wait_for(lambda: ams.app.state.services.state.polling_now("default"), 5, "the poll is held")
    assert "status" not in result
    t0 = time.monotonic()
    deploy(ams)
    t.join(10)
    assert result["status"] == 200 and result["body"]["revision"] == 1
    assert time.monotonic() - t0 < 2.0, "woken by the deploy, not by the 20 s wait"
    assert result["elapsed"] >= t0 - started - 0.1, "held until the deploy"


def test_other_environment_does_not_wake_a_poll(ams: InProcessAms) -> None:
    deploy(ams, "staging")
    t0 = time.monotonic()
    assert feed(ams, environment="default", revision=0, wait=1).status_code == 304
    assert time.monotonic() - t0 >= 0.9


def test_registry_and_deployment_status_per_gateway(ams: InProcessAms) -> None:
    h = ams.headers
    # two gateways of the environment are live (polled just now)
    for name in ("gw-a", "gw-b"):
        assert feed(ams, environment="default", revision=0, wait=0, gateway=name, pair="haprofile1",
                    state="Active", applied=0).status_code == 304
    job = deploy(ams)
    assert job["status"] == "in_progress" and job["revision"] == 1
    view = ams.client.get(f"/api/v1/deployments/{job['id']}", headers=h).json()
    assert {g["name"]: g["status"] for g in view["gateways"]} == {"gw-a": "pending", "gw-b": "pending"}
    # gw-a fetches and applies revision 1
    assert feed(ams, environment="default", revision=0, gateway="gw-a", applied=0).json()["revision"] == 1
    feed(ams, environment="default", revision=1, wait=0, gateway="gw-a", applied=1, state="Active")
    view = ams.client.get(f"/api/v1/deployments/{job['id']}", headers=h).json()
    assert view["status"] == "in_progress"
    assert {g["name"]: g["status"] for g in view["gateways"]} == {"gw-a": "applied", "gw-b": "pending"}
    gateways = {g["name"]: g for g in ams.client.get("/api/v1/gateways", headers=h).json()}
    assert gateways["gw-a"]["applied"] == 1 and gateways["gw-a"]["in_sync"] and gateways["gw-a"]["live"]
    assert gateways["gw-b"]["pair"] == "haprofile1" and not gateways["gw-b"]["in_sync"]
    feed(ams, environment="default", revision=1, wait=0, gateway="gw-b", applied=1)
    # the worker records `deployed` in the store
    wait_for(lambda: ams.store.get("ams.deployments", job["id"])["status"] == "deployed", 5, "job deployed")
    assert ams.store.scan("ams.open-jobs") == []


def test_no_live_gateway_means_deployed_at_once(ams: InProcessAms) -> None:
    job = deploy(ams)
    assert job["status"] == "deployed" and job["gateways"] == []
    assert ams.client.get(f"/api/v1/deployments/{job['id']}", headers=ams.headers).json()["status"] == "deployed"


def test_gateways_that_do_not_apply_fail_the_job(ams: InProcessAms, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployments_module, "APPLY_TIMEOUT", 0.5)
    feed(ams, environment="default", revision=0, wait=0, gateway="stuck", applied=0)
    job = deploy(ams)
    assert job["status"] == "in_progress"
    wait_for(lambda: ams.store.get("ams.deployments", job["id"])["status"] == "failed", 5, "job failed")
    assert "stuck" in ams.store.get("ams.deployments", job["id"])["error"]


def test_consumer_key_reaches_the_feed(ams: InProcessAms) -> None:
    deploy(ams)
    ams.client.post("/api/v1/consumers", json={"name": "acme"}, headers=ams.headers)
    key = ams.client.post("/api/v1/consumers/acme/keys", headers=ams.headers).json()
    doc = feed(ams, environment="default", revision=1, wait=0).json()
    assert doc["revision"] == 3, "creating a consumer and issuing a key each bump the revision"
    (consumer,) = doc["consumers"]
    assert consumer["keys"] == [{"id": key["id"], "sha256": hashlib.sha256(key["key"].encode()).hexdigest()}]


def test_a_pending_job_left_by_a_dead_active_is_resumed(tmp_path: Path) -> None:
    folder = tmp_path / "ams"
    with InProcessAms(folder) as first:
        first.client.post("/api/v1/projects", json=PROJECT, headers=first.headers)
        snapshot = first.store.get("ams.projects", "pets")
        # what DeploymentService.start commits before it executes; the active "dies" here
        job = {"id": "dep-0000000000001-abcdef", "project": "pets", "environment": "default",
               "action": "deploy", "status": "pending", "revision": None, "snapshot": snapshot, "error": None,
               "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "2026-01-01T00:00:00.000000Z"}
        first.store.commit([Op("ams.deployments", job["id"], job), Op("ams.open-jobs", job["id"], {})])
    with InProcessAms(folder) as second:  # the new active: same store, a new process's app
        second.client.get("/api/v1/gateways", headers=second.headers)  # any request starts the worker
        wait_for(lambda: second.store.get("ams.deployments", job["id"])["status"] == "deployed", 5, "resumed")
        assert second.store.get("ams.environments", "default")["revision"] == 1
        doc = second.client.get(FEED, params={"revision": 0}, headers=second.headers).json()
        assert [p["name"] for p in doc["projects"]] == ["pets"]
