"""`tandem demo`: the whole local topology on embedded defaults (what `make up` runs).

An AMS pair and an AGS pair in replicated mode (haprofile1), a sample backend,
a sample API project deployed with a consumer and its key; prints the web
console URL first (with the admin token to sign in with), then the admin API
docs, the AMS and gateway URLs, a ready `curl` line and the live HA states, and
follows state changes until Ctrl-C.

Each server runs under its own supervisor (`tandem.server.supervisor`, the
watchdog `tandem server` uses in the background), a child of the demo: a hung
server is killed, and a server that dies (`kill -9` of an active one) is
started again and comes back Passive while its peer serves. Ctrl-C sends
SIGTERM to every supervisor, which stops its server; whatever is still running
after STOP_DEADLINE s (or at a second Ctrl-C) is killed by pid: the servers
(from their pid files) and the supervisors. Logs: `<home>/demo-logs/`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tandem.cli.server import supervised_command
from tandem.config import Profile, init_home, list_profiles, load_profile
from tandem.errors import AlreadyRunning, ServerError
from tandem.server.pidlock import running_pid

PAIR = "haprofile1"
PROJECT = "hello"
STOP_DEADLINE = 20.0  # the supervisor gives its server 15 s (STOP_GRACE) before killing it


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the demo topology (AMS pair, AGS pair, backend, sample API)")
    p.add_argument("--backend-port", type=int, default=0, help="sample backend port (default: any free one)")
    p.add_argument("--exit-after-setup", action="store_true", help="stop everything once the demo is ready")
    p.set_defaults(func=run)


class _Backend(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"message": "hello from the sample backend", "method": self.command,
                           "path": self.path, "x_forwarded_for": self.headers.get("X-Forwarded-For"),
                           "consumer": self.headers.get("X-Consumer-Name")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class Demo:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.procs: list[tuple[Profile, subprocess.Popen[bytes]]] = []  # the supervisors
        self.backend: ThreadingHTTPServer | None = None

    def profile(self, half: str, mode: str) -> Profile:
        return load_profile(self.home, f"{PAIR}/{half}/{mode}")

    def check_free(self) -> None:
        """An earlier demo (or `tandem server`) still running on these profiles: say so, start nothing."""
        for mode in ("AMS", "AGS"):
            for half in ("primary", "secondary"):
                prof = self.profile(half, mode)
                for f in ("supervisor.pid", "server.pid"):
                    pid = running_pid(prof.run_dir / f)
                    if pid:
                        raise AlreadyRunning(f"profile {prof.name} already has a server running (pid {pid}); "
                                             f"stop the other demo, or 'tandem --home {self.home} server stop "
                                             f"-mode {mode} -profile {PAIR}/{half}'")

    def start_server(self, half: str, mode: str, env: dict[str, str]) -> None:
        """The server under its supervisor, which restarts it when it dies; the supervisor is our child."""
        prof = self.profile(half, mode)
        log = self.home / "demo-logs" / f"{PAIR}-{half}-{mode}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "ab") as f:
            proc = subprocess.Popen(supervised_command(self.home, prof), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                    start_new_session=True)
        self.procs.append((prof, proc))

    def wait_serving(self, mode: str, timeout: float = 30) -> Profile:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for half in ("primary", "secondary"):
                prof = self.profile(half, mode)
                try:
                    if httpx.get(f"{prof.ha_url}/ha/active", timeout=0.5).status_code == 200:
                        return prof
                except httpx.HTTPError:
                    pass
            for prof, proc in self.procs:
                if proc.poll() is not None:
                    raise ServerError(f"{prof.name} exited with code {proc.returncode}; "
                                      f"see {self.home}/demo-logs/")
            time.sleep(0.1)
        raise ServerError(f"no {mode} of {PAIR} became active within {timeout:.0f} s; see {self.home}/demo-logs/")

    def states(self) -> list[str]:
        lines = []
        for mode in ("AMS", "AGS"):
            for half in ("primary", "secondary"):
                prof = self.profile(half, mode)
                try:
                    st = httpx.get(f"{prof.ha_url}/ha/status", timeout=0.5).json()
                    lines.append(f"{prof.name:26} {st['state']:12} epoch={st['epoch']:<3} lsn={st['lsn']:<5} "
                                 f"pid={st.get('pid')}")
                except (httpx.HTTPError, ValueError):
                    lines.append(f"{prof.name:26} {'down':12}")
        return lines

    def stop(self) -> None:
        """SIGTERM to each supervisor (it stops its server, then exits); what is left after
        STOP_DEADLINE s, or at a second Ctrl-C, is killed by pid."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        try:
            for _, proc in self.procs:
                proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"some servers did not stop within {STOP_DEADLINE:.0f} s: killing them", flush=True)
            self.kill()
        except KeyboardInterrupt:
            print("interrupted again: killing the servers", flush=True)
            self.kill()
        if self.backend is not None:
            self.backend.shutdown()

    def kill(self) -> None:
        """SIGKILL every supervisor (so none starts its server again), then every server (its pid
        file names it while it holds the file's lock), and reap the supervisors."""
        for sig in (signal.SIGINT, signal.SIGTERM):  # this is already the forced way out
            signal.signal(sig, signal.SIG_IGN)
        for prof, proc in self.procs:
            pid = running_pid(prof.run_dir / "server.pid")
            if proc.poll() is None:
                proc.kill()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for _, proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _admin_token(home: Path) -> str:
    """The pair's admin token: the one an earlier demo stored, else a new one."""
    for half in ("primary", "secondary"):
        f = Path(load_profile(home, f"{PAIR}/{half}/AMS").db_path) / "admin.token"
        if f.exists() and f.read_text().strip():
            return f.read_text().strip()
    return secrets.token_hex(20)  # hex: never starts with "-" on a command line


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    home: Path = args.home
    # Ctrl-C, and a plain `kill` too, stop everything the demo started (a shell that starts the
    # demo in the background may have left SIGINT ignored: Ctrl-C here means stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if not (home / "profiles").exists() or not list_profiles(home):
        init_home(home)
        print(f"created a Tandem home at {home}")
    demo = Demo(home)
    demo.check_free()
    token = _admin_token(home)
    try:
        demo.backend = ThreadingHTTPServer(("127.0.0.1", args.backend_port), _Backend)
        threading.Thread(target=demo.backend.serve_forever, daemon=True).start()
        backend_url = f"http://127.0.0.1:{demo.backend.server_address[1]}"
        env = {"TANDEM_ADMIN_TOKEN": token}
        for half in ("primary", "secondary"):
            demo.start_server(half, "AMS", env)
        ams = demo.wait_serving("AMS")
        urls = ";".join(demo.profile(h, "AMS").client_url for h in ("primary", "secondary"))
        api = httpx.Client(base_url=ams.client_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        gw_token = api.post("/api/v1/gateway-tokens", json={"name": "demo-gateways"}).json().get("token", token)
        for half in ("primary", "secondary"):
            demo.start_server(half, "AGS", {"TANDEM_GATEWAY_TOKEN": gw_token})
        key = _sample_api(api, backend_url)
        ags = demo.wait_serving("AGS")
        ags_peer = next(demo.profile(h, "AGS") for h in ("primary", "secondary")
                        if demo.profile(h, "AGS").name != ags.name)
        curl = f"curl -s -H 'X-API-Key: {key}' {ags.client_url}/{PROJECT}/greeting"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{ags.client_url}/{PROJECT}/greeting", headers={"X-API-Key": key},
                             timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise ServerError(f"the gateway did not serve /{PROJECT} within 30 s; see {home}/demo-logs/")
        settle = time.monotonic() + 15  # let each passive catch up before showing the states
        while time.monotonic() < settle and sum(("Active" in x or "Passive" in x) for x in demo.states()) < 4:
            time.sleep(0.1)
        print(f"""
Tandem demo is up (home {home}, logs in {home}/demo-logs/)

  console              {ams.client_url}/console   sign in with the token: {token}
  admin API docs       {ams.client_url}/docs   (Authorization: Bearer <the token>)
  AMS URLs             {urls}
  gateway              {ags.client_url}   (after a failover: {ags_peer.client_url})
  try it               {curl}
  CLI                  tandem --home {home} api --url '{urls}' --token {token} projects list
  status               tandem --home {home} status

HA states:""")
        print("\n".join("  " + line for line in demo.states()), flush=True)
        if args.exit_after_setup:
            return 0
        print("\nCtrl-C stops everything the demo started. Kill an active server (kill -9 <its pid>) to watch "
              "the failover:\nits peer takes over, and its supervisor starts it again, back as Passive.", flush=True)
        last = demo.states()
        while True:
            time.sleep(0.5)
            now = demo.states()
            for old, new in zip(last, now, strict=True):
                if old != new:
                    print(f"{time.strftime('%H:%M:%S')}  {new}", flush=True)
            last = now
    except KeyboardInterrupt:
        print("\nstopping the demo...")
        return 0
    finally:
        demo.stop()


def _sample_api(api: httpx.Client, backend_url: str) -> str:
    """A consumer with a key, a project in front of the backend, deployed. Returns the key."""
    if api.get("/api/v1/consumers/demo-app").status_code == 404:
        api.post("/api/v1/consumers", json={"name": "demo-app", "description": "the demo's consumer"})
    key = api.post("/api/v1/consumers/demo-app/keys").json()["key"]
    project = {"name": PROJECT, "version": "1.0", "context_path": f"/{PROJECT}",
               "targets": [{"url": f"{backend_url}/api", "weight": 1}], "policies": _demo_policies()}
    if api.get(f"/api/v1/projects/{PROJECT}").status_code == 404:
        r = api.post("/api/v1/projects", json=project)
    else:
        r = api.put(f"/api/v1/projects/{PROJECT}", json=project)
    if r.status_code >= 300:
        raise ServerError(f"could not create the sample project: {r.status_code} {r.text[:200]}")
    r = api.post(f"/api/v1/projects/{PROJECT}/deploy", json={"environment": "default"})
    if r.status_code >= 300:
        raise ServerError(f"could not deploy the sample project: {r.status_code} {r.text[:200]}")
    return str(key)


def _demo_policies() -> list[dict[str, Any]]:
    """The sample API needs the consumer's key and is rate limited per consumer."""
    return [{"type": "api-key"}, {"type": "rate-limit", "limit": 20, "window": 1, "unit": "second",
                                  "by": "consumer"}]
