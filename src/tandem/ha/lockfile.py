"""The LockFile: a POSIX `fcntl` lock on a file on the gateway machine's share.

Why `fcntl` (lockf) and not `flock`: NFSv4 and SMB carry POSIX byte-range
locks to the server; `flock` is local-only on many of them.

The file holds one JSON record, rewritten by the holder:
`{"epoch", "holder", "in_sync", "forced", "acquired_at", "verified_at"}`.
`epoch` is +1 on every acquisition (rule 2). `in_sync` names the servers whose
stores hold every write acknowledged in this epoch; a replicated server not in
it must not activate on its own (rule 5). An empty file is epoch 0, no holder.

Every operation that touches the file runs in a worker thread under a hard
timeout (`LockIOTimeout`): a hung share cannot stall the HA loop. A thread
that outlives its timeout is abandoned; if it later acquires the lock, it
releases it at once.

POSIX locks belong to the process and are dropped when *any* descriptor of
the file is closed, so while holding we only ever use the held descriptor.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import LockError, LockFileMissing

RECORD_SIZE = 1024  # one fixed-size block, rewritten by a single pwrite: never a torn tail


@dataclass
class LockRecord:
    epoch: int = 0
    holder: str = ""
    in_sync: list[str] = field(default_factory=list)
    forced: bool = False
    acquired_at: float = 0.0
    verified_at: float = 0.0
    #: the file holds something that is not a Tandem record: its epoch and in-sync
    #: set are unknown, which never counts as permission to activate (rule 5)
    unreadable: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> LockRecord:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return cls()  # a new, empty LockFile: epoch 0, nobody has served
        try:
            d = json.loads(text)
            return cls(int(d.get("epoch", 0)), str(d.get("holder", "")), [str(x) for x in d.get("in_sync", [])],
                       bool(d.get("forced", False)), float(d.get("acquired_at", 0)),
                       float(d.get("verified_at", 0)))
        except (ValueError, TypeError, AttributeError):
            return cls(unreadable=True)

    def lets_activate(self, name: str) -> bool:
        """Rule 5, replicated mode: may server `name` activate on its own? Only if nobody
        ever served (epoch 0), the record names it in sync, or it was the last holder and
        the record names nobody in sync. An unreadable record never allows it."""
        if self.unreadable:
            return False
        return self.epoch == 0 or name in self.in_sync or (not self.in_sync and self.holder == name)

    def waiting_reason(self, path: str) -> str:
        """Why a server the record does not let activate waits (for `/ha/status`)."""
        if self.unreadable:
            return (f"the LockFile {path} holds no readable Tandem record: whether our store has "
                    "every acknowledged write is unknown (fix the file or `tandem ha force-activate`)")
        return (f"store may miss acknowledged writes: the last active {self.holder or '?'} (epoch {self.epoch}) "
                f"recorded only {self.in_sync} in sync; waiting for it to return "
                "(or `tandem ha force-activate`)")

    def encode(self) -> bytes:
        body = {k: v for k, v in self.__dict__.items() if k != "unreadable"}
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        if len(data) > RECORD_SIZE:
            raise LockError(f"LockFile record too large ({len(data)} bytes)")
        return data.ljust(RECORD_SIZE, b" ")


def check_lockfile(path: str) -> None:
    """Rule 8: the LockFile must exist; never create a local one."""
    p = Path(path)
    if not p.parent.is_dir():
        raise LockFileMissing(f"LockFile folder {p.parent} does not exist (is the gateway share mounted?)")
    if not p.is_file():
        raise LockFileMissing(f"LockFile {p} does not exist; create it on the gateway machine's share")


class LockFile:
    def __init__(self, path: str, holder: str, io_timeout: float) -> None:
        self.path = path
        self.holder = holder
        self.io_timeout = io_timeout
        self.fd: int | None = None
        self.ino: int | None = None
        self.record = LockRecord()
        # One thread per LockFile: every descriptor operation is serialised, so an
        # abandoned (timed-out) call can never close a descriptor under a newer lock.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockfile")
        self._claimed = False  # set on the LockFile thread once claim() wrote our record
        self._releasing = False

    def __repr__(self) -> str:
        return f"<LockFile {self.path} held={self.fd is not None} epoch={self.record.epoch}>"

    @property
    def held(self) -> bool:
        return self.fd is not None and not self._releasing

    async def _run(self, fn: Any, *args: Any) -> Any:
        fut: Future[Any] = self._pool.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.io_timeout)
        except TimeoutError:
            fut.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, fut: Future[Any]) -> None:
        """A timed-out acquisition that succeeded later: give the lock back. Runs on
        the LockFile thread right after the call, before anything queued behind it."""
        if not fut.cancelled() and fut.exception() is None and fut.result() is True and not self._claimed:
            self._release_now()

    # ---- everything below that touches descriptors runs on the LockFile thread ----
    def _try_lock(self) -> bool:
        if self.fd is not None:
            return True
        check_lockfile(self.path)
        fd = os.open(self.path, os.O_RDWR)
        try:
            got = True
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                got = False
            self.record = LockRecord.parse(os.pread(fd, 4096, 0))
        except BaseException:
            os.close(fd)
            raise
        if not got:
            os.close(fd)  # we hold nothing on this file: closing drops nothing of ours
            return False
        self.fd, self.ino, self._claimed = fd, os.fstat(fd).st_ino, False
        return True

    async def try_lock(self) -> bool:
        """Take the lock if it is free, without writing. Either way `self.record` is
        the record found in the file. The caller then `claim()`s or `release()`s."""
        got: bool = await self._run(self._try_lock)
        return got

    def _read(self) -> LockRecord:
        if self.fd is not None:
            return self.record  # never open a second descriptor while holding
        check_lockfile(self.path)
        with open(self.path, "rb") as f:
            self.record = LockRecord.parse(f.read(4096))
        return self.record

    async def read(self) -> LockRecord:
        """The current record (a passive learns whether it is in sync)."""
        rec: LockRecord = await self._run(self._read)
        return rec

    def _write(self, rec: LockRecord) -> None:
        """Write `rec` and make it `self.record`, both on the LockFile thread: a
        verification queued right behind must rewrite *this* record, not the old one."""
        assert self.fd is not None
        data = rec.encode()
        os.pwrite(self.fd, data, 0)  # fixed size: one write, no truncate window
        if os.fstat(self.fd).st_size > len(data):
            os.ftruncate(self.fd, len(data))  # only ever shrinks a foreign or old-format file
        os.fsync(self.fd)
        self.record = rec

    async def claim(self, in_sync: list[str], forced: bool = False, floor: int = 0) -> int:
        """Under the lock: epoch + 1, us as holder, written and fsynced. Returns the epoch.
        `floor` is the highest epoch the caller knows (its store, its peer): the new
        epoch is above it even if the file was reset or is unreadable."""
        now = time.time()
        rec = LockRecord(max(self.record.epoch, floor) + 1, self.holder, in_sync, forced, now, now)
        await self._run(self._write, rec)
        self._claimed = True
        return rec.epoch

    def _set_in_sync(self, in_sync: list[str], epoch: int) -> None:
        # checked on the LockFile thread, right before the write: a release queued (or
        # begun) since the caller decided, or another epoch, means the record is no
        # longer ours to change; a peer may be reading it to decide whether to activate
        if self.fd is None or not self._claimed or self._releasing:
            raise LockError("the lock is no longer held: in-sync set not changed")
        if self.record.epoch != epoch:
            raise LockError(f"the lock is at epoch {self.record.epoch}, not {epoch}: in-sync set not changed")
        self._write(LockRecord(**{**self.record.__dict__, "in_sync": list(in_sync), "verified_at": time.time()}))

    async def set_in_sync(self, in_sync: list[str], epoch: int) -> None:
        """Record who is in sync (rule 5), only while we hold the claimed lock at `epoch`.
        Raises LockError when the lock is no longer ours (releasing, or another epoch),
        TimeoutError or OSError when the write could not finish."""
        await self._run(self._set_in_sync, in_sync, epoch)

    # ---- verification ----
    def _verify(self) -> str | None:
        if self.fd is None or self.ino is None:
            return "lock not held"
        st = os.stat(self.path)  # the path, not the fd: a replaced file has a new inode
        if st.st_ino != self.ino:
            return f"LockFile {self.path} was replaced (inode {self.ino} -> {st.st_ino})"
        found = LockRecord.parse(os.pread(self.fd, 4096, 0))
        if found.holder != self.holder or found.epoch != self.record.epoch:
            return f"LockFile now says holder={found.holder!r} epoch={found.epoch}"
        self._write(LockRecord(**{**self.record.__dict__, "verified_at": time.time()}))
        return None

    def verify_blocking(self) -> str | None:
        """`verify()` for a plain thread (the controller's verifier): same contract,
        raises TimeoutError after the I/O timeout."""
        if not self.held:
            return "lock not held"
        try:
            res: str | None = self._pool.submit(self._verify).result(timeout=self.io_timeout)
        except FutureTimeout:
            raise TimeoutError(f"LockFile verification took longer than {self.io_timeout * 1000:.0f} ms") from None
        return res

    async def verify(self) -> str | None:
        """None when the lock is provably still ours (same inode, our record, a
        write+fsync that finished within the timeout); else why not. Raises
        TimeoutError or OSError when the check could not finish."""
        if not self.held:
            return "lock not held"
        res: str | None = await self._run(self._verify)
        return res

    def _release_now(self) -> None:
        fd, self.fd, self.ino, self._claimed = self.fd, None, None, False
        if fd is None:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    def release(self) -> None:
        """Drop the lock. Never waits: the unlock is queued on the LockFile's thread
        behind any call still in flight on the descriptor; from now on `held` is False
        for the caller."""
        self._releasing = True
        self._pool.submit(self._release_now).add_done_callback(lambda f: setattr(self, "_releasing", False))

    def close(self) -> None:
        self.release()
        self._pool.shutdown(wait=False)


def preflight(profile: Any) -> None:
    """Checks that must fail a server's start with exit 2 (rule 8): the LockFile of an HA profile."""
    if profile.ha.Type != "none":
        check_lockfile(profile.ha.LockFile)
