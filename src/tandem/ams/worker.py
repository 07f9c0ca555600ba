"""The deployment worker: resumes jobs an earlier active left pending and
completes in-progress ones as gateways report their applied revision; it also
prunes the audit trail past its retention, when it starts and every
`PRUNE_EVERY` seconds after.

One asyncio task per app, started lazily on the first request (or by
`bootstrap`) on the serving event loop, restarted if it died or belongs to a
loop that is gone. It writes only while the server serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio

from tandem.ams.api_errors import ApiError
from tandem.ams.services import Services
from tandem.ams.services.registry import JOBS_CHANNEL
from tandem.errors import StoreError

log = logging.getLogger("tandem.ams.worker")
INTERVAL = 1.0
PRUNE_EVERY = 3600.0


async def run(svc: Services) -> None:
    pruned_at: float | None = None
    with svc.state.hub.subscribe([JOBS_CHANNEL]) as sub:
        while True:
            if svc.state.serving():
                try:
                    await anyio.to_thread.run_sync(svc.deployments.reconcile)
                    if pruned_at is None or time.monotonic() - pruned_at >= PRUNE_EVERY:
                        await anyio.to_thread.run_sync(svc.audit.prune)
                        pruned_at = time.monotonic()
                except (ApiError, StoreError) as exc:
                    log.warning("deployment worker: %s", exc)
                except Exception:
                    log.exception("deployment worker pass failed")
            await sub.wait(INTERVAL)


def ensure_worker(svc: Services) -> None:
    """Start the worker on the running loop unless it already runs there; idempotent."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = svc.state.worker
    if task is not None and not task.done() and task.get_loop() is loop:
        return
    if task is not None and not task.done():
        with contextlib.suppress(RuntimeError):
            task.get_loop().call_soon_threadsafe(task.cancel)
    svc.state.worker = loop.create_task(run(svc), name="tandem-ams-deployment-worker")
