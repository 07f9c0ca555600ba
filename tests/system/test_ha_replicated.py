"""Replicated mode: an in-sync passive takes over; rule 5 holds a passive that was
not in sync when its peer last served alone `Waiting` until the peer returns or an
operator forces it."""

from __future__ import annotations

import json

from tests.support.harness import Home, Watcher, holds_for, port_open, run_cli, wait_for

PAIR = "haprofile1"


def lock_record(home: Home) -> dict[str, object]:
    return json.loads(home.lockfile(PAIR, "AMS").read_text())  # type: ignore[no-any-return]


def test_replicated_failover_rule5_and_force_activate(home: Home) -> None:
    p, s = home.pair(PAIR, "AMS")
    p.start()
    s.start()
    st_p = p.wait_state("Active", timeout=10)
    s.wait_state("Passive", timeout=10)
    assert st_p["type"] == "replicated"
    wait_for(lambda: set(lock_record(home)["in_sync"]) == {st_p["server"], s.status()["server"]}, 5,  # type: ignore[arg-type,index]
             "both recorded in sync")
    watcher = Watcher([p, s])
    watcher.start()
    try:
        # an in-sync passive takes over a killed active
        p.kill9()
        st = s.wait_state("Standalone", timeout=5)
        assert st["epoch"] == st_p["epoch"] + 1 and s.active_code() == 200
        assert lock_record(home)["in_sync"] == [st["server"]], "alone: the LockFile says the peer is not in sync"
        # the former active returns as passive and resynchronises; the active sees it and is Active again
        p.start()
        p.wait_state("Passive", timeout=10)
        s.wait_state("Active", timeout=5)
        wait_for(lambda: len(lock_record(home)["in_sync"]) == 2, 5, "returning peer back in sync")  # type: ignore[arg-type]

        # rule 5: the passive (p) dies, s serves alone, then s dies; p must not activate
        p.kill9()
        s.wait_state("Standalone", timeout=5)
        # serving alone, s records that p is no longer in sync (before it would ack any write)
        wait_for(lambda: lock_record(home)["in_sync"] == [st["server"]], 5, "s recorded alone")
        s.kill9()
        p.start()
        waiting = p.wait_state("Waiting", timeout=10)
        assert "store may miss acknowledged writes" in waiting["waiting_reason"]
        assert st["server"] in waiting["waiting_reason"]
        holds_for(lambda: p.active_code() == 503 and not port_open(p.client_port), 1.5,
                  "a Waiting server never serves")
        # the peer that served alone returns: it activates, p catches up and becomes Passive
        s.start()
        s.wait_state("Active", "Standalone", timeout=10)
        p.wait_state("Passive", timeout=10)

        # force-activate: needs --yes; then a Waiting server activates on its own
        p.kill9()
        s.wait_state("Standalone", timeout=5)
        wait_for(lambda: lock_record(home)["in_sync"] == [st["server"]], 5, "s recorded alone")
        s.kill9()
        p.start()
        p.wait_state("Waiting", timeout=10)
        r = run_cli(home.path, "ha", "force-activate", "-mode", "AMS", "-profile", f"{PAIR}/primary")
        assert r.returncode == 2 and "--yes" in r.stderr
        r = run_cli(home.path, "ha", "force-activate", "-mode", "AMS", "-profile", f"{PAIR}/primary", "--yes")
        assert r.returncode == 0, r.stderr
        forced = p.wait_state("Standalone", timeout=5)
        assert p.active_code() == 200
        assert "operator forced activation" in p.output()
        rec = lock_record(home)
        assert rec["forced"] is True and rec["holder"] == forced["server"]
    finally:
        watcher.stop()
    watcher.check()
