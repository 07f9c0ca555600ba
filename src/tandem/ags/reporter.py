"""Reports to the AMS: this gateway's HA status and its recent traffic (docs/config-feed.md "Reports").

Every `REPORT_INTERVAL` s, on every AGS half whatever its HA state (a
passive reports too: the console shows both halves of a pair from the AMS
alone), the server process POSTs one report to `{source}/api/v1/gateway/report`:
its `/ha/status`, the revision it serves, and its traffic.

Traffic comes from the counters the gateway keeps anyway (`metrics.py`: the
merged, cumulative per-project stats of the server process and its workers);
nothing is added to the request path. `TrafficRing` turns them into 10 s
buckets: at each wall-clock multiple of `BUCKET` s the delta since the
previous boundary becomes one complete bucket, the last `KEEP` of which are
kept (5 minutes); the delta since the last boundary is the *partial* bucket,
sent with every report so traffic shows within about a second.

The AMS answers `{"known": S}`: the start of the newest complete bucket it
holds for this gateway. The next report carries only the complete buckets
newer than S (plus the partial one), so a steady report is small; an AMS that
knows nothing (a new active after a failover, a restart) answers 0 and gets
the whole window.

Sources rotate like the config feed's (`feed_poller.py`): the one that
answered last is asked first; a failing one is left for the next at once,
within the same tick. A failure streak is logged once, and its end once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from tandem.ags.metrics import REFUSED
from tandem.ags.settings import GatewaySettings

log = logging.getLogger("tandem.ags.reporter")

REPORT_INTERVAL = 1.0
BUCKET = 10  # seconds per traffic bucket, starting on wall-clock multiples
KEEP = 30  # complete buckets kept: 5 minutes
CONNECT_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.0
PATH = "/api/v1/gateway/report"
HA_FIELDS = ("server", "role", "type", "mode", "state", "epoch", "lsn", "serving", "since", "reason",
             "waiting_reason", "isolated", "lock", "peer", "history", "client_url")
CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")  # ProjectStats.classes, by index

Bucket = dict[str, dict[str, Any]]  # project -> {"requests", "classes", "errors", "latency"}


def bucket_start(now: float) -> int:
    return int(now // BUCKET) * BUCKET


def delta(current: dict[str, Any], base: dict[str, Any]) -> Bucket:
    """What happened between two merged cumulative snapshots, per project with requests.

    A counter lower than before (a worker's counts were lost) counts as 0, never negative."""
    out: Bucket = {}
    for name, value in current.items():
        if name == REFUSED:
            continue
        classes, lat, _lat_sum, _up, _up_sum, errors = value
        old = base.get(name)
        if old is None:
            old_classes, old_lat, old_errors = [0] * len(classes), [0] * len(lat), {}
        else:
            old_classes, old_lat, old_errors = old[0], old[1], old[5]
        d_classes = [max(0, n - o) for n, o in zip(classes, old_classes, strict=False)]
        requests = sum(d_classes)
        if requests == 0:
            continue
        d_errors = {code: n - old_errors.get(code, 0) for code, n in errors.items()
                    if n > old_errors.get(code, 0)}
        out[name] = {
            "requests": requests,
            "classes": {CLASSES[i]: n for i, n in enumerate(d_classes) if n},
            "errors": d_errors,
            "latency": [max(0, n - o) for n, o in zip(lat, old_lat, strict=False)],
        }
    return out


class TrafficRing:
    """10 s deltas of cumulative counters: the last `KEEP` complete buckets and the partial one.

    `observe(merged, now)` is called about once a second with the merged cumulative counters;
    the first call after a boundary closes the bucket before it (the reporter ticks on whole
    seconds, so that call comes within milliseconds of the boundary)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.buckets: deque[tuple[int, Bucket]] = deque(maxlen=keep)
        self.base: dict[str, Any] | None = None
        self.start = 0  # of the partial bucket
        self.partial: Bucket = {}

    def __repr__(self) -> str:
        return f"<TrafficRing complete={len(self.buckets)} partial_start={self.start}>"

    def observe(self, merged: dict[str, Any], now: float) -> None:
        start = bucket_start(now)
        if self.base is None:
            self.base, self.start = merged, start
        elif start > self.start:
            done = delta(merged, self.base)
            if done:
                self.buckets.append((self.start, done))
            self.base, self.start = merged, start
        self.partial = delta(merged, self.base)

    def since(self, known: int) -> list[dict[str, Any]]:
        """The complete buckets newer than `known`, oldest first, then the partial one."""
        out = [{"start": s, "projects": p} for s, p in self.buckets if s > known]
        out.append({"start": self.start, "projects": self.partial})
        return out


class ReportFailure(Exception):
    pass


class Reporter:
    def __init__(self, settings: GatewaySettings, sources: list[str], ha_status: Callable[[], dict[str, Any]],
                 applied: Callable[[], int], metrics: Callable[[], dict[str, Any]],
                 interval: float = REPORT_INTERVAL) -> None:
        self.settings = settings
        self.sources = [s.rstrip("/") for s in sources if s.strip()]
        self.ha_status, self.applied, self.metrics = ha_status, applied, metrics
        self.interval = interval
        self.ring = TrafficRing()
        self.index = 0
        self.known = 0
        self.known_from: str | None = None  # the source that answered `known`
        self.failures = 0  # reports in a row that reached no source
        self.sent = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        source = self.sources[self.index] if self.sources else None
        return (f"<Reporter source={source} sent={self.sent} known={self.known} failures={self.failures} "
                f"last_error={self.last_error!r}>")

    def body(self, known: int) -> dict[str, Any]:
        status = self.ha_status()
        s = self.settings
        return {
            "environment": s.environment, "gateway": s.name, "pair": s.pair,
            "ha": {k: status.get(k) for k in HA_FIELDS if k in status},
            "applied": self.applied(),
            "traffic": {"interval": BUCKET, "buckets": self.ring.since(known)},
        }

    async def run(self) -> None:
        if not self.sources:
            log.warning("reports: no PrimaryURL/BackupURLs configured; the AMS will not see this gateway's "
                        "HA state or traffic")
            return
        timeout = httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT)
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        async with httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=False) as client:
            while True:
                # fixed pace on whole seconds of the wall clock: the tick after a bucket boundary
                # comes right after it, so a complete bucket holds its own 10 s
                now = time.time()
                await asyncio.sleep(math.floor(now / self.interval + 1) * self.interval - now + 0.001)
                await self.tick(client)

    async def tick(self, client: httpx.AsyncClient) -> None:
        try:
            self.ring.observe(self.metrics(), time.time())
        except Exception:  # the counters are the gateway's own: a bug there must not stop the reports
            log.exception("reports: reading the gateway's counters failed")
        errors = []
        for _ in range(len(self.sources)):
            url = self.sources[self.index]
            try:
                await asyncio.wait_for(self.send(client, url), TOTAL_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure of one source: the next one, at once
                errors.append(f"{url}: {_reason(exc)}")
                self.index = (self.index + 1) % len(self.sources)
                continue
            if self.failures:
                log.info("reports: %s answers again (after %d failed reports)", url, self.failures)
            self.failures, self.last_error = 0, None
            return
        self.failures += 1
        self.last_error = "; ".join(errors)
        if self.failures == 1:  # once per streak, not every second
            log.warning("reports: no AMS took this gateway's report: %s (retrying every %.0f s; logged "
                        "again when one answers)", self.last_error, self.interval)

    async def send(self, client: httpx.AsyncClient, url: str) -> None:
        known = self.known if self.known_from == url else 0
        resp = await client.post(url + PATH, json=self.body(known))
        if resp.status_code != 200:
            raise ReportFailure(f"HTTP {resp.status_code}: {resp.text[:200]}")
        answer = resp.json()
        value = answer.get("known") if isinstance(answer, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ReportFailure(f"the answer has no integer 'known': {resp.text[:200]}")
        self.known, self.known_from = value, url
        self.sent += 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | httpx.TimeoutException):
        return f"timed out ({TOTAL_TIMEOUT:.0f} s)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, httpx.TransportError) else text
