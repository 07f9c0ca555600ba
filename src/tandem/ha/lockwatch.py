"""Watching the LockFile: the holder's verification thread and the passive's record reads.

`LockWatch` owns `last_verified` (when a verification last succeeded) and the
logging of LockFile problems (once per problem, not at every attempt). The
controller reads `fresh()` and is told through `on_lost` (on its event loop)
when a verification proves the lock is no longer ours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from tandem.errors import LockError
from tandem.ha.lockfile import LockFile

log = logging.getLogger("tandem.ha")


class LockWatch:
    def __init__(self, lock: LockFile, verify_interval: float, fence: float) -> None:
        self.lock, self.verify_interval, self.fence = lock, verify_interval, fence
        self.claimed = False  # we hold the lock and wrote our claim into it
        self.lost = False  # a verification proved the lock is no longer ours
        self.last_verified = float("-inf")
        self.error = ""  # the LockFile problem last logged ("" while it answers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fresh(self) -> bool:
        """Held, claimed and verified within the self-fence deadline."""
        return self.lock.held and self.claimed and time.monotonic() - self.last_verified <= self.fence

    def verified_ms_ago(self) -> int | None:
        return round((time.monotonic() - self.last_verified) * 1000) if self.claimed else None

    def problem(self, msg: str) -> None:
        """Log a LockFile problem once, not at every 50 ms attempt; "" when it works again."""
        if msg == self.error:
            return
        if msg:
            log.warning("%s", msg)
        else:
            log.info("the LockFile %s answers again", self.lock.path)
        self.error = msg

    async def read(self, what: str) -> bool:
        """Read the record; False (logged once) when the LockFile does not answer."""
        try:
            await self.lock.read()
        except (TimeoutError, OSError, LockError) as exc:
            self.problem(f"{what} failed: {exc or type(exc).__name__}")
            return False
        self.problem("")
        return True

    def start(self, console: Callable[[str], None], wake: Callable[[], None]) -> None:
        """Start verifying (while we hold a claimed lock); a verification that proves the
        lock lost sets `lost` and calls `wake`, on the event loop."""

        def on_lost(why: str) -> None:
            if self.lock.held and self.claimed:
                console(f"HA  lock verification failed: {why}")
                self.lost = True
                wake()

        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._verifier, args=(loop, on_lost), name="lock-verifier",
                                        daemon=True)
        self._thread.start()

    def status(self) -> dict[str, object]:
        rec = self.lock.record
        return {"path": self.lock.path, "held": self.lock.held and self.claimed,
                "verified_ms_ago": self.verified_ms_ago(), "holder": rec.holder, "in_sync": rec.in_sync}

    def stop(self) -> None:
        self._stop.set()

    def _verifier(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[str], None]) -> None:
        """Lock verification on a thread of its own, three attempts per period: it
        keeps proving the lock while the event loop is busy (a stalled loop cannot
        serve anyway), and one slow fsync does not cost the lock. Freshness is
        still "a write+fsync that succeeded within the self-fence deadline"."""
        period = self.verify_interval / 3
        nxt = time.monotonic()
        while not self._stop.is_set():
            if self.lock.held and self.claimed:
                started = time.monotonic()
                try:
                    why = self.lock.verify_blocking()
                except RuntimeError:
                    return  # the LockFile was closed: the server is stopping
                except (TimeoutError, OSError, LockError) as exc:
                    log.warning("lock verification did not finish: %s", exc or type(exc).__name__)
                else:
                    if why is None:
                        self.last_verified = max(self.last_verified, started)
                    elif self.lock.held and self.claimed:
                        loop.call_soon_threadsafe(on_lost, why)
            nxt += period
            if nxt < time.monotonic():
                nxt = time.monotonic()
            self._stop.wait(nxt - time.monotonic())
