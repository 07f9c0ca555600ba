"""ha-core, replicated mode with replication still behind its interface: a passive
treats its store as not in sync, so rule 5 holds it `Waiting` until the last
active returns or an operator forces it."""

from __future__ import annotations

import json

from conftest import Home, Watcher, port_open, run_cli, wait_for

PAIR = "haprofile1"


def test_replicated_states_rule5_and_force_activate(home: Home) -> None:
    p, s = home.pair(PAIR, "AMS")
    p.start()
    s.start()
    st_p = p.wait_state("Active", timeout=10)
    st_s = s.wait_state("Waiting", timeout=10)
    assert st_p["type"] == "replicated" and st_p["lsn"] == 0
    assert "store may miss acknowledged writes" in st_s["reason"]
    assert st_s["lock"]["in_sync"] == [st_p["server"]]
    watcher = Watcher([p, s])
    watcher.start()
    try:
        p.kill9()
        st = wait_for(lambda: (x := s.status()) and x["peer"]["state"] == "Dead" and x, 5, "peer Dead")
        assert st["state"] == "Waiting" and not st["serving"]
        # it keeps waiting: bounded observation of 1 s (well past TakeoverWait)
        for _ in range(20):
            assert s.active_code() == 503 and not port_open(s.client_port)
            wait_for(lambda: True, 0.05, "tick")
        # the last active returns: it has every write, so it serves again (epoch + 1)
        p.start()
        back = p.wait_state("Active", "Standalone", timeout=10)
        assert back["epoch"] == st_p["epoch"] + 1
        s.wait_state("Waiting")
        # force-activate needs --yes
        r = run_cli(home.path, "ha", "force-activate", "-mode", "AMS", "-profile", f"{PAIR}/secondary")
        assert r.returncode == 2 and "--yes" in r.stderr
        p.kill9()
        r = run_cli(home.path, "ha", "force-activate", "-mode", "AMS", "-profile", f"{PAIR}/secondary", "--yes")
        assert r.returncode == 0, r.stderr
        forced = s.wait_state("Standalone", timeout=5)
        assert forced["epoch"] == back["epoch"] + 1 and s.active_code() == 200
        assert "operator forced activation" in s.output()
        lock = json.loads(home.lockfile(PAIR, "AMS").read_text())
        assert lock["forced"] is True and lock["holder"] == forced["server"]
        # the former active returns and finds the forced one serving: it waits (its copy is now stale)
        p.start()
        p.wait_state("Waiting", timeout=10)
        wait_for(lambda: (x := s.status()) and x["state"] == "Active", 5, "peer alive again: Active")
    finally:
        watcher.stop()
    watcher.check()
