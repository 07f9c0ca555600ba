"""The message queue of queued delivery, kept by the server process (docs/delivery.md).

The server process owns the store, so it owns the queue, as it owns the
quota book: the in-process gateway calls `submit()` directly, worker
processes through their control socket (`RemoteQueue`, frames `D`/`d` and
`G`/`g` in `workers.py`). A queue is made per activation
(`GatewayService.start`) from the store, so a passive that takes over
resumes the queue its predecessor replicated, and a former active, once
passive, has no queue at all: it never delivers from a stale copy.

Accepting. `submit(...)` checks the project's limits
(`max_messages`, `max_bytes` over every message that still holds its body,
`max_body_bytes`), deduplicates on the client's `Idempotency-Key` within
the `ttl`, and adds the message to the pending batch. Batches are group
committed: one store commit (in a thread) and one `durable()` wait (the
replicated passive has it) per batch, then every waiter of the batch gets
`ACCEPTED` and its id. A failed commit takes the batch back out of memory
(`UNAVAILABLE`, nothing stored); a failed durability wait after the commit
answers `UNAVAILABLE` too but keeps the messages: they are stored, and may
be on the passive, so the client's answer is "unknown" (it retries with the
same Idempotency-Key and gets the same id).

Delivering. Each due message is dispatched to one of its project's targets
(smooth weighted round robin, passive down-marking for `FailTimeout`) with
at most `concurrency` deliveries in flight per target; with
`order_by_header`, only the oldest message of each key is eligible. Each
outcome is decided by `decide.decide()` (pure) and written to the store in
a grouped state commit (a lost state write only means one more delivery:
at least once). A delivered message's body is deleted at once; delivered
and dead messages stay readable until `retention`.

The message and its store records: `message.py`; a project's settings:
`spec.py`; the counters and their metrics: `stats.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tandem.ags.balancer import Balancer, Target
from tandem.ags.delivery.client import DeliveryError
from tandem.ags.delivery.decide import Decision, Event, IllegalEvent, Message, Rules, decide, is_delivered
from tandem.ags.delivery.message import NS_META, NS_MSG, NS_STATE, Msg, message_from
from tandem.ags.delivery.spec import Spec, delivery_policy
from tandem.ags.delivery.states import DEAD, DELIVERED, DELIVERING, FINAL, QUEUED
from tandem.ags.delivery.stats import LATENCY_BUCKETS, TRY_BUCKETS, Counters, render
from tandem.ags.health import HealthChecker
from tandem.store import Op

if TYPE_CHECKING:
    from tandem.store import Store

log = logging.getLogger("tandem.ags.delivery")

ACCEPTED, FULL, TOO_LARGE, UNAVAILABLE = 0, 1, 2, 3
TIMEOUT = 10.0  # a waiter gets UNAVAILABLE if its batch takes longer (a hung store)
TICK = 1.0
DELETE_CHUNK = 1000
STATE_BATCH = 2000

Accepted = tuple[int, str, str]  # (status, message id, detail)


def _settle(fut: asyncio.Future[Accepted], result: Accepted) -> None:
    if not fut.done():
        fut.set_result(result)


class MessageQueue:
    """The server process's queue (see the module docstring)."""

    def __init__(self, store: Callable[[], Store], durable: Callable[[], Awaitable[None]],
                 connect_timeout: float = 5.0, read_timeout: float = 60.0, fail_timeout: float = 10.0,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.store, self.durable = store, durable
        self.loop = loop or asyncio.get_running_loop()
        self.connect_timeout, self.read_timeout, self.fail_timeout = connect_timeout, read_timeout, fail_timeout
        self.specs: dict[str, Spec] = {}
        self.msgs: dict[str, Msg] = {}
        # Idempotency-Key -> the live message, or (id, ttl start) of a delivered one (its state is in the store)
        self.by_key: dict[tuple[str, str], Msg | tuple[str, float]] = {}
        self.finals: list[tuple[float, str, str, str | None]] = []  # heap: (forget at, id, project, key)
        self.ttls: list[tuple[float, str]] = []  # heap: (ttl end, id) of queued messages
        self.counters: dict[str, Counters] = {}
        self.heap: list[tuple[float, Msg]] = []  # due times of dispatchable messages (lazy: checked on pop)
        self.lanes: dict[tuple[str, str], deque[Msg]] = {}  # order_by_header lanes: only the head is in the heap
        self.backlog: dict[str, deque[Msg]] = {}  # due, but every target of the project is at `concurrency`
        self.inflight: dict[Target, int] = {}
        self.acted: dict[str, int] = {}  # redrive counters acted on
        self.batch: list[Msg] = []
        self.flushing = False
        self.state_ops: dict[str, Op] = {}
        self.closed = False
        self.halted = False  # no dispatching (stepping down); accepting may go on until closed
        self.loaded = False
        self.wake = asyncio.Event()
        self.commits = 0
        self._last_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._main: list[asyncio.Task[Any]] = []
        self._rand = random.Random()
        self.health = HealthChecker(self.loop, lambda: self.specs.values())  # the projects' active checks

    def __repr__(self) -> str:
        return (f"<MessageQueue messages={len(self.msgs)} pending={len(self.batch)} in_flight={len(self._deliveries)} "
                f"projects={len(self.specs)} closed={self.closed}>")

    # ---- lifecycle ----
    async def start(self) -> None:
        """Load every stored message (off the loop), then start dispatching."""
        store = self.store()
        rows, states, meta = await asyncio.to_thread(
            lambda: (store.scan(NS_MSG), dict(store.scan(NS_STATE)), store.scan(NS_META)))
        for key, value in meta:
            if key.startswith("redrive/") and isinstance(value, int):
                self.acted[key[len("redrive/"):]] = value
        seen = set()
        for mid, rec in rows:
            m = message_from(mid, rec, states.get(mid))
            seen.add(mid)
            self._index(m)
        for mid, st in states.items():
            if mid not in seen:  # delivered (its body deleted): not kept in memory, only its key and its end
                m = message_from(mid, {}, st)
                if m.state == DELIVERED:
                    self._retire(m)
                else:
                    self._index(m)
        self.loaded = True
        n = sum(1 for m in self.msgs.values() if m.state == QUEUED)
        if self.msgs:
            log.info("delivery: resumed %d stored message(s), %d to deliver", len(self.msgs), n)
        if not self.halted:
            self._main = [self.loop.create_task(self._dispatch_loop()), self.loop.create_task(self._tick())]
            self.health.start()
        self._redrive_all()

    def _index(self, m: Msg) -> None:
        self.msgs[m.id] = m
        c = self._counters(m.project)
        if m.state in (QUEUED, DELIVERING, DEAD):
            c.held += 1
            c.held_bytes += m.size
        if m.idem is not None:
            self.by_key[(m.project, m.idem)] = m
        if m.state in (QUEUED, DELIVERING):
            c.open(m.id, m.accepted_at)
        elif m.state == DEAD:
            c.dead_now += 1
            heapq.heappush(self.finals, (self._forget_at(m), m.id, m.project, m.idem))
        if m.state == QUEUED:
            self._track_ttl(m)
            self._enqueue(m)

    def _ttl(self, project: str) -> float:
        spec = self.specs.get(project)
        return spec.rules.ttl if spec is not None else Rules().ttl

    def _track_ttl(self, m: Msg) -> None:
        heapq.heappush(self.ttls, (m.since + self._ttl(m.project), m.id))

    def _forget_at(self, m: Msg) -> float:
        """When a delivered or dead message is deleted: after `retention`, never inside its ttl (dedup)."""
        spec = self.specs.get(m.project)
        retention = spec.retention if spec is not None else 7 * 86_400.0
        return max((m.done_at or time.time()) + retention, m.since + self._ttl(m.project))

    def _retire(self, m: Msg) -> None:
        """A delivered message leaves memory: its state is in the store (lookup reads it there); its
        Idempotency-Key stays known until its ttl ends, and it is deleted after its retention."""
        self.msgs.pop(m.id, None)
        if m.idem is not None:
            cur = self.by_key.get((m.project, m.idem))
            if cur is None or cur is m:
                self.by_key[(m.project, m.idem)] = (m.id, m.since)
        heapq.heappush(self.finals, (self._forget_at(m), m.id, m.project, m.idem))

    async def halt(self) -> None:
        """Deliver nothing more: deliveries in flight are cut (they stay queued in the store, so the next
        active delivers them again). Accepting goes on until close() (requests draining)."""
        self.halted = True
        await self.health.stop()
        for t in self._main:
            t.cancel()
        for t in list(self._deliveries):
            t.cancel()
        for t in [*self._main, *self._deliveries]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._main = []

    async def close(self) -> None:
        """Stop: pending accepts get UNAVAILABLE, deliveries in flight are cut, nothing more is dispatched."""
        self.closed = True
        await self.halt()
        for m in self.batch:
            for fut in m.waiters or []:
                _settle(fut, (UNAVAILABLE, "", "the gateway stopped serving"))
        self.batch = []
        for spec in self.specs.values():
            for c in spec.clients.values():
                c.close()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _counters(self, project: str) -> Counters:
        c = self.counters.get(project)
        if c is None:
            c = self.counters[project] = Counters()
        return c

    # ---- configuration ----
    def configure(self, doc: dict[str, Any] | None) -> None:
        """The projects of a new configuration; a project's new redrive counter redrives its dead."""
        specs: dict[str, Spec] = {}
        for project in (doc or {}).get("projects") or []:
            policy = delivery_policy(project)
            if policy is not None:
                name = project["name"]
                specs[name] = Spec(project, policy, self.connect_timeout, self.read_timeout, self.specs.get(name))
        for name, old in self.specs.items():
            if name not in specs:
                for c in old.clients.values():
                    c.close()
        self.specs = specs
        for name in list(self.backlog):
            if name in specs:
                self.wake.set()
        if self.loaded:
            self._redrive_all()
            self.wake.set()

    def _redrive_all(self) -> None:
        for name, spec in self.specs.items():
            if spec.redrive > self.acted.get(name, 0):
                self._spawn(self.redrive(name, spec.redrive))

    # ---- accepting ----
    def next_id(self) -> str:
        n = time.time_ns()
        if n <= self._last_id:
            n = self._last_id + 1
        self._last_id = n
        return f"{n:016x}{os.urandom(3).hex()}"

    def submit(self, project: str, method: bytes, rest: bytes, query: bytes, head: bytes, body: bytes,
               idem: str | None, order: str | None) -> asyncio.Future[Accepted]:
        """Accept one message; the future answers once it is durable (see the module docstring)."""
        fut: asyncio.Future[Accepted] = self.loop.create_future()
        spec = self.specs.get(project)
        if self.closed or not self.loaded:
            fut.set_result((UNAVAILABLE, "", "the gateway is not serving"))
            return fut
        if spec is None:
            fut.set_result((UNAVAILABLE, "", f"project {project!r} has no queued delivery on this gateway"))
            return fut
        c = self._counters(project)
        now = time.time()
        if idem is not None:
            old = self.by_key.get((project, idem))
            if isinstance(old, tuple):  # delivered already, within its ttl: the same answer
                if now < old[1] + spec.rules.ttl:
                    c.duplicates += 1
                    fut.set_result((ACCEPTED, old[0], "duplicate"))
                    return fut
                old = None
            if old is not None and now < old.since + spec.rules.ttl:
                c.duplicates += 1
                if old.waiters is not None:
                    old.waiters.append(fut)
                elif old.unconfirmed:  # an earlier answer was "unknown": confirm durability before "accepted"
                    self._spawn(self._confirm(old, fut))
                else:
                    fut.set_result((ACCEPTED, old.id, "duplicate"))
                return fut
        size = len(body)
        if size > spec.max_body_bytes:
            c.too_large += 1
            fut.set_result((TOO_LARGE, "", f"the body is {size} bytes; this API queues at most "
                                            f"{spec.max_body_bytes}"))
            return fut
        if c.held + 1 > spec.max_messages or c.held_bytes + size > spec.max_bytes:
            c.full += 1
            fut.set_result((FULL, "", f"the queue holds {c.held} messages, {c.held_bytes} bytes "
                                      f"(max_messages {spec.max_messages}, max_bytes {spec.max_bytes})"))
            return fut
        m = Msg(self.next_id(), project, now)
        m.method, m.rest, m.query, m.head, m.body, m.size = method, rest, query, head, body, size
        m.idem, m.order = idem, order
        m.waiters = [fut]
        c.held += 1
        c.held_bytes += size
        self.msgs[m.id] = m
        if idem is not None:
            self.by_key[(project, idem)] = m
        self.batch.append(m)
        if not self.flushing:
            self.flushing = True
            self._spawn(self._flush())
        return fut

    async def _flush(self) -> None:
        """Group commit: one store commit (in a thread) and one durability wait per batch."""
        try:
            while (self.batch or self.state_ops) and not self.closed:
                batch, self.batch = self.batch, []
                ops = [Op(NS_MSG, m.id, m.record()) for m in batch]
                states = list(self.state_ops.values())[:STATE_BATCH]  # state changes ride along (one commit)
                for op in states:
                    del self.state_ops[op.key if op.ns == NS_STATE else op.key + "\x00"]
                ops += states
                store = self.store()
                commit = asyncio.ensure_future(asyncio.to_thread(store.commit, ops))
                try:
                    try:
                        await asyncio.wait_for(asyncio.shield(commit), TIMEOUT)
                    except TimeoutError:
                        # a hung store: the clients get "unknown" now, the messages stay pending (a retry
                        # with the same key waits too) until the commit, still running, says what it did
                        self._answer_waiting(batch, f"the store did not commit within {TIMEOUT:g} s")
                        await commit
                except Exception as exc:
                    for m in batch:  # nothing stored: memory forgets them too
                        self._forget(m)
                    self._release(batch, UNAVAILABLE, f"not stored: {exc or type(exc).__name__}")
                    if states:  # a lost state write: at worst one more delivery after a failover
                        log.warning("delivery: %d state change(s) not stored: %s", len(states), exc)
                    continue
                self.commits += 1
                if not batch:
                    continue
                # (not pipelined: letting the next batch commit while this one waits for the passive made
                # smaller batches and more CPU per message, at the same rate: docs/benchmarks.md)
                await self._durable(batch)
        finally:
            self.flushing = False

    async def _durable(self, batch: list[Msg]) -> None:
        """A committed batch: accepted once the passive has it (rule 4); "unknown" if that is not confirmed."""
        try:
            await asyncio.wait_for(self.durable(), TIMEOUT)
        except Exception as exc:  # stored here, maybe on the passive: the answer is "unknown"
            for m in batch:
                m.unconfirmed = True
                self._counters(m.project).open(m.id, m.accepted_at)
                self._track_ttl(m)
                self._enqueue(m)
            self._release(batch, UNAVAILABLE, f"stored but not confirmed durable: {exc or type(exc).__name__}")
            return
        for m in batch:
            self._counters(m.project).open(m.id, m.accepted_at)
            self._track_ttl(m)
            self._enqueue(m)
        self._release(batch, ACCEPTED, "")

    def _answer_waiting(self, batch: list[Msg], why: str) -> None:
        """Answer UNAVAILABLE to whoever waits now; the messages stay pending (waiters: an empty list)."""
        for m in batch:
            waiters, m.waiters = m.waiters or [], []
            for fut in waiters:
                _settle(fut, (UNAVAILABLE, "", why))
        log.warning("delivery: %d message(s) answered 503: %s", len(batch), why)

    async def _confirm(self, m: Msg, fut: asyncio.Future[Accepted]) -> None:
        """A retry of a message whose durability was not confirmed: "accepted" only once it is."""
        try:
            await asyncio.wait_for(self.durable(), TIMEOUT)
        except Exception as exc:
            _settle(fut, (UNAVAILABLE, "", f"stored but not confirmed durable: {exc or type(exc).__name__}"))
            return
        m.unconfirmed = False
        _settle(fut, (ACCEPTED, m.id, "duplicate"))

    def _forget(self, m: Msg) -> None:
        self.msgs.pop(m.id, None)
        if m.idem is not None and self.by_key.get((m.project, m.idem)) is m:
            del self.by_key[(m.project, m.idem)]
        c = self._counters(m.project)
        c.held -= 1
        c.held_bytes -= m.size

    def _release(self, batch: list[Msg], status: int, why: str) -> None:
        n = 0
        for m in batch:
            waiters, m.waiters = m.waiters or [], None
            n += 1
            if status == ACCEPTED:
                self._counters(m.project).accepted += 1
            else:
                self._counters(m.project).unavailable += 1
            for fut in waiters:
                _settle(fut, (status, m.id if status == ACCEPTED else "", why))
        if status != ACCEPTED:
            log.warning("delivery: %d message(s) answered 503: %s", n, why)
        self.wake.set()

    # ---- reading ----
    def find(self, mid: str) -> asyncio.Future[dict[str, Any] | None]:
        """`lookup` as a (done) future: the same call as a worker's RemoteQueue."""
        fut: asyncio.Future[dict[str, Any] | None] = self.loop.create_future()
        fut.set_result(self.lookup(mid))
        return fut

    def lookup(self, mid: str) -> dict[str, Any] | None:
        m = self.msgs.get(mid)
        if m is None:  # delivered (not kept in memory), or unknown: the store says
            try:
                st = self.store().get(NS_STATE, mid)
            except Exception as exc:
                log.warning("delivery: cannot read the state of %s: %s", mid, exc)
                return None
            return message_from(mid, {}, st).view() if isinstance(st, dict) and st.get("s") in FINAL else None
        if m.waiters is not None:  # (not yet durable: not accepted yet)
            return None
        return m.view()

    # ---- dispatching ----
    def _enqueue(self, m: Msg) -> None:
        """`m` is queued: into its lane (order_by_header) or straight into the due heap."""
        if m.order is not None:
            lane_key = (m.project, m.order)
            m.lane = lane_key
            lane = self.lanes.get(lane_key)
            if lane is None:
                lane = self.lanes[lane_key] = deque()
            if m in lane:
                if lane[0] is m:
                    heapq.heappush(self.heap, (m.next_at, m))
                return
            # accept order: ids grow with acceptance, and stored messages are loaded in id order
            if lane and lane[-1].id > m.id:
                items = sorted([*lane, m], key=lambda x: x.id)
                lane.clear()
                lane.extend(items)
                if lane[0] is m:
                    heapq.heappush(self.heap, (m.next_at, m))
                return
            lane.append(m)
            if lane[0] is not m:
                return
        heapq.heappush(self.heap, (m.next_at, m))

    def _lane_done(self, m: Msg) -> None:
        """`m` left its lane (delivered or dead): the next of its key becomes eligible."""
        if m.lane is None:
            return
        lane = self.lanes.get(m.lane)
        if lane is not None:
            with contextlib.suppress(ValueError):
                lane.remove(m)
            if lane:
                nxt = lane[0]
                if nxt.state == QUEUED:
                    heapq.heappush(self.heap, (nxt.next_at, nxt))
            else:
                del self.lanes[m.lane]

    async def _dispatch_loop(self) -> None:
        while not self.closed:
            self.wake.clear()
            delay = self.dispatch(time.time())
            if delay is None:
                await self.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)

    def dispatch(self, now: float) -> float | None:
        """Start every due delivery there is room for; seconds until the next due message, or None."""
        for name, backlog in list(self.backlog.items()):
            spec = self.specs.get(name)
            while backlog and spec is not None:
                m = backlog[0]
                if m.state != QUEUED:
                    backlog.popleft()
                    continue
                if not self._start(m, spec, now):
                    break
                backlog.popleft()
            if not backlog:
                del self.backlog[name]
        heap = self.heap
        while heap:
            at, m = heap[0]
            if m.state != QUEUED or at != m.next_at:  # stale entry
                heapq.heappop(heap)
                continue
            if at > now:
                return at - now
            heapq.heappop(heap)
            spec = self.specs.get(m.project)
            if spec is None or self.backlog.get(m.project):  # (due behind a backlog: accept order)
                self.backlog.setdefault(m.project, deque()).append(m)  # waits for a slot or its project
                continue
            if not self._start(m, spec, now):
                self.backlog.setdefault(m.project, deque()).append(m)
        return None

    def _start(self, m: Msg, spec: Spec, now: float) -> bool:
        mono = time.monotonic()
        tried: set[Target] = {t for t in spec.clients if self.inflight.get(t, 0) >= spec.concurrency}
        if len(tried) == len(spec.clients):
            return False
        target = spec.balancer.pick(mono, tried)
        if target is None:
            if any(t.down_until <= mono for t in tried):
                return False  # an up target is busy: wait for its slot rather than use one marked down
            # every target is marked down: try the one back soonest (it may be back; as the proxy does)
            target = min((t for t in spec.clients if t not in tried), key=lambda t: t.down_until)
        d = self._decide(m, Event("dispatch"), spec.rules, now)
        if d is None:
            return True
        self.inflight[target] = self.inflight.get(target, 0) + 1
        task = self.loop.create_task(self._deliver(m, spec, target))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return True

    def _decide(self, m: Msg, event: Event, rules: Rules, now: float) -> Decision | None:
        try:
            d = decide(Message(m.state, m.attempts, m.next_at, m.since), event, rules, now, self._rand.random())
        except IllegalEvent as exc:
            log.debug("delivery: %s: %s", m, exc)
            return None
        was = m.state
        m.state, m.attempts, m.next_at, m.since = d.state, d.attempts, d.next_at, d.since
        if event.kind == "outcome":
            m.last_status, m.last_error = event.status, event.error
        if d.state in FINAL:
            m.done_at = now
            m.reason = d.reason
            self._lane_done(m)
            c = self._counters(m.project)
            c.shut(m.id)
            if d.state == DELIVERED:
                c.delivered += 1
                c.held -= 1
                c.held_bytes -= m.size
                m.body = m.head = b""
                took = max(0.0, now - m.accepted_at)
                c.lat[bisect_left(LATENCY_BUCKETS, took)] += 1
                c.lat_sum += took
                c.tries[bisect_left(TRY_BUCKETS, m.attempts)] += 1
                c.tries_sum += m.attempts
            else:
                c.dead += 1
                c.dead_now += 1
                heapq.heappush(self.finals, (self._forget_at(m), m.id, m.project, m.idem))
                log.warning("delivery: message %s of %s is dead: %s", m.id, m.project, d.reason)
        elif was == DEAD:  # redriven
            m.done_at, m.reason = None, ""
            c = self._counters(m.project)
            c.dead_now -= 1
            c.open(m.id, m.accepted_at)
            self._track_ttl(m)
        if d.store:
            self._write_state(m)
        if d.state == DELIVERED:
            self._retire(m)
        return d

    async def _deliver(self, m: Msg, spec: Spec, target: Target) -> None:
        client = spec.clients[target]
        c = self._counters(m.project)
        c.attempts += 1
        upath = target.join_base + m.rest if m.rest else target.base_path or b"/"
        extra = b"X-Tandem-Message-Id: %s\r\nX-Tandem-Attempt: %d\r\n" % (m.id.encode(), m.attempts + 1)
        if m.idem is None:
            extra += b"Idempotency-Key: %s\r\n" % m.id.encode()
        head = b"".join([m.method, b" ", upath, m.query, target.line_tail,
                         b"Content-Length: %d\r\n" % m.size, extra, m.head])
        status: int | None = None
        error: str | None = None
        try:
            status = await client.send(head, m.body, spec.connect_timeout, spec.read_timeout)
        except DeliveryError as exc:
            error = str(exc)
            Balancer.failed(target, time.monotonic(), self.fail_timeout)
        except asyncio.CancelledError:
            self.inflight[target] -= 1
            raise
        except Exception as exc:  # a bug must not lose the message: it is one failed attempt
            log.exception("delivery: attempt on %s failed", m)
            error = f"{type(exc).__name__}: {exc}"
        else:
            Balancer.succeeded(target)
        self.inflight[target] -= 1
        if self.halted:
            return
        if not is_delivered(spec.rules, status):
            c.failed_attempts += 1
        d = self._decide(m, Event("outcome", status, error), spec.rules, time.time())
        if d is not None and d.state == QUEUED:
            self._enqueue(m)
        self.wake.set()

    # ---- state writes ----
    def _write_state(self, m: Msg) -> None:
        ops = self.state_ops
        ops[m.id] = Op(NS_STATE, m.id, m.state_record())
        if m.state == DELIVERED:
            ops[m.id + "\x00"] = Op(NS_MSG, m.id, None)  # the body goes at once
        if not self.flushing:
            self.flushing = True
            self._spawn(self._flush())

    # ---- redrive, expiry, retention ----
    async def redrive(self, project: str, counter: int) -> int:
        """Put the project's dead messages back in the queue; stores that `counter` was acted on."""
        spec = self.specs.get(project)
        rules = spec.rules if spec is not None else Rules()
        now = time.time()
        n = 0
        for m in list(self.msgs.values()):
            if m.project == project and m.state == DEAD:
                if self._decide(m, Event("redrive"), rules, now) is not None:
                    self._enqueue(m)
                    n += 1
        self.acted[project] = counter
        try:
            await asyncio.to_thread(self.store().commit, [Op(NS_META, f"redrive/{project}", counter)])
        except Exception as exc:
            log.warning("delivery: cannot store the redrive counter of %s: %s", project, exc)
        log.info("delivery: redrive %d of %s: %d dead message(s) queued again", counter, project, n)
        self.wake.set()
        return n

    async def _tick(self) -> None:
        while not self.closed:
            await asyncio.sleep(TICK)
            try:
                await self.expire(time.time())
            except Exception:  # the ticker must outlive one failure
                log.exception("delivery tick failed")

    async def expire(self, now: float) -> None:
        """Queued messages past their ttl become dead; delivered and dead ones past their retention are
        deleted. Both are heaps by due time: a tick costs what is due, not the size of the queue."""
        ttls = self.ttls
        while ttls and ttls[0][0] <= now:
            _, mid = heapq.heappop(ttls)
            m = self.msgs.get(mid)
            if m is None or m.state != QUEUED:  # in flight (its outcome checks the ttl), or finished
                continue
            spec = self.specs.get(m.project)
            if spec is None:  # not deployed here now: looked at again in a minute
                heapq.heappush(ttls, (now + 60.0, mid))
            elif now < m.since + spec.rules.ttl:  # (its ttl was raised meanwhile)
                heapq.heappush(ttls, (m.since + spec.rules.ttl, mid))
            else:
                self._decide(m, Event("expire"), spec.rules, now)
        finals = self.finals
        gone: list[tuple[str, str, str | None, Msg | None]] = []
        while finals and finals[0][0] <= now and len(gone) < DELETE_CHUNK:
            _, mid, project, idem = heapq.heappop(finals)
            m = self.msgs.get(mid)
            if m is not None and (m.state not in FINAL or self._forget_at(m) > now):
                continue  # redriven since (and maybe dead again: its newer entry decides)
            gone.append((mid, project, idem, m))
        if not gone:
            return
        ops = [Op(NS_STATE, mid, None) for mid, _, _, _ in gone]
        ops += [Op(NS_MSG, mid, None) for mid, _, _, m in gone if m is not None and m.state == DEAD]
        try:
            await asyncio.to_thread(self.store().commit, ops)
        except Exception as exc:
            log.warning("delivery: cannot delete %d message(s) past retention: %s", len(gone), exc)
            for mid, project, idem, _ in gone:  # tried again later
                heapq.heappush(finals, (now + 30.0, mid, project, idem))
            return
        for mid, project, idem, m in gone:
            if idem is not None:
                cur = self.by_key.get((project, idem))
                if (cur is m) if m is not None else (isinstance(cur, tuple) and cur[0] == mid):
                    del self.by_key[(project, idem)]
            if m is not None:
                self.msgs.pop(mid, None)
                if m.state == DEAD:
                    c = self._counters(project)
                    c.held -= 1
                    c.held_bytes -= m.size
                    c.dead_now -= 1

    # ---- seeing it ----
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per project: depth (queued + delivering), dead, oldest queued age, the counters."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for name, c in self.counters.items():
            first = next(iter(c.pending.values()), None)  # (kept in accept order: the oldest is first)
            out[name] = {"depth": len(c.pending), "dead_now": c.dead_now,
                         "oldest": now - first if first is not None else 0.0, "c": c}
        return out

    def totals(self) -> tuple[int, int]:
        """(queued or in delivery, dead) over every project: what the feed poll reports to the AMS."""
        return (sum(len(c.pending) for c in self.counters.values()),
                sum(c.dead_now for c in self.counters.values()))

    def metrics_text(self) -> str:
        return render(self.stats())
