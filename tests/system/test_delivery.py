"""Queued delivery through real `tandem server` processes (SPEC section 5, `delivery`; docs/delivery.md).

An AMS and an AGS (two worker processes: messages reach the server process's
queue over the control socket) started through the CLI, an echo backend that
logs what it receives; for failover a replicated AGS pair with sync
replication, killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.harness import (
    CliCluster,
    Home,
    echo_cmd,
    free_port,
    logged_requests,
    port_open,
    stop_process,
    wait_for,
)

TOKEN = "test-admin-token-delivery"


def _policy(**kw: Any) -> dict[str, Any]:
    return {"type": "delivery", "mode": "queued", "backoff_initial": 0.05, "backoff_max": 0.2, **kw}


def _deploy(api: httpx.Client, name: str, url: str, **policy: Any) -> None:
    project = {"name": name, "context_path": f"/{name}", "targets": [{"url": url}], "policies": [_policy(**policy)]}
    r = api.post("/api/v1/projects", json=project)
    assert r.status_code == 201, r.text
    r = api.post(f"/api/v1/projects/{name}/deploy", json={"environment": "default"})
    assert r.status_code == 202, r.text


def _serving(port: int, name: str) -> bool:
    """The project is deployed and queued: an over-long Idempotency-Key is refused by the queue step
    (400, nothing stored); an undeployed path is 404."""
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/{name}/probe", content=b"", timeout=2, trust_env=False,
                       headers={"Idempotency-Key": "k" * 300})
    except httpx.HTTPError:
        return False
    return r.status_code == 400 and "Idempotency-Key" in r.json()["message"]


def _post(port: int, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=15, trust_env=False)


def _message(port: int, location: str) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}{location}", timeout=5, trust_env=False)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _received(log: Path, key: str) -> list[dict[str, Any]]:
    return [r for r in logged_requests(log) if dict(r["headers"]).get("Idempotency-Key") == key]


@contextmanager
def _echo_on(port: int, log: Path, name: str = "echo") -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(echo_cmd(port, name, log=log), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port, timeout=1), 15, f"echo backend on {port}")
        yield proc
    finally:
        stop_process(proc, 15)


def test_accepted_messages_are_delivered_retried_deduplicated_and_bounded(tmp_path: Path) -> None:
    log = tmp_path / "echo.jsonl"
    port = free_port()
    with _echo_on(port, log), CliCluster.started(tmp_path / "cluster") as c:
        backend = f"http://127.0.0.1:{port}"
        _deploy(c.api, "orders", f"{backend}/v1", max_body_bytes=2000)
        _deploy(c.api, "tiny", f"http://127.0.0.1:{free_port()}", max_messages=3, max_attempts=1000)
        gw = c.ports["AGS"][0]
        wait_for(lambda: _serving(gw, "orders") and _serving(gw, "tiny"), 15, "both projects deployed")

        # accept -> delivered: the backend sees the body, the headers and the client's Idempotency-Key
        body = b'{"order": 42}'
        r = _post(gw, "/orders/new?x=1", body, **{"Idempotency-Key": "order-42", "X-Tenant": "t1",
                                                  "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        assert r.headers["location"] == f"/_tandem/messages/{mid}" == r.json()["location"]
        wait_for(lambda: _message(gw, r.headers["location"])["state"] == "delivered", 15, "delivered")
        (got,) = _received(log, "order-42")
        h = dict(got["headers"])
        assert got["method"] == "POST" and got["path"] == "/v1/new" and got["query"] == "x=1"
        assert got["body_sha256"] == hashlib.sha256(body).hexdigest() and got["body_bytes"] == len(body)
        assert h["X-Tenant"] == "t1" and h["Content-Type"] == "application/json" and h["X-Tandem-Message-Id"] == mid
        view = _message(gw, r.headers["location"])
        assert view["attempts"] == 1 and view["last_status"] == 200 and view["project"] == "orders"

        # the same Idempotency-Key again: the first message's id, nothing new delivered
        again = _post(gw, "/orders/new?x=1", body, **{"Idempotency-Key": "order-42"})
        assert again.status_code == 202 and again.json()["id"] == mid and again.json()["duplicate"] is True

        # without a key the message id is the Idempotency-Key; a backend failing twice: delivered on the 3rd
        f = _post(gw, "/orders/flaky?fail=2", b"x" * 100)
        assert f.status_code == 202, f.text
        fid = f.json()["id"]
        wait_for(lambda: _message(gw, f.headers["location"])["state"] == "delivered", 15, "flaky delivered")
        assert _message(gw, f.headers["location"])["attempts"] == 3
        assert [dict(x["headers"])["X-Tandem-Attempt"] for x in _received(log, fid)] == ["1", "2", "3"]

        # one body over the project's max_body_bytes: 413, nothing stored
        big = _post(gw, "/orders/big", b"y" * 2001)
        assert big.status_code == 413 and big.json()["code"] == "payload_too_large", big.text

        # a full queue (the target is down: nothing leaves it): 503 queue_full with Retry-After
        ids = []
        for i in range(3):
            t = _post(gw, "/tiny/x", b"m%d" % i)
            assert t.status_code == 202, t.text
            ids.append(t.json()["id"])
        full = _post(gw, "/tiny/x", b"m3")
        assert full.status_code == 503 and full.json()["code"] == "queue_full", full.text
        assert int(full.headers["retry-after"]) > 0
        for mid_ in ids:  # nothing accepted was dropped: each is still there, being retried
            v = _message(gw, f"/_tandem/messages/{mid_}")
            assert v["state"] in ("queued", "delivering"), v

        metrics = httpx.get(f"http://127.0.0.1:{c.ports['AGS'][1]}/metrics", timeout=5, trust_env=False).text
        assert 'tandem_delivery_queue_depth{project="tiny"} 3' in metrics, metrics
        assert 'tandem_delivery_duplicates_total{project="orders"} 1' in metrics
        assert 'tandem_delivery_refused_total{project="tiny",reason="queue_full"} 1' in metrics
        assert 'tandem_delivery_refused_total{project="orders",reason="payload_too_large"}' in metrics


def test_dead_after_max_attempts_then_redrive_from_the_ams_delivers(tmp_path: Path) -> None:
    log = tmp_path / "echo.jsonl"
    port = free_port()  # nothing listens there yet: the backend is down
    with CliCluster.started(tmp_path / "cluster") as c:
        _deploy(c.api, "jobs", f"http://127.0.0.1:{port}", max_attempts=2)
        gw = c.ports["AGS"][0]
        wait_for(lambda: _serving(gw, "jobs"), 15, "deployed")
        r = _post(gw, "/jobs/run", b"payload")
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        wait_for(lambda: _message(gw, loc)["state"] == "dead", 15, "dead after max_attempts")
        v = _message(gw, loc)
        assert v["attempts"] == 2 and "2 attempts used up" in v["reason"] and v["last_error"], v
        wait_for(lambda: any(g.get("dead") == 1 for g in c.api.get("/api/v1/gateways").json()), 40,
                 "the AMS shows the gateway's dead message")

        with _echo_on(port, log):  # the backend is back; an operator redrives the project's dead
            rd = c.api.post("/api/v1/projects/jobs/messages/redrive", json={"environment": "default"})
            assert rd.status_code == 202, rd.text
            wait_for(lambda: _message(gw, loc)["state"] == "delivered", 20, "redriven and delivered")
            assert len(_received(log, r.json()["id"])) == 1


def test_a_new_active_delivers_what_the_killed_active_accepted(home: Home, tmp_path: Path) -> None:
    """Accepted while the backend is down, the active killed -9: the passive takes over and delivers
    every accepted message; the old active, back as passive, delivers nothing from its stale copy."""
    ams = home.server("haprofile1/primary/AMS")
    ams.start(env={"TANDEM_ADMIN_TOKEN": TOKEN})
    ams.wait_state("Standalone", timeout=10)
    log = tmp_path / "echo.jsonl"
    port = free_port()
    with httpx.Client(base_url=ams.prof.client_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
                      trust_env=False) as api:
        _deploy(api, "pay", f"http://127.0.0.1:{port}", backoff_initial=0.2, backoff_max=0.5, max_attempts=1000)
        active, passive = home.start_pair("haprofile1", "AGS", env={"TANDEM_GATEWAY_TOKEN": TOKEN})
        wait_for(lambda: _serving(active.client_port, "pay"), 15, "deployed on the active")
        accepted = []
        for i in range(40):
            r = _post(active.client_port, "/pay/charge", b"charge-%d" % i, **{"Idempotency-Key": f"c{i}"})
            assert r.status_code == 202, r.text
            accepted.append(f"c{i}")
        active.kill9()
        passive.wait_state("Standalone", "Active", timeout=10)
        with _echo_on(port, log):
            wait_for(lambda: all(_received(log, k) for k in accepted), 30,
                     "every accepted message delivered by the new active")
            active.start(env={"TANDEM_GATEWAY_TOKEN": TOKEN})  # the former active returns: passive
            active.wait_state("Passive", timeout=15)
            r = _post(passive.client_port, "/pay/charge", b"after", **{"Idempotency-Key": "after"})
            assert r.status_code == 202, r.text
            wait_for(lambda: _received(log, "after"), 15, "delivered")
        got = logged_requests(log)
        keys = [dict(x["headers"])["Idempotency-Key"] for x in got]
        assert set(keys) == {*accepted, "after"}, "nothing delivered that was not accepted"
        assert len(keys) == len(set(keys)), "no message delivered twice: none was in flight at the kill"
