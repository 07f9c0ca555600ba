"""Fixed-pace loops: the HA controller's timers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("tandem.ha")


async def every(interval: float, fn: Callable[[], Awaitable[object]], name: str,
                wake: asyncio.Event | None = None) -> None:
    """Run `fn` at a fixed pace: next += interval; warn on overrun, never drift. With
    `wake`, a tick also runs as soon as the event is set (the pace restarts from then).
    A tick that raises is logged and the loop goes on."""
    loop = asyncio.get_running_loop()
    nxt = loop.time()
    while True:
        try:
            await fn()
        except Exception:  # a loop must survive a bug in one tick
            log.exception("%s tick failed", name)
        nxt += interval
        delay = nxt - loop.time()
        if delay < -interval:
            log.warning("%s loop overran by %.0f ms", name, -delay * 1000)
            nxt = loop.time()
            delay = 0
        if wake is None:
            await asyncio.sleep(max(delay, 0))
            continue
        try:
            await asyncio.wait_for(wake.wait(), max(delay, 0))
            nxt = loop.time()  # woken early: the pace restarts from now
        except TimeoutError:
            pass
        wake.clear()
