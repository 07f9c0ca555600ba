"""`make up` runs `tandem demo`: the whole topology comes up, the printed curl line
works through the gateway, and Ctrl-C stops everything the demo started."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import httpx

from tandem.server.pidlock import running_pid
from tests.support.harness import Home, tandem_cmd, wait_for


def test_demo_up_serves_and_ctrl_c_stops_everything(home: Home) -> None:
    out = home.path / "demo.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(tandem_cmd(home.path, "demo"), stdout=f, stderr=subprocess.STDOUT)
    profiles = [f"haprofile1/{h}/{m}" for m in ("AMS", "AGS") for h in ("primary", "secondary")]
    try:
        text = wait_for(lambda: "Ctrl-C stops everything" in (t := out.read_text()) and t, 90, "demo ready")
        m = re.search(r"curl -s -H 'X-API-Key: (\S+)' (\S+)", text)
        assert m, text
        r = httpx.get(m.group(2), headers={"X-API-Key": m.group(1)}, timeout=5)
        assert r.status_code == 200 and r.json()["path"] == "/api/greeting", r.text
        assert "X-Request-Id" in r.headers
        for state in ("Active", "Passive"):
            assert text.count(state) >= 2, text
        pids = [running_pid(home.server(p).prof.run_dir / "server.pid") for p in profiles]
        assert all(pids), pids
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, out.read_text()[-2000:]
    deadline = time.monotonic() + 10
    for p in profiles:
        wait_for(lambda p=p: running_pid(home.server(p).prof.run_dir / "server.pid") is None,
                 max(0.1, deadline - time.monotonic()), f"{p} stopped")
