"""Foundation: a real `tandem server` through the CLI — ports, status fields,
graceful stop, background mode under the supervisor, one server per profile."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tandem.server.pidlock import running_pid
from tests.support.harness import Home, http_get, port_open, run_cli, wait_for

SPEC_FIELDS = {"server", "mode", "type", "role", "state", "epoch", "lsn", "peer", "lock", "isolated", "since"}


def test_foreground_standalone_status_and_sigterm(home: Home) -> None:
    srv = home.server("server1/AMS").start()
    st = srv.wait_state("Standalone", timeout=15)
    assert SPEC_FIELDS <= set(st), SPEC_FIELDS - set(st)
    assert {"state", "address", "replicated_lsn", "lag"} <= set(st["peer"])
    assert {"path", "held"} <= set(st["lock"])
    assert st["type"] == "none" and st["mode"] == "AMS" and st["isolated"] is False
    assert st["lsn"] == 1 and isinstance(st["epoch"], int)  # first start stored the admin token hash
    assert srv.active_code() == 200
    assert port_open(srv.client_port), "client port must be open while Standalone"
    code, metrics = http_get(f"{srv.ha}/metrics")
    assert code == 200 and "tandem_serving 1.0" in metrics
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.proc is not None
    assert srv.proc.wait(5) == 0
    assert time.monotonic() - t0 < 5
    assert not port_open(srv.client_port)
    assert "stopped" in srv.output()


def test_seed_flags_through_bin_server_sh(home: Home) -> None:
    script = Path(__file__).resolve().parents[2] / "bin" / "server.sh"
    log = home.path / "sh.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(script), "-mode", "AMS", "-nobackground", "-profile", "server1"],
                                stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TANDEM_HOME": str(home.path)})
    try:
        srv = home.server("server1/AMS")
        wait_for(lambda: srv.active_code() == 200, 15, "server.sh-started AMS active")
        assert srv.status()["state"] == "Standalone"  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_background_status_refuse_second_and_stop(home: Home) -> None:
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", "server1")
    assert r.returncode == 0, r.stderr
    assert "/ha/status" in r.stdout
    srv = home.server("server1/AMS")
    run_dir = srv.prof.run_dir
    try:
        srv_pid = wait_for(lambda: running_pid(run_dir / "server.pid"), 10, "server pid file locked")
        assert running_pid(run_dir / "supervisor.pid")
        st = srv.wait_state("Standalone")
        assert st["pid"] == srv_pid

        table = run_cli(home.path, "status")
        assert table.returncode == 0
        line = next(ln for ln in table.stdout.splitlines() if ln.startswith("server1/AMS"))
        assert "Standalone" in line and str(srv_pid) in line and "True" in line
        assert any(ln.startswith("haprofile1/primary/AMS") and "stopped" in ln for ln in table.stdout.splitlines())

        again = run_cli(home.path, "server", "-mode", "AMS", "-profile", "server1")
        assert again.returncode == 2
        assert "already has a server running" in again.stderr and len(again.stderr.strip().splitlines()) == 1

        fg = run_cli(home.path, "server", "-mode", "AMS", "-profile", "server1", "-nobackground", timeout=20)
        assert fg.returncode == 2 and "already has a server running" in fg.stderr
    finally:
        stop = run_cli(home.path, "server", "stop", "-mode", "AMS", "-profile", "server1")
    assert stop.returncode == 0, stop.stderr
    assert not (run_dir / "server.pid").exists()
    assert not (run_dir / "supervisor.pid").exists()
    assert not port_open(srv.client_port)
    assert run_cli(home.path, "server", "stop", "-mode", "AMS", "-profile", "server1").returncode == 2


def test_supervisor_kills_a_stopped_server_and_restarts_it(home: Home) -> None:
    run_cli(home.path, "profile", "set", "server1/AMS", "ha.WatchdogTimeout=800")
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", "server1")
    assert r.returncode == 0, r.stderr
    srv = home.server("server1/AMS")
    pid_file = srv.prof.run_dir / "server.pid"
    try:
        old = wait_for(lambda: running_pid(pid_file), 10, "server running")
        srv.wait_state("Standalone")
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        new = wait_for(lambda: (p := running_pid(pid_file)) and p != old and p, 10, "restarted server")
        assert time.monotonic() - t0 < 0.8 + 3.0
        st = srv.wait_state("Standalone")
        assert st["pid"] == new
        log = (srv.prof.run_dir / "server.log").read_text()
        assert f"watchdog: server pid {old} silent" in log
    finally:
        run_cli(home.path, "server", "stop", "-mode", "AMS", "-profile", "server1")


def test_bad_profile_input_exits_2_one_line(home: Home) -> None:
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", "nosuch", "-nobackground")
    assert r.returncode == 2 and "nosuch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli(home.path, "server", "-mode", "XYZ", "-profile", "server1", "-nobackground")
    assert r.returncode == 2


def test_supervisor_retries_a_restart_refused_while_the_lockfile_share_is_gone(home: Home) -> None:
    """The watchdog kills a hung server while the LockFile's folder is away (an unmounted
    share): the restarted server refuses to start (exit 2, rule 8). That must not end the
    supervisor: it retries, and once the folder is back a server runs again. A first start
    with the folder missing still fails at once (exit 2, one clear line)."""
    r = run_cli(home.path, "server", "-mode", "AMS", "-profile", "haprofile1/primary")
    assert r.returncode == 0, r.stderr
    srv = home.server("haprofile1/primary/AMS")
    run_dir = srv.prof.run_dir
    share = home.lockfile("haprofile1", "AMS").parent
    away = share.with_name(share.name + ".away")
    try:
        old = wait_for(lambda: running_pid(run_dir / "server.pid"), 15, "server running")
        srv.wait_state("Standalone", "Active", timeout=15)
        share.rename(away)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: "refused to restart" in (run_dir / "server.log").read_text(), 15, "a refused restart")
        assert running_pid(run_dir / "supervisor.pid"), "the supervisor must keep trying"
        away.rename(share)
        st = srv.wait_state("Standalone", "Active", timeout=20)
        assert st["pid"] != old
    finally:
        if away.exists() and not share.exists():
            away.rename(share)
        run_cli(home.path, "server", "stop", "-mode", "AMS", "-profile", "haprofile1/primary")
    share.rename(away)
    try:
        first = run_cli(home.path, "server", "-mode", "AMS", "-profile", "haprofile1/primary")
    finally:
        away.rename(share)
    assert first.returncode == 2 and "does not exist" in first.stderr, first
