"""The supervisor of a background server: a watchdog that kills a hung server.

The server writes a byte down a pipe from its event loop every
WatchdogTimeout/5. If the supervisor hears nothing for WatchdogTimeout
(process stopped with SIGSTOP, event loop stalled, HA loop stuck), it kills
the server with SIGKILL: the kernel then drops its LockFile lock and the peer
takes over. A server that dies (killed or crashed) is started again after a
short backoff and comes back passive; one that exits 0 (a requested stop)
ends the supervisor. Restarts are bounded: more than MAX_RESTARTS within
RESTART_WINDOW s and the supervisor gives up, saying so.

Exit 2 means the server refused to start (bad configuration, or rule 8: the
LockFile or its folder is missing). On the first start that ends the
supervisor: the operator sees the error. A server that has run before and
refuses to *restart* is retried with a growing backoff (up to RETRY_MAX s),
not counted against the restart budget: a share that is briefly unmounted
when the watchdog restarts a hung server must not leave the pair one server
short for good.

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
RETRY_MAX = 5.0
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

    def _watch(self, rfd: int) -> tuple[int, bool]:
        """Watch one child until it exits; returns its exit code and whether it ever reported."""
        assert self.child is not None
        last = time.monotonic()
        heard = False
        while True:
            code = self.child.poll()
            if code is not None:
                return code, heard
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
                return -signal.SIGKILL, heard
            if self.stop_requested and silent > STOP_GRACE:
                say(f"server pid {self.child.pid} did not stop within {STOP_GRACE:.0f} s: killing it")
                self.child.kill()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        restarts: list[float] = []
        ran = False  # the server has started and reported at least once
        retry = 0.0
        while True:
            rfd = self._spawn()
            try:
                code, heard = self._watch(rfd)
            finally:
                os.close(rfd)
            ran = ran or heard
            if self.stop_requested or code == 0:
                say(f"server exited with code {code}; supervisor done")
                return 0 if code == 0 else code
            if code == 2 and not ran:
                say("server refused to start (exit 2, bad configuration): not restarting")
                return 2
            if code == 2:
                retry = min(RETRY_MAX, retry * 2 or 0.5)
                say(f"server refused to restart (exit 2; its last lines say why, e.g. the LockFile's share "
                    f"is not mounted): retrying in {retry:.1f} s")
                delay = retry
            else:
                retry = 0.0
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
                if len(restarts) > MAX_RESTARTS:
                    say(f"server died {len(restarts)} times within {RESTART_WINDOW:.0f} s: giving up")
                    return 1
                say(f"server exited with code {code}: restarting in 0.5 s")
                delay = 0.5
            deadline = time.monotonic() + delay
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
