"""One server per profile: a pid file held under a POSIX lock while the server lives.

The lock, not the file's existence, says a server runs: a server killed with
SIGKILL leaves its file behind but the kernel drops the lock, so the next
start is not refused by a stale pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tandem.errors import AlreadyRunning


class PidLock:
    def __init__(self, path: Path, what: str = "server") -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self, profile: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = read_pid(self.path)
            raise AlreadyRunning(
                f"profile {profile} already has a {self.what} running (pid {pid or '?'}, {self.path}); "
                f"stop it first with 'tandem server stop'") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def running_pid(path: Path) -> int | None:
    """The pid holding `path`'s lock, or None when nobody holds it (call from another process)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return read_pid(path)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
