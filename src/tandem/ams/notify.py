"""Wake-ups across threads and event loops: a long poll waits on a channel,
a writer (often in a worker thread) notifies it after its commit.

A waiter subscribes *before* it checks the condition it waits for, so a
notification between the check and the wait is never lost: the subscription's
event is already set and the wait returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator


class Subscription:
    def __init__(self, channels: frozenset[str]) -> None:
        self.channels = channels
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def _fire(self) -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> bool:
        """True when notified (and re-armed), False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        self.event.clear()
        return True


class Hub:
    """Named channels, e.g. `env:default` (a revision bump) and `jobs` (deployment work)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()

    @contextlib.contextmanager
    def subscribe(self, channels: Iterable[str]) -> Iterator[Subscription]:
        sub = Subscription(frozenset(channels))
        with self._lock:
            self._subs.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subs.discard(sub)

    def notify(self, *channels: str) -> None:
        wanted = set(channels)
        with self._lock:
            targets = [s for s in self._subs if s.channels & wanted]
        for sub in targets:
            sub._fire()

    def notify_all(self) -> None:
        with self._lock:
            targets = list(self._subs)
        for sub in targets:
            sub._fire()
