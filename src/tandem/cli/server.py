"""`tandem server [stop] -mode AMS|AGS -profile P [-nobackground] [-dbPath PATH]`.

The seed's single-dash flags are accepted as written (`-mode`, `-profile`,
`-nobackground`, `-dbPath`/`-dbpath`), and so are the GNU spellings.
Without `-nobackground` the server runs detached under its supervisor
(watchdog), with its log and pid files in `<profile>/run/`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tandem.config import Profile, load_profile, resolve_profile_name
from tandem.errors import AlreadyRunning, ServerError, UsageError
from tandem.server.pidlock import running_pid

START_DEADLINE = 20.0
STOP_DEADLINE = 20.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("server", help="start or stop a server", allow_abbrev=False)
    p.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    p.add_argument("-mode", "--mode", dest="mode", type=str.upper, choices=["AMS", "AGS"], default=None)
    p.add_argument("-profile", "--profile", dest="profile", required=True)
    p.add_argument("-nobackground", "--no-background", "--nobackground", dest="foreground",
                   action="store_true", help="run in the foreground, state changes on the console")
    p.add_argument("-dbPath", "-dbpath", "--db-path", dest="db_path", default=None,
                   help="store location (a folder or a postgresql:// URL)")
    p.set_defaults(func=run)


def _profile(args: argparse.Namespace) -> Profile:
    name = resolve_profile_name(args.profile, args.mode)
    return load_profile(args.home, name)


def _db(args: argparse.Namespace) -> str | None:
    if args.db_path is None:
        return None
    if args.db_path.startswith(("postgresql://", "postgres://")):
        return str(args.db_path)
    return str(Path(args.db_path).resolve())


def run(args: argparse.Namespace) -> int:
    profile = _profile(args)
    if args.action == "stop":
        return stop(profile)
    from tandem.ha.lockfile import preflight

    preflight(profile)  # rule 8: a missing LockFile is a start-up error (exit 2), before anything runs
    if args.foreground:
        from tandem.composition import serve

        return serve(profile, _db(args))
    return start_background(args, profile)


def _pidfiles(profile: Profile) -> tuple[Path, Path]:
    return profile.run_dir / "supervisor.pid", profile.run_dir / "server.pid"


def supervised_command(home: Path, profile: Profile, db_path: str | None = None) -> list[str]:
    """The supervisor running `profile`'s server as its child, in the foreground of whoever
    runs it: its watchdog kills a hung server and it restarts one that died (see
    `tandem.server.supervisor`). Its output and the server's go to its stdout.
    `tandem server` runs it detached; `tandem demo` runs one per server as its own child."""
    server_cmd = [sys.executable, "-m", "tandem.cli.main", "--home", str(home), "server",
                  "--mode", profile.mode, "--profile", profile.name, "--no-background"]
    if db_path:
        server_cmd += ["--db-path", db_path]
    return [sys.executable, "-m", "tandem.server.supervisor", "--pidfile", str(_pidfiles(profile)[0]),
            "--profile", profile.name, "--watchdog-ms", str(profile.ha.WatchdogTimeout), "--", *server_cmd]


def start_background(args: argparse.Namespace, profile: Profile) -> int:
    sup_pid_file, srv_pid_file = _pidfiles(profile)
    for path in (sup_pid_file, srv_pid_file):
        pid = running_pid(path)
        if pid:
            raise AlreadyRunning(f"profile {profile.name} already has a server running (pid {pid}); "
                              f"stop it first with 'tandem server stop -mode {profile.mode} "
                              f"-profile {profile.name.rsplit('/', 1)[0]}'")
    profile.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = profile.run_dir / "server.log"
    cmd = supervised_command(args.home, profile, _db(args) if args.db_path else None)
    with open(log_path, "ab") as logf:
        sup = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_DEADLINE
    import httpx

    while time.monotonic() < deadline:
        if sup.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerError(f"{profile.name} failed to start (exit {sup.returncode}); log {log_path}:\n"
                              + "\n".join(tail))
        try:
            r = httpx.get(f"{profile.ha_url}/ha/status", timeout=0.5)
            if r.status_code == 200 and r.json().get("pid") == running_pid(srv_pid_file):
                st = r.json()
                print(f"started {profile.name} ({profile.mode}) pid {st['pid']} under supervisor pid {sup.pid}: "
                      f"state {st['state']}\n  status {profile.ha_url}/ha/status\n  log    {log_path}")
                return 0
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise ServerError(f"{profile.name} did not answer on {profile.ha_url} within {START_DEADLINE:.0f} s; "
                      f"see {log_path}")


def stop(profile: Profile) -> int:
    sup_pid_file, srv_pid_file = _pidfiles(profile)
    sup_pid, srv_pid = running_pid(sup_pid_file), running_pid(srv_pid_file)
    target = sup_pid or srv_pid
    if not target:
        raise UsageError(f"no server is running on profile {profile.name}")
    os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE
    while time.monotonic() < deadline:
        if not running_pid(sup_pid_file) and not running_pid(srv_pid_file):
            print(f"stopped {profile.name} (pid {srv_pid or target})")
            return 0
        time.sleep(0.05)
    raise ServerError(f"{profile.name} (pid {target}) did not stop within {STOP_DEADLINE:.0f} s")

