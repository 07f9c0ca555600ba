"""The gateway as users run it: AMS and AGS started through the CLI, a real backend.

One home for the module; tests run in file order and share the servers, the
later ones stop and restart them (AMS down, AGS restarted with every AMS down,
PrimaryURL refusing, an AMS answering garbage). Every process is stopped by pid.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ags import FeedServer, raw_request
from tests.support.harness import CliCluster, free_port, logged_requests, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, backend: tuple[str, Path]) -> Iterator[CliCluster]:
    with CliCluster.started(tmp_path_factory.mktemp("ags"), ags_env={"TANDEM_GATEWAY_READ_TIMEOUT": "30"}) as c:
        yield c


def _deploy(c: CliCluster, name: str) -> float:
    r = c.api.post(f"/api/v1/projects/{name}/deploy", json={"environment": "default"})
    assert r.status_code == 202, r.text
    return time.monotonic()


def _create(c: CliCluster, name: str, context: str, *targets: str, **extra: Any) -> None:
    body = {"name": name, "context_path": context, "targets": [{"url": t} for t in targets], **extra}
    r = c.api.post("/api/v1/projects", json=body)
    assert r.status_code == 201, r.text


def test_deploy_redeploy_undeploy(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, log = backend
    _create(cluster, "pets", "/pets", url + "/v1")
    _deploy(cluster, "pets")
    r = wait_for(lambda: (resp := cluster.gateway_get("/pets/dogs?x=1")).status_code == 200 and resp, 5,
                 "deployed project served")
    assert r.json()["path"] == "/v1/dogs" and r.json()["query"] == "x=1"  # the rewritten path reached it
    assert logged_requests(log)[-1]["path"] == "/v1/dogs"
    assert r.headers["x-request-id"]

    r = cluster.api.put("/api/v1/projects/pets", json={"name": "pets", "context_path": "/pets",
                                                       "targets": [{"url": url + "/v2"}]})
    assert r.status_code == 200, r.text
    started = _deploy(cluster, "pets")
    wait_for(lambda: cluster.gateway_get("/pets/dogs").json()["path"] == "/v2/dogs", 1.0, "redeploy served",
             interval=0.01)
    changed_after = time.monotonic() - started

    r = cluster.api.post("/api/v1/projects/pets/undeploy", json={"environment": "default"})
    assert r.status_code == 202, r.text
    wait_for(lambda: cluster.gateway_get("/pets/dogs").status_code == 404, 1.0, "undeploy served", interval=0.01)
    body = cluster.gateway_get("/pets/dogs").json()
    assert body["code"] == "no_route"
    print(f"redeploy visible through the gateway after {changed_after * 1000:.0f} ms")


def _send(port: int, raw: bytes) -> tuple[int, str]:
    status, _, body = raw_request(port, raw)
    import json

    return status, json.loads(body)["code"]


def test_errors_and_refused_requests_never_reach_the_backend(cluster: CliCluster,
                                                             backend: tuple[str, Path]) -> None:
    url, log = backend
    dead = f"http://127.0.0.1:{free_port()}"
    _create(cluster, "down", "/down", dead)
    _create(cluster, "slow", "/slow", url, policies=[{"type": "timeout", "read": 1}])
    _create(cluster, "guarded", "/guarded", url + "/g")
    for name in ("down", "slow", "guarded"):
        _deploy(cluster, name)
    wait_for(lambda: cluster.gateway_get("/guarded/ok").status_code == 200, 5, "projects deployed")

    r = cluster.gateway_get("/down/x")
    assert (r.status_code, r.json()["code"]) == (502, "upstream_unavailable")
    t = time.monotonic()
    r = cluster.gateway_get("/slow/slow?s=5")
    assert (r.status_code, r.json()["code"]) == (504, "upstream_timeout")
    assert time.monotonic() - t < 3

    port = cluster.ports["AGS"][0]
    before = len(logged_requests(log))
    bad = {
        b"POST /guarded/cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /guarded/smuggled HTTP/1.1\r\nHost: a\r\n\r\n": (400, "bad_request"),
        b"POST /guarded/te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n": (400, "bad_request"),
        b"POST /guarded/double-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc":
            (400, "bad_request"),
        b"GET /guarded/malformed HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n": (400, "bad_request"),
        b"GET /guarded/big-header HTTP/1.1\r\nHost: a\r\nX-Big: " + b"h" * 40_000 + b"\r\n\r\n":
            (431, "headers_too_large"),
        b"GET /guarded/many HTTP/1.1\r\nHost: a\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n": (431, "headers_too_large"),
    }
    for raw, expected in bad.items():
        assert _send(port, raw) == expected, raw[:50]
    time.sleep(0.3)
    arrived = [r["path"] for r in logged_requests(log)[before:]]
    assert arrived == [], f"refused requests reached the backend: {arrived}"


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_10mb_upload_and_download_stream_with_bounded_memory(cluster: CliCluster,
                                                             backend: tuple[str, Path]) -> None:
    url, _ = backend
    _create(cluster, "files", "/files", url)
    _deploy(cluster, "files")
    wait_for(lambda: cluster.gateway_get("/files/ok").status_code == 200, 5, "files deployed")
    for _ in range(3):  # warm every worker
        cluster.gateway_get("/files/bytes?n=100000")
    pids = cluster.gateway_pids()
    before = {pid: _vm_hwm_kb(pid) for pid in pids}
    size = 10 * 1024 * 1024
    block = b"u" * 65536

    def upload() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    import hashlib

    r = httpx.post(cluster.gateway_url + "/files/upload", content=upload(), timeout=60, trust_env=False)
    assert r.status_code == 200 and r.json()["body_bytes"] == size  # chunked through, hashed by the backend
    assert r.json()["body_sha256"] == hashlib.sha256(block * (size // len(block))).hexdigest()
    got = 0
    with httpx.stream("GET", cluster.gateway_url + f"/files/bytes?n={size}", timeout=60, trust_env=False) as r:
        assert r.headers["content-length"] == str(size)
        for chunk in r.iter_raw(65536):
            got += len(chunk)
            if got < 2 * 1024 * 1024:
                time.sleep(0.002)  # a slow reader at first: the gateway must pause the backend, not buffer
    assert got == size
    with httpx.stream("GET", cluster.gateway_url + f"/files/bytes?n={size}&chunked=1", timeout=60,
                      trust_env=False) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert sum(len(c) for c in r.iter_bytes()) == size
    growth = {pid: _vm_hwm_kb(pid) - before[pid] for pid in pids}
    assert max(growth.values()) < 6 * 1024, f"peak RSS growth in KiB per process: {growth}"


def test_metrics_and_access_log(cluster: CliCluster) -> None:
    cluster.gateway_get("/files/ok")
    assert cluster.gateway_get("/down/x").json()["code"] == "upstream_unavailable"
    assert cluster.gateway_get("/nowhere").json()["code"] == "no_route"
    wanted = ('tandem_gateway_requests_total{project="files",class="2xx"}',
              'tandem_gateway_requests_total{project="down",class="5xx"}',
              'tandem_gateway_errors_total{project="down",code="upstream_unavailable"}',
              'tandem_gateway_errors_total{project="_no_route",code="no_route"}')
    text = wait_for(lambda: all(w in (t := httpx.get(cluster.ha_url("AGS") + "/metrics", timeout=5).text)
                                for w in wanted) and t, 10, "the counters in /metrics (workers report each second)")
    assert 'tandem_gateway_errors_total{project="files"' not in text  # a 2xx is not an error
    assert 'tandem_gateway_upstream_seconds_bucket{project="files",le="+Inf"}' in text
    import json

    lines = (cluster.profile_dir("AGS") / "run" / "access.log").read_text().splitlines()
    entry = json.loads(lines[-1])
    assert {"ts", "request_id", "status", "project", "duration_ms", "upstream_ms"} <= set(entry)


def test_ams_down_gateway_keeps_serving_then_restarts_from_its_store(cluster: CliCluster) -> None:
    cluster.stop("AMS")
    for _ in range(5):
        assert cluster.gateway_get("/files/ok").status_code == 200
    cluster.stop("AGS")
    t = time.monotonic()
    cluster.start("AGS")  # every AMS is down
    assert cluster.gateway_get("/files/ok").status_code == 200
    assert cluster.gateway_get("/pets/x").status_code == 404  # the undeploy is stored too
    print(f"restarted AGS served its stored configuration {time.monotonic() - t:.2f} s after start")
    assert "config feed:" in cluster.log_text("AGS")  # it tried the AMS, and served anyway


def test_primary_refusing_connections_backup_answers(cluster: CliCluster, backend: tuple[str, Path]) -> None:
    url, _ = backend
    cluster.start("AMS")
    cluster.stop("AGS")
    dead = f"http://127.0.0.1:{free_port()}"
    cluster.set_profile("AGS", f"ha.PrimaryURL={dead}", f"ha.BackupURLs={cluster.ams_url}")
    cluster.start("AGS")
    _create(cluster, "fresh", "/fresh", url)
    _deploy(cluster, "fresh")
    wait_for(lambda: cluster.gateway_get("/fresh/x").status_code == 200, 5, "config through the backup URL")
    with socket.socket() as s:  # the primary really refuses
        assert s.connect_ex(("127.0.0.1", int(dead.rsplit(":", 1)[1]))) != 0


@pytest.mark.parametrize("mode, reason", [("garbage", "not JSON"), ("500", "HTTP 500")])
def test_ams_answering_garbage_or_500_keeps_the_good_configuration(cluster: CliCluster, mode: str,
                                                                   reason: str) -> None:
    with FeedServer() as fake:
        fake.mode = mode
        cluster.stop("AGS")
        cluster.set_profile("AGS", f"ha.PrimaryURL={fake.url}", "ha.BackupURLs=")
        cluster.start("AGS")
        wait_for(lambda: len(fake.polls) >= 2, 10, "the gateway polled the bad AMS")
        for _ in range(3):
            assert cluster.gateway_get("/fresh/x").status_code == 200
            assert cluster.gateway_get("/files/ok").status_code == 200
        wait_for(lambda: reason in cluster.log_text("AGS"), 5, f"the reason ({reason}) in the AGS log")
        metrics = httpx.get(cluster.ha_url("AGS") + "/metrics", timeout=5).text
        if mode == "garbage":
            assert "tandem_gateway_config_rejected_total 0" not in metrics
        cluster.stop("AGS")
        cluster.set_profile("AGS", f"ha.PrimaryURL={cluster.ams_url}")
        cluster.start("AGS")
