"""LockFile on real files, with a second process as the other holder (POSIX locks
belong to processes, so the competitor must be one)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.errors import LockFileMissing
from tandem.ha.lockfile import RECORD_SIZE, LockFile, LockRecord

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def lockpath(tmp_path: Path) -> Path:
    p = tmp_path / "share" / "AMS.lock"
    p.parent.mkdir()
    p.touch()
    return p


def test_missing_file_or_folder_is_an_error_never_created(tmp_path: Path) -> None:
    for path in (tmp_path / "AMS.lock", tmp_path / "nofolder" / "AMS.lock"):
        lf = LockFile(str(path), "me", 0.5)
        with pytest.raises(LockFileMissing, match=str(path.parent if "nofolder" in str(path) else path)):
            run(lf.try_lock())
        assert not path.exists()


def test_claim_increments_epoch_and_verify(lockpath: Path) -> None:
    async def go() -> None:
        lf = LockFile(str(lockpath), "me", 0.5)
        assert await lf.try_lock()
        assert await lf.claim(["me"]) == 1
        assert await lf.verify() is None
        rec = json.loads(lockpath.read_text())
        assert rec["epoch"] == 1 and rec["holder"] == "me" and rec["in_sync"] == ["me"]
        assert lockpath.stat().st_size == RECORD_SIZE
        lf.release()
        await asyncio.sleep(0.05)
        lf2 = LockFile(str(lockpath), "other", 0.5)
        assert await lf2.try_lock()
        assert await lf2.claim(["other"]) == 2
        assert await lf2.claim(["other"], floor=10) == 11, "never below an epoch the caller knows"
        lf2.close()

    run(go())


def test_held_by_another_process(lockpath: Path) -> None:
    LockFile(str(lockpath), "x", 0.5)
    lockpath.write_text(json.dumps({"epoch": 7, "holder": "peer", "in_sync": ["peer"]}))
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(lockpath)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        lf = LockFile(str(lockpath), "me", 0.5)
        assert run(lf.try_lock()) is False
        assert lf.record.epoch == 7 and lf.record.holder == "peer" and not lf.held
    finally:
        child.kill()
        child.wait(5)
    lf = LockFile(str(lockpath), "me", 0.5)
    assert run(lf.try_lock()) is True  # the kernel dropped the dead holder's lock
    lf.close()


def test_verify_detects_replaced_file_and_foreign_record(lockpath: Path) -> None:
    async def go() -> None:
        lf = LockFile(str(lockpath), "me", 0.5)
        assert await lf.try_lock()
        await lf.claim(["me"])
        with open(lockpath, "r+b") as f:  # someone else rewrote the record
            f.write(json.dumps({"epoch": 9, "holder": "intruder"}).encode().ljust(RECORD_SIZE))
        why = await lf.verify()
        assert why is not None and "intruder" in why
        lf.close()

        lf = LockFile(str(lockpath), "me2", 0.5)
        assert await lf.try_lock()
        await lf.claim(["me2"])
        new = lockpath.with_suffix(".new")
        new.write_text("")
        os.replace(new, lockpath)  # a new inode at the path
        why = await lf.verify()
        assert why is not None and "replaced" in why
        lf.close()

    run(go())


def test_unreadable_record_is_not_permission(lockpath: Path) -> None:
    lockpath.write_text("created by the admin: AMS lock, do not delete")
    lf = LockFile(str(lockpath), "me", 0.5)
    run(lf.read())
    assert lf.record.unreadable and lf.record.epoch == 0
    assert LockRecord.parse(b"") == LockRecord() and not LockRecord.parse(b"").unreadable
    # a torn write of the old format (new JSON + old tail) reads as unreadable, not as epoch 0
    torn = json.dumps({"epoch": 3, "holder": "a", "in_sync": ["a"]}) + '"]}'
    assert LockRecord.parse(torn.encode()).unreadable


def test_io_timeout_is_enforced(lockpath: Path) -> None:
    lf = LockFile(str(lockpath), "me", 0.05)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        run(lf._run(time.sleep, 0.5))  # a hung share: the caller is not held hostage
    assert time.monotonic() - t0 < 0.3
    lf.close()


def test_in_sync_set_changes_only_under_the_claimed_lock_at_its_epoch(lockpath: Path) -> None:
    """A server stepping down must not change who is in sync: a record written after
    the release was decided would leave the peer reading itself out of sync (Waiting)."""
    from tandem.errors import LockError

    async def scenario() -> None:
        lf = LockFile(str(lockpath), "a", 1.0)
        assert await lf.try_lock()
        epoch = await lf.claim(["a", "b"])
        with pytest.raises(LockError, match="epoch"):
            await lf.set_in_sync(["a"], epoch - 1)
        await lf.set_in_sync(["a", "b"], epoch)  # the holder at its epoch may
        lf.release()  # the release is queued (maybe not done yet): the record is no longer ours
        with pytest.raises(LockError, match="no longer held"):
            await lf.set_in_sync(["a"], epoch)
        lf.close()

    run(scenario())
    assert json.loads(lockpath.read_text())["in_sync"] == ["a", "b"]
