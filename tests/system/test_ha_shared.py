"""ha-core acceptance: a shared-mode AMS pair of real processes, a LockFile in a
temp folder, real signals. A watcher samples both every 50 ms throughout."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tandem.config import set_profile_values
from tandem.server.pidlock import running_pid
from tests.support.harness import Home, Server, Watcher, http_get, port_open, run_cli, wait_for

PAIR = "haprofile_shared"


def serving(s: Server) -> bool:
    return s.active_code() == 200


def exactly_one_active(a: Server, b: Server) -> tuple[Server, Server] | None:
    sa, sb = a.status(), b.status()
    if not sa or not sb:
        return None
    states = {sa["state"], sb["state"]}
    if states != {"Active", "Passive"}:
        return None
    return (a, b) if sa["state"] == "Active" else (b, a)


@pytest.fixture
def pair(home: Home) -> Iterator[tuple[Server, Server]]:
    yield home.pair(PAIR, "AMS")


def test_start_one_active_one_passive_kill9_failover_and_return(home: Home, pair: tuple[Server, Server]) -> None:
    p, s = pair
    p.start()
    s.start()
    t0 = time.monotonic()
    active, passive = wait_for(lambda: exactly_one_active(p, s), 5, "one Active and one Passive")
    assert time.monotonic() - t0 < 5
    assert active is p, "simultaneous start: the primary wins the tie"
    watcher = Watcher([p, s])
    watcher.start()
    try:
        assert active.active_code() == 200 and passive.active_code() == 503
        assert port_open(active.client_port) and not port_open(passive.client_port)
        epoch0 = active.status()["epoch"]  # type: ignore[index]

        for round_ in range(2):  # fail over both ways, the killed one restarted each time
            active.kill9()
            t0 = time.monotonic()
            wait_for(lambda x=passive: serving(x) and port_open(x.client_port), 5, "peer serves after kill -9")
            took = time.monotonic() - t0
            st = passive.status()
            assert st is not None and st["state"] == "Active"
            assert st["epoch"] == epoch0 + 1 + round_, "epoch +1 on each takeover"
            assert took < 5
            active.start()
            back = active.wait_state("Passive", timeout=10)
            assert back["epoch"] >= st["epoch"]
            assert not port_open(active.client_port)
            active, passive = passive, active
        # the restarted primary took over in the last round: its console shows why
        assert "Passive -> Activating" in active.output() and "reason=lock acquired" in active.output()
    finally:
        watcher.stop()
    watcher.check()


def test_switchover_both_ways(home: Home, pair: tuple[Server, Server]) -> None:
    p, s = pair
    p.start()
    s.start()
    wait_for(lambda: exactly_one_active(p, s), 5, "pair up")
    s.wait_state("Passive")
    wait_for(lambda: (st := p.status()) and st["peer"]["state"] == "Passive", 5, "primary sees its peer Passive")
    watcher = Watcher([p, s])
    watcher.start()
    try:
        e0 = p.status()["epoch"]  # type: ignore[index]
        r = run_cli(home.path, "ha", "switchover", "-mode", "AMS", "-profile", f"{PAIR}/primary")
        assert r.returncode == 0, r.stderr
        assert "switchover done" in r.stdout
        assert serving(s) and not serving(p)
        assert s.status()["epoch"] == e0 + 1  # type: ignore[index]
        wait_for(lambda: (st := s.status()) and st["peer"]["state"] == "Passive", 5, "secondary sees primary Passive")
        r = run_cli(home.path, "ha", "switchover", "-mode", "AMS", "-profile", f"{PAIR}/primary")
        assert r.returncode == 0, r.stderr
        assert serving(p) and not serving(s)
        assert p.status()["epoch"] == e0 + 2  # type: ignore[index]
    finally:
        watcher.stop()
    watcher.check()


def test_switchover_refused_without_ready_peer(home: Home) -> None:
    p = home.server(f"{PAIR}/primary/AMS").start()
    p.wait_state("Active")
    r = run_cli(home.path, "ha", "switchover", "-mode", "AMS", "-profile", f"{PAIR}/primary")
    assert r.returncode != 0 and "refus" in r.stderr
    assert serving(p)


def test_sigstop_active_under_supervisor(home: Home) -> None:
    for half in ("primary", "secondary"):
        set_profile_values(home.path, f"{PAIR}/{half}/AMS", ["ha.WatchdogTimeout=1000"])
    p_prof = f"{PAIR}/primary"
    assert run_cli(home.path, "server", "-mode", "AMS", "-profile", p_prof).returncode == 0
    p = home.server(f"{PAIR}/primary/AMS")
    s = home.server(f"{PAIR}/secondary/AMS").start()
    try:
        p.wait_state("Active")
        s.wait_state("Passive")
        watcher = Watcher([p, s])
        watcher.start()
        old = running_pid(p.prof.run_dir / "server.pid")
        assert old
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: serving(s), 1.0 + 1.0 + 1.0, "peer serves after SIGSTOP")
        assert time.monotonic() - t0 < 1.0 + 1.0
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass  # already killed by the watchdog: it cannot serve
        new = wait_for(lambda: (x := running_pid(p.prof.run_dir / "server.pid")) and x != old and x, 10,
                       "supervisor restarted the server")
        st = p.wait_state("Passive")
        assert st["pid"] == new and not serving(p)
        watcher.stop()
        watcher.check()
    finally:
        run_cli(home.path, "server", "stop", "-mode", "AMS", "-profile", p_prof)


class Target:
    """A TCP listener standing in for the gateway machine; close() makes it stop answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _probe(home: Home, half: str, port: int) -> None:
    set_profile_values(home.path, f"{PAIR}/{half}/AMS",
                       ["ha.GatewayServerIPAddress=127.0.0.1", f"ha.GatewayServerPort={port}",
                        "ha.ProbeInterval=200", "ha.ProbeTimeout=100", "ha.ProbeFailures=3"])


@pytest.mark.parametrize("passive_reaches_its_target", [True, False])
def test_isolation(home: Home, passive_reaches_its_target: bool) -> None:
    tp, ts = Target(), Target()
    try:
        _probe(home, "primary", tp.port)
        _probe(home, "secondary", ts.port)
        p, s = home.pair(PAIR, "AMS")
        p.start()
        s.start()
        p.wait_state("Active")
        s.wait_state("Passive")
        watcher = Watcher([p, s])
        watcher.start()
        if not passive_reaches_its_target:
            ts.close()
            wait_for(lambda: (st := s.status()) and st["isolated"], 3, "passive isolated")
        tp.close()
        t0 = time.monotonic()
        wait_for(lambda: not serving(p), 3 * 0.2 + 1, "isolated active stops serving")
        assert time.monotonic() - t0 <= 3 * 0.2 + 1
        assert p.status()["isolated"] is True  # type: ignore[index]
        assert not port_open(p.client_port)
        if passive_reaches_its_target:
            wait_for(lambda: serving(s), 5, "passive with a reachable target takes over")
        else:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # bounded observation: nobody may serve
                assert not serving(s) and not serving(p)
                time.sleep(0.05)
            assert "isolated" in s.output()
        # a takeover can be over in well under a second: let the watcher sample enough of it
        wait_for(lambda: len(watcher.samples) > 10, 10, "watcher samples")
        watcher.stop()
        watcher.check()
    finally:
        tp.close()
        ts.close()


def test_missing_lockfile_exits_2_naming_the_path(home: Home) -> None:
    lock = home.lockfile(PAIR, "AMS")
    lock.unlink()
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", f"{PAIR}/primary", "-nobackground", timeout=20)
    assert r.returncode == 2
    assert str(lock) in r.stderr
    assert not lock.exists(), "a missing LockFile must never be created"
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", f"{PAIR}/primary")
    assert r.returncode == 2 and str(lock) in r.stderr
    set_profile_values(home.path, f"{PAIR}/primary/AMS", [f"ha.LockFile={home.path}/no-such-share/AMS.lock"])
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", f"{PAIR}/primary", "-nobackground", timeout=20)
    assert r.returncode == 2 and "no-such-share" in r.stderr


def test_backchannel_refuses_bad_frames(home: Home) -> None:
    p = home.server(f"{PAIR}/primary/AMS").start()
    p.wait_state("Active")
    url = f"{p.ha}/ha/peer/heartbeat"
    for headers, body in (({}, b'{"state":"Active","epoch":99,"serving":true}'),
                          ({"X-Tandem-Auth": "t=1,mac=00"}, b"{}"),
                          ({"X-Tandem-Auth": "garbage"}, b"\x00\xff not json")):
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            urllib.request.urlopen(req, timeout=2)
            raise AssertionError("unauthenticated frame accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    with socket.create_connection(("127.0.0.1", int(p.ha.rsplit(":", 1)[1]))) as c:
        c.sendall(b"\x16\x03\x01 definitely not http\r\n\r\n")
        c.recv(100)
    assert serving(p)
    st = p.status()
    assert st is not None and st["epoch"] < 99 and st["peer"]["state"] == "Dead"
    assert "refused /ha/peer/heartbeat" in p.output()
    code, body = http_get(f"{p.ha}/ha/status")
    assert code == 200 and json.dumps(body)
