"""The supervisor of a background server: a watchdog that kills a hung server.

The server writes a byte down a pipe from its event loop every
WatchdogTimeout/5. If the supervisor hears nothing for WatchdogTimeout
(process stopped with SIGSTOP, event loop stalled, HA loop stuck), it kills
the server with SIGKILL: the kernel then drops its LockFile lock and the peer
takes over. A server that dies (killed or crashed) is started again after a
short backoff and comes back passive; one that exits 0 (a requested stop)
ends the supervisor. Restarts are bounded: more than MAX_RESTARTS within
RESTART_WINDOW s and the supervisor gives up, saying so.

Run as `python -m tandem.server.supervisor --pidfile F --watchdog-ms N -- CMD...`.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tandem.server.pidlock import PidLock

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
STOP_GRACE = 15.0


def say(msg: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} SUPERVISOR  {msg}", flush=True)


class Supervisor:
    def __init__(self, cmd: list[str], watchdog_ms: int) -> None:
        self.cmd = cmd
        self.timeout = watchdog_ms / 1000
        self.stop_requested = False
        self.child: subprocess.Popen[bytes] | None = None

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _spawn(self) -> int:
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        env = dict(os.environ, TANDEM_WATCHDOG_FD=str(wfd))
        self.child = subprocess.Popen(self.cmd, pass_fds=(wfd,), env=env)
        os.close(wfd)
        say(f"started server pid {self.child.pid}")
        return rfd

    def _watch(self, rfd: int) -> int:
        """Watch one child until it exits; returns its exit code."""
        assert self.child is not None
        last = time.monotonic()
        heard = False
        while True:
            code = self.child.poll()
            if code is not None:
                return code
            ready, _, _ = select.select([rfd], [], [], 0.05)
            if ready:
                if os.read(rfd, 4096):
                    last, heard = time.monotonic(), True
            silent = time.monotonic() - last
            # before its first report a server may still be importing: allow a start-up grace
            limit = self.timeout if heard else max(self.timeout, 20.0)
            if silent > limit and not self.stop_requested:
                say(f"watchdog: server pid {self.child.pid} silent for {silent * 1000:.0f} ms "
                    f"(timeout {self.timeout * 1000:.0f} ms): killing it")
                self.child.kill()
                self.child.wait()
                return -signal.SIGKILL
            if self.stop_requested and silent > STOP_GRACE:
                say(f"server pid {self.child.pid} did not stop within {STOP_GRACE:.0f} s: killing it")
                self.child.kill()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        restarts: list[float] = []
        while True:
            rfd = self._spawn()
            try:
                code = self._watch(rfd)
            finally:
                os.close(rfd)
            if self.stop_requested or code == 0:
                say(f"server exited with code {code}; supervisor done")
                return 0 if code == 0 else code
            if code == 2:
                say("server refused to start (exit 2, bad configuration): not restarting")
                return 2
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > MAX_RESTARTS:
                say(f"server died {len(restarts)} times within {RESTART_WINDOW:.0f} s: giving up")
                return 1
            say(f"server exited with code {code}: restarting in 0.5 s")
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and not self.stop_requested:
                time.sleep(0.05)
            if self.stop_requested:
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tandem-supervisor")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--watchdog-ms", type=int, required=True)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    lock = PidLock(args.pidfile, "supervisor")
    lock.acquire(args.profile)
    try:
        return Supervisor(cmd, args.watchdog_ms).run()
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
