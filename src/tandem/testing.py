"""Harness for system tests and benchmarks: real `tandem server` processes started through the CLI.

Every process a test starts is stopped by pid at teardown (SIGTERM, then
SIGKILL after a deadline). Waiting is always polling with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.config import configure_ha, load_profile, set_profile_values

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


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")


def holds_for(pred: Callable[[], Any], seconds: float, what: str, interval: float = 0.05) -> None:
    """A bounded observation: `pred` must stay true for `seconds`, checked every `interval`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), f"stopped holding: {what}"
        time.sleep(interval)


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
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

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


