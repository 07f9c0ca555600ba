"""Replicated AMS pair, the admin API as the writer: no acknowledged write is lost
over crashes and failovers (rule 4), catch-up, rule 5 with writes, rule 6 kept aside,
and frames that must be refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tandem.config import load_profile, set_profile_values
from tandem.ha.backchannel import AUTH_HEADER, sign_request
from tandem.store import SqliteStore
from tests.support.harness import Home, Server, Watcher, http_get, run_cli, wait_for

PAIR = "haprofile1"
TOKEN = "test-admin-token-replication"
ENV = {"TANDEM_ADMIN_TOKEN": TOKEN}
HDR = {"Authorization": f"Bearer {TOKEN}"}


def start_pair(home: Home) -> tuple[Server, Server]:
    return home.start_pair(PAIR, "AMS", env=ENV)


def both_in_sync(home: Home) -> bool:
    return len(home.in_sync(PAIR, "AMS")) == 2


def url(srv: Server) -> str:
    return str(srv.prof.client_url)


def create(client: httpx.Client, base: str, name: str) -> int:
    return client.post(f"{base}/api/v1/consumers", json={"name": name}, headers=HDR).status_code


def digest(srv: Server) -> dict[str, object] | None:
    code, body = http_get(f"{srv.ha}/ha/digest", timeout=5)
    return body if code == 200 else None


def in_sync(a: Server, b: Server) -> bool:
    da, db = digest(a), digest(b)
    return bool(da and db and da["digest"] == db["digest"] and da["lsn"] == db["lsn"])


def consumers(srv: Server) -> set[str]:
    r = httpx.get(f"{url(srv)}/api/v1/consumers", headers=HDR, timeout=10)
    assert r.status_code == 200, r.text
    return {c["name"] for c in r.json()}


def test_no_acknowledged_write_lost_over_repeated_kill9(home: Home) -> None:
    p, s = start_pair(home)
    servers = {url(p): p, url(s): s}
    acked: list[str] = []
    ambiguous: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        urls = list(servers)
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=0.3)) as client:
            while not stop.is_set() and i < 5000:
                name = f"c{i:05d}"
                i += 1
                for attempt in range(40):  # the client fails over between the two URLs
                    base = urls[attempt % 2]
                    try:
                        code = create(client, base, name)
                    except httpx.ConnectError:
                        time.sleep(0.02)
                        continue  # refused: nothing happened, try the peer
                    except httpx.HTTPError:
                        ambiguous.append(name)  # sent, no answer: may or may not exist
                        break
                    if code == 201:
                        acked.append(name)
                        break
                    if code == 409:  # a retry of an ambiguous one that did land
                        ambiguous.append(name)
                        break
                    if code == 503:  # not active / not durable: not acknowledged
                        time.sleep(0.02)
                        continue
                    refused.append(f"{name}:{code}")
                    break

    watcher = Watcher([p, s])
    watcher.start()
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for _round in range(4):
            wait_for(lambda n=len(acked): len(acked) >= n + 30, 20, "writes flowing")
            active = p if p.active_code() == 200 else s
            other = s if active is p else p
            active.kill9()
            other.wait_state("Standalone", "Active", timeout=5)
            wait_for(lambda n=len(acked): len(acked) >= n + 20, 20, "writes flowing after failover")
            active.start(env=ENV)
            active.wait_state("Passive", timeout=20)
            wait_for(lambda: both_in_sync(home), 20, "returning server recorded in sync")
    finally:
        stop.set()
        t.join(30)
        watcher.stop()
    watcher.check()
    wait_for(lambda: in_sync(p, s), 20, "both stores equal")
    active = p if p.active_code() == 200 else s
    present = consumers(active)
    lost = [n for n in acked if n not in present]
    report = f"acknowledged={len(acked)} lost={len(lost)} ambiguous={len(ambiguous)} other={refused[:5]}"
    print(report)
    (home.path.parent / "replication-report.txt").write_text(report)
    assert len(acked) > 100
    assert lost == [], report
    assert not refused, report
    # the passive holds the same store: switch over and read there too
    wait_for(lambda: (st := active.status()) and st["peer"]["state"] == "Passive", 10, "peer Passive")
    r = run_cli(home.path, "ha", "switchover", "-mode", "AMS", "-profile", f"{PAIR}/primary")
    assert r.returncode == 0, r.stderr
    other = s if active is p else p
    assert set(acked) <= consumers(other)


def test_catch_up_10000_changes(home: Home) -> None:
    p, s = start_pair(home)
    s.stop()
    p.wait_state("Standalone", timeout=5)
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=10, limits=httpx.Limits(max_connections=4)) as c:
        codes = list(pool.map(lambda i: create(c, url(p), f"bulk{i:05d}"), range(10_000)))
    from collections import Counter

    assert codes.count(201) == 10_000, Counter(codes)
    target = digest(p)
    assert target is not None
    t0 = time.monotonic()
    s.start(env=ENV)
    s.wait_state("Passive", timeout=60)
    took = time.monotonic() - t0
    wait_for(lambda: in_sync(p, s), 30, "digests equal after catch-up")
    out = s.output()
    assert "Waiting -> PassiveSync" in out and "PassiveSync -> Passive" in out, out[-2000:]
    (home.path.parent / "catchup.txt").write_text(f"10000 changes caught up in {took:.2f} s")
    print(f"catch-up of 10,000 changes: {took:.2f} s")


def test_rule5_with_writes_nothing_lost(home: Home) -> None:
    p, s = start_pair(home)
    with httpx.Client(timeout=5) as c:
        assert create(c, url(p), "before") == 201
        s.kill9()
        p.wait_state("Standalone", timeout=5)
        alone = [f"alone{i}" for i in range(20)]
        assert all(create(c, url(p), n) == 201 for n in alone)
    p.kill9()
    s.start(env=ENV)
    st = s.wait_state("Waiting", timeout=10)
    assert "may miss acknowledged writes" in st["waiting_reason"] and p.status() is None
    assert p.prof.server.Name in st["waiting_reason"]
    p.start(env=ENV)
    p.wait_state("Active", "Standalone", timeout=10)
    s.wait_state("Passive", timeout=20)
    wait_for(lambda: in_sync(p, s), 10, "in sync")
    assert {"before", *alone} <= consumers(p)


def test_rule6_async_divergent_copy_kept(home: Home) -> None:
    """The old active holds a tail the new active never saw (here: it served alone,
    died, and an operator forced the stale peer active, which then took other
    writes at the same lsns). Returning, it keeps its copy aside and resyncs."""
    for half in ("primary", "secondary"):
        set_profile_values(home.path, f"{PAIR}/{half}/AMS", ["ha.ReplicationMode=async"])
    p, s = start_pair(home)
    with httpx.Client(timeout=5) as c:
        assert create(c, url(p), "shared1") == 201
        wait_for(lambda: in_sync(p, s), 5, "shared1 replicated")
        s.kill9()
        p.wait_state("Standalone", timeout=5)
        assert create(c, url(p), "only-on-old-active") == 201
        lock = p.status()["lock"]  # acknowledged while serving alone: the peer was recorded out of sync first
        assert lock["in_sync"] == [lock["holder"]], lock
        p.kill9()
        s.start(env=ENV)
        s.wait_state("Waiting", timeout=10)
        r = run_cli(home.path, "ha", "force-activate", "-mode", "AMS", "-profile", f"{PAIR}/secondary", "--yes")
        assert r.returncode == 0, r.stderr
        s.wait_state("Standalone", timeout=5)
        assert create(c, url(s), "after-failover") == 201
    p.start(env=ENV)
    p.wait_state("Passive", timeout=20)
    wait_for(lambda: in_sync(p, s), 10, "resynchronised")
    assert "diverged" in p.output()
    aside_root = Path(p.prof.db_path) / "diverged"
    kept = list(aside_root.iterdir())
    assert len(kept) == 1 and (kept[0] / "store.sqlite3").exists()
    old = SqliteStore(str(kept[0] / "store.sqlite3"))
    try:
        names = {k for k, _ in old.scan("ams.consumers")}
    finally:
        old.close()
    assert "only-on-old-active" in names, names
    assert "after-failover" in consumers(s) and "only-on-old-active" not in consumers(s)


def _post(srv: Server, path: str, body: bytes, secret: str | None) -> int:
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers[AUTH_HEADER], _ = sign_request(secret, "POST", path, body, sender="primary", receiver="secondary",
                                               epoch=0)
    req = urllib.request.Request(f"{srv.ha}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_bad_frames_refused_and_logged(home: Home) -> None:
    p, s = start_pair(home)
    secret = load_profile(home.path, f"{PAIR}/secondary/AMS").ha.PairSecret
    epoch = s.status()["epoch"]  # type: ignore[index]
    good = json.dumps({"epoch": epoch, "leader": "x", "changes": []}).encode()
    assert _post(s, "/ha/repl/frames", good, "wrong-secret") == 401
    assert _post(s, "/ha/repl/frames", good, None) == 401
    old = json.dumps({"epoch": epoch - 1, "leader": "x", "changes": []}).encode()
    assert _post(s, "/ha/repl/frames", old, secret) == 409
    garbage = json.dumps({"epoch": epoch, "changes": [{"lsn": "x"}, 7]}).encode()
    assert _post(s, "/ha/repl/frames", garbage, secret) == 200  # answered, refused inside: ok=false
    assert _post(s, "/ha/repl/frames", b"\xff\xfe{{{", secret) == 400
    out = s.output()
    assert "refused /ha/repl/frames" in out  # the wrong secret, logged
    assert f"refused a frame of epoch {epoch - 1}" in out  # the old epoch, logged
    with httpx.Client(timeout=5) as c:
        assert create(c, url(p), "still-fine") == 201
    wait_for(lambda: in_sync(p, s), 5, "replication unharmed")
    s.wait_state("Passive", timeout=5)


@pytest.fixture(autouse=True)
def _no_stopped_processes(home: Home) -> None:
    yield  # type: ignore[misc]
    for srv in home.servers:
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)


def test_log_retention_bounds_the_log_and_falls_back_to_a_snapshot(home: Home) -> None:
    for half in ("primary", "secondary"):
        set_profile_values(home.path, f"{PAIR}/{half}/AMS", ["ha.LogRetention=50"])
    p, s = start_pair(home)
    s.stop()
    p.wait_state("Standalone", timeout=5)
    with httpx.Client(timeout=10) as c:
        assert all(create(c, url(p), f"r{i:04d}") == 201 for i in range(200))
    store_file = Path(p.prof.db_path) / "store.sqlite3"

    def log_bounded() -> bool:
        st = SqliteStore(str(store_file))
        try:
            return st.log_size() <= 50 and st.oldest_lsn() > 2
        finally:
            st.close()

    wait_for(log_bounded, 10, "active's log trimmed to LogRetention")
    s.start(env=ENV)
    s.wait_state("Passive", timeout=30)
    wait_for(lambda: in_sync(p, s), 10, "digests equal")
    assert "sending a snapshot" in p.output()
    assert {f"r{i:04d}" for i in range(200)} <= consumers(p)
