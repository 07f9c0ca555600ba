"""The config feed: long-poll the AMS for this gateway's configuration (docs/config-feed.md).

Sources are `PrimaryURL`, then each `BackupURLs` entry. A poll asks with the
revision the gateway serves; the AMS answers 304 after up to `wait` seconds
when nothing changed, or 200 with the whole document. Each poll also
registers the gateway (name, pair, HA state, applied revision, and the
queued and dead messages of queued delivery).

A source that fails (refused, reset, timeout, 5xx, 401, a document that does
not validate) is left for the next one at once: a dead AMS is never retried
in a loop while another may answer (APISIX #10191). Once every source has
failed in a row, the poller backs off (0.25 s doubling to
`feed_backoff_max`, with jitter) between attempts, still rotating. A
document is applied only whole and valid (`validate_document`): a garbage,
partial, oversized or wrong-environment answer is logged with its reason and
the current configuration stays (Tyk #1725).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tandem.ags.compiled_config import ConfigRejected, validate_document
from tandem.ags.settings import GatewaySettings

log = logging.getLogger("tandem.ags.feed_poller")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per long poll is noise

MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
BACKOFF_START = 0.25
FAST_ANSWER = 1.0  # an unchanged answer quicker than this is not a long poll: slow down

Apply = Callable[[bytes, dict[str, Any]], Awaitable[None]]


class FeedFailure(Exception):
    pass


class FeedPoller:
    def __init__(self, settings: GatewaySettings, sources: list[str], revision: Callable[[], int],
                 state: Callable[[], str], apply: Apply,
                 queue: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        self.settings = settings
        self.queue = queue  # (queued, dead) messages of queued delivery, reported with each poll
        self.sources = [s.rstrip("/") for s in sources if s.strip()]
        self.revision, self.state, self.apply = revision, state, apply
        self.index = 0
        self.failures = 0
        self.rejected = 0
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.source: str | None = None

    def __repr__(self) -> str:
        return (f"<FeedPoller source={self.source} revision={self.revision()} failures={self.failures} "
                f"last_error={self.last_error!r}>")

    def status(self) -> dict[str, Any]:
        return {"sources": self.sources, "source": self.source, "revision": self.revision(),
                "failures": self.failures, "rejected": self.rejected, "last_error": self.last_error,
                "last_ok": self.last_ok}

    async def run(self) -> None:
        if not self.sources:
            log.warning("config feed: no PrimaryURL/BackupURLs configured; serving the stored configuration only")
            return
        s = self.settings
        timeout = httpx.Timeout(connect=2.0, read=s.feed_wait + 10.0, write=5.0, pool=5.0)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            while True:
                url = self.sources[self.index]
                started = time.monotonic()
                try:
                    changed = await self.poll(client, url)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of one source: rotate, and back off after a round
                    self.failed(url, exc)
                    await asyncio.sleep(self.backoff())
                    continue
                if self.failures:
                    log.info("config feed: %s answers (revision %d)", url, self.revision())
                self.failures, self.last_error, self.last_ok, self.source = 0, None, time.time(), url
                if not changed and time.monotonic() - started < FAST_ANSWER:
                    await asyncio.sleep(FAST_ANSWER)

    def failed(self, url: str, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TransportError):
            reason = f"{type(exc).__name__}: {reason}"
        self.last_error = f"{url}: {reason}"
        self.failures += 1
        nxt = self.sources[(self.index + 1) % len(self.sources)]
        log.warning("config feed: %s failed: %s; keeping revision %d; next source %s",
                    url, reason, self.revision(), nxt)
        self.index = (self.index + 1) % len(self.sources)

    def backoff(self) -> float:
        rounds = self.failures // len(self.sources)
        if rounds == 0:
            return 0.0
        delay = min(self.settings.feed_backoff_max, BACKOFF_START * 2 ** (rounds - 1))
        return float(delay * random.uniform(0.8, 1.2))

    async def poll(self, client: httpx.AsyncClient, url: str) -> bool:
        """One long poll; True when a new configuration was applied."""
        s = self.settings
        rev = self.revision()
        params = {"environment": s.environment, "revision": str(rev), "wait": str(s.feed_wait),
                  "gateway": s.name, "pair": s.pair, "state": self.state(), "applied": str(rev)}
        queued, dead = self.queue()
        if queued or dead:
            params |= {"queued": str(queued), "dead": str(dead)}
        headers = {"Authorization": f"Bearer {s.token}"} if s.token else {}
        async with client.stream("GET", url + "/api/v1/gateway/config", params=params, headers=headers) as resp:
            if resp.status_code == 304:
                return False
            if resp.status_code != 200:
                text = (await resp.aread())[:200].decode("utf-8", "replace")
                raise FeedFailure(f"HTTP {resp.status_code}: {text}")
            declared = int(resp.headers.get("content-length") or 0)
            if declared > MAX_DOCUMENT_BYTES:
                raise FeedFailure(f"document of {declared} bytes is over {MAX_DOCUMENT_BYTES}")
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise FeedFailure(f"document over {MAX_DOCUMENT_BYTES} bytes")
                chunks.append(chunk)
        body = b"".join(chunks)
        fetched = time.perf_counter()
        try:
            doc = validate_document(body, s.environment)
        except ConfigRejected as exc:
            self.rejected += 1
            raise FeedFailure(f"configuration rejected: {exc}") from None
        if doc["revision"] == rev:
            return False
        if doc["revision"] < rev:
            log.warning("config feed: %s serves revision %d, older than ours (%d): applying it, the AMS "
                        "is the source of truth", url, doc["revision"], rev)
        validated = time.perf_counter()
        await self.apply(body, doc)
        log.info("config feed: applied revision %d from %s (%d projects, %d KiB; validated in %.0f ms)",
                 doc["revision"], url, len(doc["projects"]), len(body) // 1024, (validated - fetched) * 1000)
        return True
