"""An AGS pair in replicated mode: the configuration an active gateway applied is
replicated to its passive, so after a failover with every AMS down the new active
serves the same APIs from its own store (SPEC section 5)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.harness import Home, Watcher, echo_backend, wait_for

TOKEN = "test-admin-token-ags-pair"


def test_ags_pair_serves_replicated_config_after_failover_with_ams_down(home: Home, tmp_path: Path) -> None:
    ams = home.server("haprofile1/primary/AMS")
    ams.start(env={"TANDEM_ADMIN_TOKEN": TOKEN})
    ams.wait_state("Standalone", timeout=10)
    gp, gs = home.pair("haprofile1", "AGS")
    gw_env = {"TANDEM_GATEWAY_TOKEN": TOKEN}
    with echo_backend(tmp_path / "echo.log", "pair") as (backend, _), \
            httpx.Client(base_url=ams.prof.client_url, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10) as api:
        gp.start(env=gw_env)
        gs.start(env=gw_env)
        gp.wait_state("Active", "Standalone", timeout=10)
        project = {"name": "pets", "version": "1", "context_path": "/pets",
                   "targets": [{"url": f"{backend}/v1", "weight": 1}]}
        assert api.post("/api/v1/projects", json=project).status_code == 201
        assert api.post("/api/v1/projects/pets/deploy", json={"environment": "default"}).status_code == 202

        def serves(port: int) -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/pets/dogs", timeout=1)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.json()["path"] == "/v1/dogs"

        wait_for(lambda: serves(gp.client_port), 10, "active gateway serves the deployed API")
        lock = home.lockfile("haprofile1", "AGS")
        wait_for(lambda: len(json.loads(lock.read_text())["in_sync"]) == 2, 10, "gateway pair in sync")
        wait_for(lambda: (d := gs.status()) and d["lsn"] == gp.status()["lsn"], 10,  # type: ignore[index]
                 "passive gateway has the active's configuration")

        ams.kill9()  # no AMS anywhere from now on
        watcher = Watcher([gp, gs])
        watcher.start()
        try:
            wait_for(lambda: len(watcher.samples) > 10, 5, "watcher baseline")
            gp.kill9()
            gs.wait_state("Standalone", timeout=5)
            wait_for(lambda: serves(gs.client_port), 5, "new active gateway serves from its replicated store")
        finally:
            watcher.stop()
        watcher.check()


def children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_passive_gateway_keeps_warm_workers_that_listen_only_once_active(home: Home) -> None:
    """A passive AGS with Workers = 2 has its worker processes started (imported, waiting)
    but its client port refuses connections; on failover the new active puts those very
    workers to work instead of starting Python twice."""
    from tandem.config import set_profile_values
    from tests.support.harness import port_open

    for half in ("primary", "secondary"):
        set_profile_values(home.path, f"haprofile1/{half}/AGS", ["gateway.Workers=2"])
    gp, gs = home.pair("haprofile1", "AGS")
    gp.start()
    gs.start()
    gp.wait_state("Active", "Standalone", timeout=15)
    gs.wait_state("Passive", timeout=15)
    wait_for(lambda: len(home.in_sync("haprofile1", "AGS")) == 2, 15, "the gateway pair in sync")
    warm = wait_for(lambda: len(c := children(gs.pid)) == 2 and c, 15, "two warm workers on the passive")
    assert not port_open(gs.client_port), "a passive's warm workers must not listen"
    gp.kill9()
    gs.wait_state("Standalone", timeout=10)
    wait_for(lambda: port_open(gs.client_port), 10, "the new active's port")
    assert children(gs.pid) == warm, "the warm workers serve (none started anew)"
