"""The HA port against clients without credentials, and against captured frames
([hardening] findings 1, 4 and the HA-port part of 5): nobody without the pair
secret moves the pair, buffers a body, or keeps a connection open past a deadline;
a replayed command or a reflected frame is refused."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tandem.config import load_profile, set_profile_values
from tandem.ha.backchannel import AUTH_HEADER, sign_request
from tests.support.harness import Home, Server, Watcher, holds_for, http_get, wait_for

PAIR = "haprofile1"
ENV = {"TANDEM_ADMIN_TOKEN": "test-admin-token-hostile"}
FLOOD_CONNECTIONS = 24
FLOOD_BODY = 64 * 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def server_pid(srv: Server) -> int:
    st = srv.status()
    assert st is not None
    return int(st["pid"])


def ha_addr(srv: Server) -> tuple[str, int]:
    prof = srv.prof
    return prof.server.HAAddress, int(prof.server.HAPort)


def flood_one(addr: tuple[str, int], until: float, sent: list[int]) -> None:
    """One attacker connection after another: a 64 MiB heartbeat with a junk signature,
    streamed until the server closes the connection (bounded by `until`, 3 rounds)."""
    chunk = b"x" * (1024 * 1024)
    head = (f"POST /ha/peer/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Tandem-Auth: t={time.time():.3f},mac={'0' * 64}\r\nContent-Length: {FLOOD_BODY}\r\n\r\n").encode()
    for _ in range(3):
        if time.monotonic() > until:
            return
        try:
            with socket.create_connection(addr, timeout=2) as s:
                s.sendall(head)
                for _ in range(FLOOD_BODY // len(chunk)):
                    if time.monotonic() > until:
                        return
                    s.sendall(chunk)
                    sent[0] += len(chunk)
        except OSError:
            continue  # closed by the server: the next round


@pytest.mark.parametrize("component", ["AMS", "AGS"])
def test_unauthenticated_body_flood_leaves_the_pair_where_it_was(home: Home, component: str) -> None:
    """Finding 1: 24 connections each sending a 64 MiB heartbeat with a junk signature
    used to be buffered whole and MAC'd on the loop: the watchdog killed the active and
    the pair failed over. Now each is refused from its head: no failover, memory bounded,
    the flood logged."""
    p, s = home.start_pair(PAIR, component, env=ENV)
    before = p.status()
    assert before is not None
    pid = server_pid(p)
    base_rss = rss_mb(pid)
    watcher = Watcher([p, s])
    watcher.start()
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_mb(pid))
            except (OSError, AssertionError):
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sent = [0]
    until = time.monotonic() + 15
    attackers = [threading.Thread(target=flood_one, args=(ha_addr(p), until, sent), daemon=True)
                 for _ in range(FLOOD_CONNECTIONS)]
    try:
        for t in attackers:
            t.start()
        for t in attackers:
            t.join(30)
        holds_for(lambda: p.state() == "Active" and s.state() == "Passive", 1.0, "the pair where it was")
    finally:
        stop.set()
        sampler.join(2)
        watcher.stop()
    after = p.status()
    assert after is not None
    assert after["epoch"] == before["epoch"] and server_pid(p) == pid, (before, after)
    watcher.check()
    assert peak[0] - base_rss < 64, f"RSS grew from {base_rss:.0f} to {peak[0]:.0f} MB under the flood"
    out = p.output()
    assert "HA port refused a request from 127.0.0.1" in out and "/ha/peer/heartbeat" in out
    # logged once per client and minute, not once per attempt
    assert out.count("HA port refused a request from 127.0.0.1") <= 3, out[-3000:]


def post_raw(srv: Server, path: str, body: bytes, auth: str) -> tuple[int, str]:
    req = urllib.request.Request(f"{srv.ha}{path}", data=body, method="POST",
                                 headers={AUTH_HEADER: auth, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def test_a_replayed_switchover_and_a_reflected_heartbeat_are_refused(home: Home) -> None:
    """Finding 4: a captured switchover frame resent to whichever server was active was
    obeyed again and again (epochs 2 -> 6); a heartbeat sent back to its sender was taken."""
    p, s = home.start_pair(PAIR, "AMS", env=ENV)
    secret = load_profile(home.path, f"{PAIR}/primary/AMS").ha.PairSecret
    st = wait_for(lambda: (x := p.status()) and x["peer"]["state"] == "Passive" and x, 10,
                  "the active sees its peer Passive")
    epoch = int(st["epoch"])
    body = json.dumps({"requested_by": "tandem ha switchover"}).encode()
    # the frame `tandem ha switchover` sends: to the active half, at the epoch it showed
    captured, _ = sign_request(secret, "POST", "/ha/switchover", body, sender="operator",
                               receiver=str(st["role"]), epoch=epoch)
    code, text = post_raw(p, "/ha/switchover", body, captured)
    assert code == 200, text
    s.wait_state("Active", timeout=10)
    p.wait_state("Passive", timeout=10)
    moved = s.status()
    assert moved is not None and int(moved["epoch"]) == epoch + 1
    # replayed to the new active (the other half) and to the half it was for
    assert post_raw(s, "/ha/switchover", body, captured)[0] == 401
    code, text = post_raw(p, "/ha/switchover", body, captured)
    assert code == 401 and "replay" in text, text
    # a command signed for the epoch before (an operator acting on a stale view)
    stale, _ = sign_request(secret, "POST", "/ha/switchover", body, sender="operator", receiver="secondary",
                            epoch=epoch)
    code, text = post_raw(s, "/ha/switchover", body, stale)
    assert code == 409 and "stale or replayed" in text, text
    # a heartbeat the primary sends, sent back to the primary
    hb = json.dumps({"server": "x", "state": "Active", "epoch": epoch + 5, "serving": True}).encode()
    reflected, _ = sign_request(secret, "POST", "/ha/peer/heartbeat", hb, sender="primary", receiver="secondary",
                                epoch=epoch + 5)
    code, text = post_raw(p, "/ha/peer/heartbeat", hb, reflected)
    assert code == 401 and "addressed to secondary" in text, text
    holds_for(lambda: s.state() == "Active" and p.state() == "Passive", 1.0, "nothing moved")
    final = s.status()
    assert final is not None and int(final["epoch"]) == epoch + 1
    out = s.output() + p.output()
    assert "(a replay)" in out and f"signed for epoch {epoch}, this server is at epoch {epoch + 1}" in out


def test_ha_port_closes_dripping_idle_and_excess_connections(home: Home) -> None:
    """Finding 5 (HA port): a head dripped one byte at a time is cut at HAHeaderTimeout
    (the deadline does not restart per byte), an idle connection at HAIdleTimeout, a
    connection past HAMaxConnections at once; the port keeps answering throughout. The
    process raised its open-file limit (past 1,024 clients got a silent reset)."""
    name = "server1/AMS"
    set_profile_values(home.path, name, ["ha.HAHeaderTimeout=1000", "ha.HAIdleTimeout=2000",
                                         "ha.HAMaxConnections=8"])
    srv = home.server(name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # what the server inherits
    try:
        srv.start(env=ENV)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    srv.wait_state("Standalone", timeout=15)
    # the server raised its soft open-file limit to the hard one (the gateway's workers inherit it)
    limits = Path(f"/proc/{server_pid(srv)}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
    assert int(row[3]) == int(row[4]) == hard, row
    addr = ha_addr(srv)
    t0 = time.monotonic()
    with socket.create_connection(addr, timeout=5) as drip:
        closed_at = None
        for b in b"GET /ha/status HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200:
            try:
                drip.sendall(bytes([b]))
                drip.settimeout(0.2)
                if drip.recv(4096) == b"":
                    closed_at = time.monotonic()
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_at = time.monotonic()
                break
            if time.monotonic() - t0 > 10:
                break
        assert closed_at is not None, "a dripping head kept its connection for 10 s"
        assert closed_at - t0 < 3.0, f"closed after {closed_at - t0:.1f} s, HAHeaderTimeout is 1 s"
    with socket.create_connection(addr, timeout=5) as idle:
        t1 = time.monotonic()
        idle.settimeout(6)
        assert idle.recv(1) == b""
        assert 1.5 < time.monotonic() - t1 < 4.0
    held = [socket.create_connection(addr, timeout=5) for _ in range(8)]
    try:
        extra = socket.create_connection(addr, timeout=5)
        extra.settimeout(3)
        try:
            assert extra.recv(1) == b""  # closed at once, no answer
        except ConnectionResetError:
            pass
        finally:
            extra.close()
    finally:
        for c in held:
            c.close()
    wait_for(lambda: http_get(f"{srv.ha}/ha/status")[0] == 200, 5, "the HA port answers again")
    code, body = http_get(f"{srv.ha}/metrics")
    assert code == 200
    text = body if isinstance(body, str) else str(body)
    counts = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("tandem_ha_port_refused_total{")}
    assert counts["header_timeout"] >= 1 and counts["connections"] >= 1, counts
