"""The process harness for system tests, fault tests and benchmarks: real `tandem server`
processes started through the CLI, and the echo backend as a process.

    home = Home(path)                          # a home made by `init_home` (+ `fresh_ports`)
    active, passive = home.start_pair("haprofile1", "AMS")
    ...
    with CliCluster.started(tmp_path) as c:    # the standalone server1 AMS + AGS of a fresh home
        c.deploy("pets", "/pets", echo_url)
        c.gateway_get("/pets/x")
    with echo_backend(log) as (url, proc):     # tests/support/echo.py in its own process
        ...

Every process is stopped by pid (`stop_process`: SIGTERM, then SIGKILL after a
deadline). Waiting is always polling with a deadline (`wait_for`, and `wait_for_async` inside an event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tandem.config import configure_ha, load_profile, set_profile_values

ECHO = Path(__file__).resolve().with_name("echo.py")  # run by path: works from any cwd, no PYTHONPATH

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same one twice in this process (the
    kernel may offer a just-closed port again, and a pair needs four distinct ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tandem_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tandem.cli.main", "--home", str(home), *args]


def run_cli(home: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tandem_cmd(home, *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def http_get(url: str, timeout: float = 0.5) -> tuple[int, Any]:
    """(status, parsed JSON or text); (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    except (OSError, ValueError) as e:
        return 0, str(e)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# What a check may raise while the thing awaited is not there yet (a port not open, a
# body not JSON yet, a key not there yet): counted as "not yet". Anything else is a bug
# or a verdict (a process that exited) and fails the wait at once.
NOT_YET: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError, ValueError, LookupError)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02,
             not_yet: tuple[type[BaseException], ...] = NOT_YET) -> Any:
    """Poll `pred()` every `interval` s until it returns a truthy value, and return that value.
    After `timeout` s: AssertionError naming `what` and the last value (or exception) seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = pred()
        except not_yet as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _not_within(timeout, what, last)
        time.sleep(interval)


async def wait_for_async(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02,
                         not_yet: tuple[type[BaseException], ...] = NOT_YET) -> Any:
    """`wait_for` inside an event loop: `check()` may return a value or an awaitable of one;
    the loop runs between polls."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except not_yet as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _not_within(timeout, what, last)
        await asyncio.sleep(interval)


def _not_within(timeout: float, what: str, last: Any) -> AssertionError:
    error = AssertionError(f"not within {timeout} s: {what} (last: {last!r})")
    if isinstance(last, BaseException):
        error.__cause__ = last
    return error


def holds_for(pred: Callable[[], Any], seconds: float, what: str, interval: float = 0.05) -> None:
    """A bounded observation: `pred` must stay true for `seconds`, checked every `interval`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), f"stopped holding: {what}"
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """Stop one process by pid: SIGCONT (it may be paused) and SIGTERM, wait `timeout` s,
    then SIGKILL. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@dataclass
class Server:
    """One `tandem server -nobackground` process (or a background one's supervisor)."""

    home: Path
    profile: str  # full name, e.g. haprofile_shared/primary/AMS
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def prof(self) -> Any:
        return load_profile(self.home, self.profile)

    @property
    def ha(self) -> str:
        return str(self.prof.ha_url)

    @property
    def client_port(self) -> int:
        return int(self.prof.server.ClientPort)

    def start(self, env: dict[str, str] | None = None) -> Server:
        mode = self.profile.rsplit("/", 1)[1]
        name = self.profile.rsplit("/", 1)[0]
        self.log = self.home / f"{self.profile.replace('/', '_')}.{int(time.time() * 1000)}.log"
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                tandem_cmd(self.home, "server", "-mode", mode, "-profile", name, "-nobackground", *self.extra),
                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        code, body = http_get(f"{self.ha}/ha/status")
        return body if code == 200 and isinstance(body, dict) else None

    def active_code(self) -> int:
        return http_get(f"{self.ha}/ha/active")[0]

    def state(self) -> str | None:
        st = self.status()
        return st["state"] if st else None

    def wait_state(self, *states: str, timeout: float = 10) -> dict[str, Any]:
        st: dict[str, Any] = wait_for(lambda: (x := self.status()) and x["state"] in states and x,
                                      timeout, f"{self.profile} in {states}")
        return st

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


class Watcher(threading.Thread):
    """Samples servers' /ha/status every 50 ms; finds split brain and epochs going back."""

    def __init__(self, servers: list[Server], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.servers, self.interval = servers, interval
        self.samples: list[tuple[float, list[tuple[bool, int | None]]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        urls = [s.ha for s in self.servers]
        while not self._halt.is_set():
            t = time.monotonic()
            row = []
            for u in urls:
                code, body = http_get(f"{u}/ha/status", timeout=0.2)
                row.append((bool(body.get("serving")), body.get("epoch")) if code == 200 else (False, None))
            self.samples.append((t, row))
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def check(self) -> None:
        assert len(self.samples) > 10, "watcher took too few samples"
        last_epoch: list[int] = [0] * len(self.servers)
        for t, row in self.samples:
            serving = [i for i, (s, _) in enumerate(row) if s]
            assert len(serving) <= 1, f"split brain at t={t:.3f}: {row}"
            for i, (_, e) in enumerate(row):
                if e is not None:
                    # a restarted process may know a lower epoch for a moment only if it never served;
                    # the rule checked: a serving server's epoch never goes back.
                    if row[i][0]:
                        assert e >= last_epoch[i], f"epoch went back on {self.servers[i].profile}: {e} < {last_epoch[i]}"
                        last_epoch[i] = e


@dataclass
class Home:
    path: Path
    servers: list[Server] = field(default_factory=list)

    def server(self, profile: str, *extra: str) -> Server:
        s = Server(self.path, profile, extra=list(extra))
        self.servers.append(s)
        return s

    def pair(self, pair: str, component: str) -> tuple[Server, Server]:
        return self.server(f"{pair}/primary/{component}"), self.server(f"{pair}/secondary/{component}")

    def lockfile(self, pair: str, component: str) -> Path:
        return Path(load_profile(self.path, f"{pair}/primary/{component}").ha.LockFile)

    def in_sync(self, pair: str, component: str) -> list[str]:
        """The servers the pair's LockFile record names in sync ([] when unreadable)."""
        try:
            found = json.loads(self.lockfile(pair, component).read_text())["in_sync"]
        except (OSError, ValueError, KeyError):
            return []
        return [str(x) for x in found]

    def start_pair(self, pair: str, component: str, env: dict[str, str] | None = None,
                   timeout: float = 15) -> tuple[Server, Server]:
        """Start both halves of a replicated pair; return (active, passive) once the
        LockFile names both in sync (the primary wins the start)."""
        p, s = self.pair(pair, component)
        p.start(env=env)
        s.start(env=env)
        p.wait_state("Active", timeout=timeout)
        s.wait_state("Passive", timeout=timeout)
        wait_for(lambda: len(self.in_sync(pair, component)) == 2, timeout, f"{pair}/{component} in sync")
        return p, s

    def cleanup(self) -> None:
        for s in self.servers:
            s.stop()


def fresh_ports(home: Path) -> None:
    """Move every default profile to free ports, so tests never collide with a running demo."""
    for pair, comps in (("haprofile1", ("AMS", "AGS")), ("haprofile2", ("AGS",)),
                        ("haprofile_shared", ("AMS", "AGS"))):
        for comp in comps:
            typ = "shared" if pair.endswith("shared") else "replicated"
            sets = [f"{half}.{k}={free_port()}" for half in ("primary", "secondary")
                    for k in ("ClientPort", "HAPort")]
            configure_ha(home, pair, comp, typ, sets)
    for comp in ("AMS", "AGS"):
        set_profile_values(home, f"server1/{comp}", [f"server.ClientPort={free_port()}",
                                                     f"server.HAPort={free_port()}"])
    ams = load_profile(home, "server1/AMS")
    set_profile_values(home, "server1/AGS", [f"ha.PrimaryURL={ams.client_url}"])
    p, s = (load_profile(home, f"haprofile1/{h}/AMS") for h in ("primary", "secondary"))
    for name in ("haprofile1/primary/AGS", "haprofile1/secondary/AGS", "haprofile2/primary/AGS",
                 "haprofile2/secondary/AGS", "haprofile_shared/primary/AGS", "haprofile_shared/secondary/AGS"):
        set_profile_values(home, name, [f"ha.PrimaryURL={p.client_url}", f"ha.BackupURLs={s.client_url}"])


class CliCluster:
    """An AMS and an AGS (the standalone `server1` profiles of a fresh home) started through the CLI.

        with CliCluster(tmp_path) as c:             # home init, free ports, AGS wired to the AMS
            c.start("AMS"); c.start("AGS")
            c.api.post("/api/v1/projects", json=...)
            c.gateway_get("/pets/x")
            c.stop("AMS")                            # by pid, SIGTERM then SIGKILL

    Every process is started with `-nobackground`, its output in `<tmp>/logs/`,
    and stopped by pid on `close()`.
    """

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
        done = run_cli(self.home, *args)
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
        with open(self.logs / f"{mode}-{self.starts}.log", "w") as out:
            proc = subprocess.Popen(tandem_cmd(self.home, "server", "-mode", mode, "-profile", "server1",
                                               "-nobackground"), stdout=out, stderr=subprocess.STDOUT, env=full_env)
        self.procs[mode] = proc
        if wait:
            def active() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"{mode} exited with {proc.returncode}: {self.log_text(mode)[-2000:]}")
                return httpx.get(self.ha_url(mode) + "/ha/active", timeout=2).status_code == 200
            wait_for(active, wait, f"{mode} serving", interval=0.05)
            if mode == "AMS":  # the first request bootstraps the admin token
                token = self.profile_dir("AMS") / "data" / "admin.token"
                wait_for(lambda: httpx.get(self.ams_url + "/api/v1/health", timeout=2) and token.exists(),
                         10, "admin token", interval=0.05)
        return proc

    def stop(self, mode: str) -> None:
        proc = self.procs.pop(mode, None)
        if proc is not None:
            stop_process(proc, 15)

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
        wait_for(lambda: self.api.get(f"/api/v1/deployments/{dep}").json()["status"] == "deployed", 10,
                 f"{name} deployed", interval=0.05)

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


def echo_cmd(port: int, name: str = "echo", host: str = "127.0.0.1", log: Path | None = None) -> list[str]:
    """The command line of an echo backend process (tests/support/echo.py, run by path)."""
    return [sys.executable, str(ECHO), "--host", host, "--port", str(port), "--name", name,
            *(["--log", str(log)] if log is not None else [])]


@contextlib.contextmanager
def echo_backend(log_path: Path | None, name: str = "echo") -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """An echo backend process; yields its base URL and process. Stopped by pid on exit."""
    port = free_port()
    proc = subprocess.Popen(echo_cmd(port, name, log=log_path), stdout=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"echo backend exited with {proc.returncode}")
            return port_open(port, timeout=1)
        wait_for(listening, 15, f"echo backend on port {port}", interval=0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc, 15)


def logged_requests(log_path: Path) -> list[dict[str, Any]]:
    """What an echo backend started with a log received, one dict per request."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is not a package), for the tests of its pure helpers."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[2] / "bench"
                                                  / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod
