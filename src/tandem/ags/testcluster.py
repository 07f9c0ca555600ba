"""Real `tandem server` processes for system tests and benchmarks: an AMS and an AGS
(the standalone `server1` profiles of a fresh home) started through the CLI.

    with CliCluster(tmp_path) as c:             # home init, free ports, AGS wired to the AMS
        c.start("AMS"); c.start("AGS")
        c.api.post("/api/v1/projects", json=...)
        c.gateway_get("/pets/x")
        c.stop("AMS")                            # by pid, SIGTERM then SIGKILL

Every process is started with `-nobackground`, its output in `<tmp>/logs/`,
and stopped by pid on `close()`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tandem.ags.testkit import free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "tandem.cli.main"]


class CliCluster:
    def __init__(self, tmp: Path, ags_env: dict[str, str] | None = None, workers: int | None = None) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ports = {"AMS": (free_port(), free_port()), "AGS": (free_port(), free_port())}
        self.ags_env = dict(ags_env or {})
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.starts = 0
        self.tandem("home", "init", str(self.home))
        for mode, (client, ha) in self.ports.items():
            extra = [f"ha.PrimaryURL={self.ams_url}"] if mode == "AGS" else []
            if mode == "AGS" and workers is not None:
                extra.append(f"gateway.Workers={workers}")
            self.tandem("profile", "set", f"server1/{mode}", f"server.ClientPort={client}",
                        f"server.HAPort={ha}", *extra)
        self._api: httpx.Client | None = None

    def __enter__(self) -> CliCluster:
        return self

    @classmethod
    @contextlib.contextmanager
    def started(cls, tmp: Path, **kw: Any) -> Iterator[CliCluster]:
        """A cluster with its AMS and AGS serving; everything stopped by pid on exit."""
        c = cls(tmp, **kw)
        try:
            c.start("AMS")
            c.start("AGS")
            yield c
        finally:
            c.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ams_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AMS'][0]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AGS'][0]}"

    def ha_url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.ports[mode][1]}"

    def profile_dir(self, mode: str) -> Path:
        return self.home / "profiles" / "server1" / mode

    @property
    def token(self) -> str:
        return (self.profile_dir("AMS") / "data" / "admin.token").read_text().strip()

    def tandem(self, *args: str) -> str:
        done = subprocess.run([*CLI, "--home", str(self.home), *args], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"tandem {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def set_profile(self, mode: str, *assignments: str) -> None:
        self.tandem("profile", "set", f"server1/{mode}", *assignments)

    def start(self, mode: str, wait: float = 30.0, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        assert mode not in self.procs or self.procs[mode].poll() is not None, f"{mode} already runs"
        self.starts += 1
        full_env = dict(os.environ)
        if mode == "AGS":
            full_env.update(self.ags_env)
            if "TANDEM_GATEWAY_TOKEN" not in self.ags_env:
                full_env["TANDEM_GATEWAY_TOKEN"] = self.token
        full_env.update(env or {})
        out = open(self.logs / f"{mode}-{self.starts}.log", "w")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([*CLI, "--home", str(self.home), "server", "-mode", mode, "-profile", "server1",
                                 "-nobackground"], stdout=out, stderr=subprocess.STDOUT, env=full_env)
        out.close()
        self.procs[mode] = proc
        if wait:
            def active() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"{mode} exited with {proc.returncode}: {self.log_text(mode)[-2000:]}")
                return httpx.get(self.ha_url(mode) + "/ha/active", timeout=2).status_code == 200
            wait_until(active, wait, f"{mode} serving")
            if mode == "AMS":  # the first request bootstraps the admin token
                token = self.profile_dir("AMS") / "data" / "admin.token"
                wait_until(lambda: httpx.get(self.ams_url + "/api/v1/health", timeout=2) and token.exists(),
                           10, "admin token")
        return proc

    def stop(self, mode: str) -> None:
        proc = self.procs.pop(mode, None)
        if proc is not None:
            stop_process(proc)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
        for mode in list(self.procs):
            self.stop(mode)

    def log_text(self, mode: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{mode}-*.log")))

    @property
    def api(self) -> httpx.Client:
        if self._api is None:
            self._api = httpx.Client(base_url=self.ams_url, headers={"Authorization": f"Bearer {self.token}"},
                                     timeout=60, trust_env=False)
        return self._api

    def deploy(self, name: str, context: str, url: str, policies: list[dict[str, Any]] | None = None) -> None:
        """Create (or replace) project `name` at `context` -> `url` and deploy it to `default`; returns once
        the deployment is `deployed` (10 s at most)."""
        body = {"name": name, "context_path": context, "targets": [{"url": url}], "policies": policies or []}
        r = self.api.put(f"/api/v1/projects/{name}", json=body)
        if r.status_code == 404:
            r = self.api.post("/api/v1/projects", json=body)
        assert r.status_code in (200, 201), r.text
        r = self.api.post(f"/api/v1/projects/{name}/deploy", json={"environment": "default"})
        assert r.status_code == 202, r.text
        dep = r.json()["id"]
        wait_until(lambda: self.api.get(f"/api/v1/deployments/{dep}").json()["status"] == "deployed", 10,
                   f"{name} deployed")

    def gateway_get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.gateway_url + path, timeout=kw.pop("timeout", 10), trust_env=False, **kw)

    def gateway_pids(self) -> list[int]:
        """The AGS server process and its children (the gateway workers)."""
        proc = self.procs["AGS"]
        pids = [proc.pid]
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids
