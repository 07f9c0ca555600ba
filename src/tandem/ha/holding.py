"""Our hold on the LockFile: acquiring it, claiming it, the takeover wait, releasing it.

A lock just claimed is used only after the takeover wait (`TakeoverWait`, longer
than the self-fence deadline of whoever held it before): it covers a holder that
lost the lock without knowing yet. The wait is skipped only when the previous
holder provably no longer serves: it handed that very epoch over after it
stopped serving, nobody ever held the lock, or, observed after we took the lock
from our peer, the peer's HA port refuses connections (a server's HA port is
open for its whole life, so its process is gone).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tandem.config.model import HASection
from tandem.errors import LockError
from tandem.ha.lockfile import LockFile, LockRecord
from tandem.ha.lockwatch import LockWatch
from tandem.ha.peer import PeerLink


class Holding:
    def __init__(self, lock: LockFile, watch: LockWatch, peer: PeerLink, cfg: HASection,
                 console: Callable[[str], None], wake: Callable[[], None]) -> None:
        self.lock, self.watch, self.peer, self.console, self.wake = lock, watch, peer, console, wake
        self.wait, self.retry = cfg.TakeoverWait / 1000, cfg.LockRetryInterval / 1000
        self.acquired_at: float | None = None  # monotonic time of our claim
        self.skip = False  # the previous holder provably no longer serves
        self.handover_epoch: int | None = None  # the epoch the peer told us it released
        self.next_attempt = 0.0

    def takeover_elapsed(self) -> bool:
        """The lock we claimed may be used now."""
        return self.acquired_at is not None and (self.skip or time.monotonic() - self.acquired_at >= self.wait)

    async def try_acquire(self) -> bool:
        """One attempt (problems logged once); the next is due a retry interval from now."""
        self.next_attempt = time.monotonic() + self.retry
        try:
            got = await self.lock.try_lock()
        except (TimeoutError, OSError, LockError) as exc:
            self.watch.problem(f"lock attempt on {self.lock.path} failed: {exc or type(exc).__name__}")
            return False
        self.watch.problem("")
        return got

    async def claim(self, name: str, forced: bool, floor: int, still_ours: Callable[[int], bool]) -> int:
        """Write our claim (epoch above `floor` and the previous one, us alone in sync) and
        start the takeover wait; raises LockError/OSError/TimeoutError when the write fails.
        `still_ours(epoch)` says, later, whether skipping the rest of the wait still applies."""
        prev = self.lock.record  # the previous holder's record, found under the lock
        epoch = await self.lock.claim([name], forced=forced, floor=floor)
        self.watch.claimed, self.watch.last_verified, self.watch.lost = True, time.monotonic(), False
        self.acquired_at = time.monotonic()
        why = self._gone(prev)
        self.skip, self.handover_epoch = bool(why), None
        if why:
            self.console(f"HA  no takeover wait: {why}")
        elif prev.holder == self.peer.view.name and self.peer.view.heard_at > 0:
            asyncio.get_running_loop().create_task(self._probe_old_holder(epoch, still_ours))
        asyncio.get_running_loop().call_later(0 if why else self.wait, self.wake)
        return epoch

    def _gone(self, prev: LockRecord) -> str:
        if self.handover_epoch is not None and self.handover_epoch == prev.epoch:
            return f"the peer handed over epoch {prev.epoch}"
        if prev.epoch == 0 and not prev.holder:
            return "nobody has held the lock before"
        return ""

    async def _probe_old_holder(self, epoch: int, still_ours: Callable[[int], bool]) -> None:
        """Only signed exchanges with the peer before (heard_at) vouch that the address is the peer's."""
        if await self.peer.port_refuses() and still_ours(epoch):
            self.skip = True
            self.console(f"HA  no takeover wait: the previous holder {self.peer.view.name} is down "
                         "(its HA port refuses connections)")
            self.wake()

    def release(self) -> int | None:
        """Give the lock back; the epoch we had claimed (None if we had not)."""
        released = self.lock.record.epoch if self.watch.claimed else None
        self.lock.release()
        self.watch.claimed = self.watch.lost = False
        self.acquired_at, self.skip = None, False
        self.next_attempt = time.monotonic() + self.retry
        return released


class HoldOff:
    """Not trying the lock for a while, and why (a tie-break at start, after a step-down,
    a switchover or a failed activation): the `hold_off` observation."""

    def __init__(self) -> None:
        self.until, self.reason = 0.0, ""

    def set(self, seconds: float, reason: str) -> None:
        self.until, self.reason = time.monotonic() + seconds, reason

    def clear(self) -> None:
        self.until = 0.0

    def active(self) -> str | None:
        return self.reason if time.monotonic() < self.until else None
