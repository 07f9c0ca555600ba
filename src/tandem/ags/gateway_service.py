"""The AGS client service: what the server opens on its client port while it serves.

`create_service(server)` is the one integration point with `tandem.server`.
On `start()` (the HA controller activated us, the store is open):

1. read the stored configuration (ns "gateway", key "config") and check it
   like a fetched one; serve it before any AMS is reached;
2. open the client port: in this process when `Workers = 1`, else N worker
   processes sharing the port with SO_REUSEPORT (`workers.py`);
3. start the config feed (`feed.py`); it runs only while we serve, because it
   writes the store.

Before the port opens, a new quota book (`quota_book.py`) is made over the
store: it counts `quota` policies for the in-process gateway (directly) and
for the workers (frames `Q`/`q`). It is new on every start, so a former
passive counts from its replicated store; it closes after the drain, so
requests in flight still get their answer.

The message queue of queued delivery (`delivery/queue.py`) is made the
same way, per activation, from the store: it accepts what the gateway
processes hand it and delivers while we serve; `stop()` halts its
deliveries first (a server stepping down delivers nothing more), then closes
it after the drain.

Each new configuration is stored durably first (so replication carries it to
the passive AGS), then swapped in (in-process: one reference; workers: pushed
to each, acknowledged), then reported as applied on the next poll.
`stop()` stops the feed, closes the port at once and drains in-flight
requests up to the deadline.

The reporter (`reporter.py`: HA status and traffic to the AMS) runs once per
server process from the first `prepare()` or `start()` to `close()`, whatever
the HA state: a passive half reports too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tandem.ags.compiled_config import ConfigRejected, validate_document
from tandem.ags.delivery.queue import MessageQueue
from tandem.ags.feed_poller import FeedPoller
from tandem.ags.gateway import Gateway
from tandem.ags.metrics import merge, render
from tandem.ags.quota_book import QuotaBook
from tandem.ags.reporter import Reporter
from tandem.ags.settings import GatewaySettings, settings_from_profile
from tandem.ags.workers import WorkerSet
from tandem.errors import ServerError
from tandem.native import status as native_status
from tandem.net.sockets import listen_socket
from tandem.server.client_service import ClientService, ServiceHost
from tandem.store import Op

if TYPE_CHECKING:
    from tandem.store import Store

log = logging.getLogger("tandem.ags")

NS, KEY = "gateway", "config"


class GatewayService(ClientService):
    def __init__(self, server: ServiceHost, settings: GatewaySettings | None = None) -> None:
        self.server = server
        self.settings = settings or settings_from_profile(server.profile)
        self.gateway: Gateway | None = None
        self.workers: WorkerSet | None = None
        self.feed: FeedPoller | None = None
        self.feed_task: asyncio.Task[None] | None = None
        self.reporter: Reporter | None = None
        self.reporter_task: asyncio.Task[None] | None = None
        self.draining: tuple[Gateway | None, WorkerSet | None] = (None, None)  # stopped, counts not retired yet
        self.quota: QuotaBook | None = None
        self.queue: MessageQueue | None = None
        self.revision = 0
        self.projects = 0
        self.retired: list[dict[str, Any]] = []
        self.warm: WorkerSet | None = None  # workers started ahead of the next activation
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        mode = "in-process" if self.settings.in_process else f"{self.settings.workers} workers"
        return (f"<GatewayService {self.settings.host}:{self.settings.port} {mode} serving={self.serving} "
                f"revision={self.revision} projects={self.projects}>")

    # ---- lifecycle ----
    def sources(self) -> list[str]:
        return [u for u in [self.server.profile.ha.PrimaryURL, *self.server.profile.ha.backup_urls] if u]

    def start_reporter(self) -> None:
        """Once per server process (never in the workers), whatever the HA state."""
        if self.reporter_task is None:
            self.reporter = Reporter(self.settings, self.sources(), self.server.ha_status, lambda: self.revision,
                                     self.merged_metrics)
            self.reporter_task = asyncio.get_running_loop().create_task(self.reporter.run())

    async def start(self) -> None:
        self.start_reporter()
        self.server.add_metric_source(self.metrics_text)
        self._lock = asyncio.Lock()
        doc = self.stored_document()
        s = self.settings
        self.quota = book = QuotaBook(self.store, self.durable)
        book.start()
        self.queue = queue = MessageQueue(self.store, self.durable, s.connect_timeout, s.read_timeout,
                                          s.fail_timeout)
        try:
            queue.configure(doc)
            await queue.start()
            if s.in_process:
                gw = Gateway(s)
                gw.services.quota = book
                gw.services.queue = queue
                if doc is not None:
                    gw.apply(doc)
                try:
                    sock = listen_socket(s.host, s.port)
                except OSError as exc:
                    raise ServerError(f"cannot open the gateway port {s.host}:{s.port}: "
                                      f"{exc.strerror or exc}") from exc
                await gw.listen(sock)
                self.gateway = gw
            else:
                ws, self.warm = self.warm or WorkerSet(s), None
                ws.quota = book
                ws.queue = queue
                await ws.start(json.dumps(doc).encode() if doc is not None else b"")
                self.workers = ws
        except BaseException:
            self.quota = self.queue = None
            await book.close()
            await queue.close()
            raise
        self.revision = doc["revision"] if doc is not None else 0
        self.projects = len(doc["projects"]) if doc is not None else 0
        self.serving = True
        self.feed = FeedPoller(s, self.sources(), lambda: self.revision, self.ha_state, self.apply, self.queue_totals)
        self.feed_task = asyncio.get_running_loop().create_task(self.feed.run())
        mode = "in this process" if s.in_process else f"in {s.workers} worker processes"
        log.info("gateway serving revision %d (%d projects) on %s:%d %s; hot path %s", self.revision,
                 self.projects, s.host, s.port, mode, native_status()[1])

    async def stop(self, drain_timeout: float) -> None:
        self.serving = False
        if self.queue is not None:
            await self.queue.halt()  # no delivery from here on: we may no longer be the active
        if self.feed_task is not None:
            self.feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.feed_task
            self.feed_task = None
        gw, ws = self.gateway, self.workers
        self.gateway = self.workers = None
        self.draining = (gw, ws)  # still counted while they drain: the reports' deltas never go back
        if gw is not None:
            await gw.drain(drain_timeout)
            self.retired = [merge([*self.retired, gw.metrics.snapshot()])]
            self.draining = (None, ws)
        if ws is not None:
            await ws.stop(drain_timeout)
            self.retired = [merge([*self.retired, *ws.snapshots()])]
            self.draining = (None, None)
        book, self.quota = self.quota, None
        if book is not None:
            await book.close()
        queue, self.queue = self.queue, None
        if queue is not None:
            await queue.close()

    async def prepare(self) -> None:
        """Worker processes started ahead of activation (a passive's standby): a failover
        then does not wait for N Python start-ups. They listen on nothing until start().
        The reporter starts here too (the first prepare of the process)."""
        self.start_reporter()
        if self.settings.in_process or self.warm is not None:
            return
        ws = self.warm = WorkerSet(self.settings)  # claimed now: a start() meanwhile takes it over
        try:
            await ws.prepare()
        except (OSError, ServerError) as exc:
            log.warning("gateway: could not start standby workers (%s); they start on activation", exc)
            if self.warm is ws:
                self.warm = None
            await ws.stop(0)

    async def close(self) -> None:
        task, self.reporter_task = self.reporter_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        warm, self.warm = self.warm, None
        if warm is not None:
            await warm.stop(0)

    # ---- configuration ----
    def store(self) -> Store:
        return self.server.store if self.server.store is not None else self.server.open_store()

    async def durable(self) -> None:
        """Wait until the store's commits so far are on the replicated passive (or raise)."""
        await self.server.durable()

    def stored_document(self) -> dict[str, Any] | None:
        raw = self.store().get(NS, KEY)
        if raw is None:
            log.info("gateway: no stored configuration yet; serving none until an AMS answers")
            return None
        try:
            return validate_document(raw, self.settings.environment)
        except ConfigRejected as exc:
            log.error("gateway: the stored configuration is unusable (%s); serving none until an AMS answers",
                      exc)
            return None

    async def apply(self, body: bytes, doc: dict[str, Any]) -> None:
        """Store, then swap. A store failure raises: nothing is swapped, the feed retries."""
        assert self._lock is not None
        async with self._lock:
            if not self.serving:
                raise RuntimeError("the gateway stopped serving")
            store = self.store()
            t0 = time.perf_counter()
            # off the loop: an fsync of a large document (or a synchronous replica ack) must not stall it
            await asyncio.to_thread(store.commit, [Op(NS, KEY, doc)])
            t1 = time.perf_counter()
            if self.queue is not None:  # before the workers see it: the queue knows every project they queue for
                self.queue.configure(doc)
            if self.gateway is not None:
                self.gateway.apply(doc)
            elif self.workers is not None:
                await self.workers.push(body, doc["revision"])
            t2 = time.perf_counter()
            self.revision = doc["revision"]
            self.projects = len(doc["projects"])
            log.info("gateway: revision %d stored in %.0f ms, swapped in %.0f ms", self.revision,
                     (t1 - t0) * 1000, (t2 - t1) * 1000)

    def ha_state(self) -> str:
        return self.server.ha_state()

    def queue_totals(self) -> tuple[int, int]:
        """(queued or in delivery, dead): what each feed poll reports to the AMS."""
        return self.queue.totals() if self.queue is not None else (0, 0)

    # ---- metrics (HA port /metrics, and the reports) ----
    def merged_metrics(self) -> dict[str, Any]:
        """This process's cumulative counters: retired workers, live workers, the in-process gateway."""
        snaps = list(self.retired)
        for gw in (self.gateway, self.draining[0]):
            if gw is not None:
                snaps.append(gw.metrics.snapshot())
        for ws in (self.workers, self.draining[1]):
            if ws is not None:
                snaps.extend(ws.snapshots())
        return merge(snaps)

    def metrics_text(self) -> bytes:
        live = 1 if self.gateway is not None else self.workers.live if self.workers is not None else 0
        rejected = self.feed.rejected if self.feed is not None else 0
        text = render(self.merged_metrics(), self.revision, rejected, live)
        if self.queue is not None:
            text += self.queue.metrics_text().encode()
        return text


def create_service(server: ServiceHost) -> ClientService:
    """The AGS data plane for `server` (called by the composition root)."""
    return GatewayService(server)
