"""`make up` runs `tandem demo`: the whole topology comes up, the console line comes
first, the printed curl line works through the gateway (the backend sees the consumer),
an active server killed with SIGKILL is restarted by its supervisor and comes back
Passive while its peer serves, and Ctrl-C stops everything the demo started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tandem.config import load_profile
from tandem.server.pidlock import running_pid
from tests.support.harness import Home, http_get, tandem_cmd, wait_for

PROFILES = [f"haprofile1/{h}/{m}" for m in ("AMS", "AGS") for h in ("primary", "secondary")]


def _pids(home: Path) -> list[int]:
    """Every process the demo started and still running, supervisors first (by their pid files)."""
    found: list[int | None] = []
    for f in ("supervisor.pid", "server.pid"):
        found += [running_pid(load_profile(home, p).run_dir / f) for p in PROFILES]
    return [p for p in found if p]


def _kill_everything(home: Path) -> None:
    """Last resort on failure: SIGKILL the supervisors first (so none restarts its server), then
    the servers, by pid."""
    for f in ("supervisor.pid", "server.pid"):
        for p in PROFILES:
            pid = running_pid(load_profile(home, p).run_dir / f)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _status(home: Path, profile: str) -> dict[str, object] | None:
    code, body = http_get(f"{load_profile(home, profile).ha_url}/ha/status")
    return body if code == 200 and isinstance(body, dict) else None


def test_demo_up_serves_fails_over_and_ctrl_c_stops_everything(home: Home) -> None:
    out = home.path / "demo.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(tandem_cmd(home.path, "demo"), stdout=f, stderr=subprocess.STDOUT)
    try:
        text = wait_for(lambda: "Ctrl-C stops everything" in (t := out.read_text()) and t, 90, "demo ready")
        block = [x.strip() for x in text.split("Tandem demo is up", 1)[1].splitlines()[1:] if x.strip()]
        m = re.fullmatch(r"console\s+(http://\S+)/console\s+sign in with the token: (\S+)", block[0])
        assert m, text
        ams_url, token = m.groups()
        assert token not in ams_url
        assert httpx.get(f"{ams_url}/api/v1/projects", headers={"Authorization": f"Bearer {token}"},
                         timeout=5).status_code == 200
        assert any(x.startswith("admin API docs") and f"{ams_url}/docs" in x for x in block), text

        m = re.search(r"curl -s -H 'X-API-Key: (\S+)' (\S+)", text)
        assert m, text
        r = httpx.get(m.group(2), headers={"X-API-Key": m.group(1)}, timeout=5)
        assert r.status_code == 200 and r.json()["path"] == "/api/greeting", r.text
        assert r.json()["consumer"] == "demo-app", r.text
        assert "X-Request-Id" in r.headers
        for state in ("Active", "Passive"):
            assert text.count(state) >= 2, text
        assert all(running_pid(load_profile(home.path, p).run_dir / "server.pid") for p in PROFILES)
        assert all(running_pid(load_profile(home.path, p).run_dir / "supervisor.pid") for p in PROFILES)

        # kill -9 the active AMS server (not its supervisor): the peer takes over, the killed one
        # is started again by its supervisor and comes back Passive
        ams = [p for p in PROFILES if p.endswith("/AMS")]
        active = wait_for(lambda: [p for p in ams if (s := _status(home.path, p)) and s["state"] == "Active"],
                          10, "an active AMS")[0]
        peer = next(p for p in ams if p != active)
        old = int(_status(home.path, active)["pid"])  # type: ignore[index, arg-type]
        supervisor = running_pid(load_profile(home.path, active).run_dir / "supervisor.pid")
        assert old == running_pid(load_profile(home.path, active).run_dir / "server.pid")
        os.kill(old, signal.SIGKILL)

        def roles_swapped() -> bool:
            a, b = _status(home.path, peer), _status(home.path, active)
            return bool(a and b and a["state"] == "Active" and b["state"] == "Passive" and b["pid"] != old)

        wait_for(roles_swapped, 60, f"{peer} Active and {active} back as Passive with a new pid")
        new = _status(home.path, active)["pid"]  # type: ignore[index]
        assert running_pid(load_profile(home.path, active).run_dir / "supervisor.pid") == supervisor
        assert f"started server pid {new}" in (home.path / "demo-logs" /
                                               f"{active.replace('/', '-')}.log").read_text()
        # the demo's follow loop shows it
        wait_for(lambda: re.search(rf"\d\d:\d\d:\d\d\s+{re.escape(active)}\s+Passive .*pid={new}\b",
                                   out.read_text()), 10, "the demo printing the killed server back as Passive")
        started = _pids(home.path)
    except BaseException:
        proc.kill()
        proc.wait(10)
        _kill_everything(home.path)
        raise
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        _kill_everything(home.path)
        raise
    try:
        assert code == 0, out.read_text()[-2000:]
        assert len(started) == 8, started
        deadline = time.monotonic() + 10
        # a live server or supervisor holds its pid file's lock: none may be left
        wait_for(lambda: not _pids(home.path), max(0.1, deadline - time.monotonic()), "every process stopped")
    finally:
        _kill_everything(home.path)
