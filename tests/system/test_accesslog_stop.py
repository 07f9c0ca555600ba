"""The access log loses no line when the gateway is stopped with SIGTERM.

Lines are buffered (written at 64 KiB or every 250 ms), so a stop must write
what is buffered: the server process's own gateway, and every worker process's.
A service manager may send SIGTERM to the server process only, or to every
process of the group at once (systemd's default `KillMode=control-group`);
both must keep every line. Each test sends requests, stops the gateway within
the flush interval of the last one, and counts the lines on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tandem.store import Op, open_store
from tests.support.ags import make_document, project
from tests.support.harness import echo_backend, free_port, stop_process, wait_for

REQUESTS = 400


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with echo_backend(tmp_path_factory.mktemp("backend") / "requests.jsonl", "real") as (url, _):
        yield url


def _gateway(home: Path, backend: str, workers: int, in_process: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    cli = [sys.executable, "-m", "tandem.cli.main", "--home", str(home)]
    subprocess.run([*cli, "home", "init", str(home)], check=True, capture_output=True)
    port, ha = free_port(), free_port()
    subprocess.run([*cli, "profile", "set", "server1/AGS", f"server.ClientPort={port}", f"server.HAPort={ha}",
                    f"gateway.Workers={workers}", f"ha.PrimaryURL=http://127.0.0.1:{free_port()}"],
                   check=True, capture_output=True)
    store = open_store(str(home / "profiles" / "server1" / "AGS" / "data"))
    store.commit([Op("gateway", "config", make_document([project("echo", "/echo", backend)]))])
    store.close()
    env = dict(os.environ, TANDEM_GATEWAY_INPROCESS="1" if in_process else "0")
    log = open(home / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*cli, "server", "-mode", "AGS", "-profile", "server1", "-nobackground"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{ha}/ha/active", timeout=2).status_code == 200, 30,
             "the gateway active")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/echo/ready", timeout=2).status_code == 200, 10,
             "the project served")
    return proc, port, home / "profiles" / "server1" / "AGS" / "run" / "access.log"


@pytest.mark.parametrize(("workers", "in_process", "to_group"), [
    (2, False, False),  # SIGTERM to the server process: it stops its workers
    (2, False, True),  # SIGTERM to every process of the group at once
    (1, False, True),
    (1, True, False),  # the gateway in the server process
], ids=["2-workers-server", "2-workers-group", "1-worker-group", "in-process"])
def test_sigterm_keeps_every_line(tmp_path: Path, backend_url: str, workers: int, in_process: bool,
                                  to_group: bool) -> None:
    proc, port, access = _gateway(tmp_path / "home", backend_url, workers, in_process)
    try:
        ids = set()
        # several connections: with worker processes, each may land on another worker
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) for _ in range(4)]
        for i in range(REQUESTS):
            rid = f"stop-test-{i:05d}"
            r = clients[i % len(clients)].get(f"/echo/n{i}", headers={"X-Request-Id": rid})
            assert r.status_code == 200, r.text
            ids.add(rid)
        for c in clients:
            c.close()
        # at once: well within the 250 ms flush interval of the last request
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "home" / "server.log").read_text()
    finally:
        stop_process(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind (none expected)
        except ProcessLookupError:
            pass
    logged = [json.loads(line)["request_id"] for line in access.read_text().splitlines()]
    found = ids & set(logged)
    assert len(found) == REQUESTS, f"{REQUESTS - len(found)} of {REQUESTS} lines lost at SIGTERM"
    assert len([x for x in logged if x.startswith("stop-test-")]) == REQUESTS  # none written twice
