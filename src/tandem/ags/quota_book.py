"""The quota book: durable request counts per calendar period, kept by the server process.

A `quota` step (`tandem.ags.policies.quota`) asks `take(project, identity,
subject, period, limit)` and gets a future of `(status, remaining, end)`:
`ALLOWED` (the count went up by one and is durable), `EXCEEDED` (not
counted) or `UNAVAILABLE` (the store or replication failed: the gateway
answers 503, never 401/403). `end` is the period's end (Unix seconds).

Theory of operation. The server process owns the store, so it owns the book;
the in-process gateway calls the book directly, worker processes through
their control socket (`RemoteQuota`, frames `Q`/`q` in `workers.py`).

- Counts live in memory per key `project/identity/subject/period-id`,
  loaded lazily from the store (ns "quota", value `{"n": count, "end": ts}`)
  the first time a key is seen, off the event loop.
- Decisions are made in memory, in arrival order: `count < limit` counts
  and allows, anything else is refused without counting (no commit).
- An allowed answer waits until its increment is durable: pending
  increments are group-committed (one store commit per batch, in a thread),
  then `durable()` waits for the replicated passive (sync replication), and
  only then is every waiter of the batch released. A failover can therefore
  never lose a count that was acknowledged.
- A failed commit rolls the batch's increments back in memory and answers
  `UNAVAILABLE`: memory never claims what the store does not have. A failed
  durability wait after a successful commit also answers `UNAVAILABLE` but
  keeps the count (the store has it; over-counting an unanswered request is
  the safe side).
- Keys of ended periods are dropped from memory and deleted from the store
  every `PRUNE_INTERVAL`; at start, one scan deletes what an earlier active
  left behind. A book is made per activation (`GatewayService.start`), so a
  passive that takes over starts from its replicated store.

Periods are calendar periods in UTC: minute, hour, day, week (from Monday
00:00) and month.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tandem.store import Op

if TYPE_CHECKING:
    from tandem.store import Store

log = logging.getLogger("tandem.ags.quota")

NS = "quota"
ALLOWED, EXCEEDED, UNAVAILABLE = 0, 1, 2
PERIODS = ("minute", "hour", "day", "week", "month")
TIMEOUT = 10.0  # a waiter gets UNAVAILABLE if its load or batch takes longer (a hung store)
PRUNE_INTERVAL = 30.0
TICK = 1.0
DELETE_CHUNK = 1000

Result = tuple[int, int, float]  # (status, remaining, period end)


def period_window(period: str, now: float) -> tuple[str, float, float]:
    """(period id, start, end) of the calendar period (UTC) containing `now`; ValueError if unknown."""
    t = time.gmtime(now)
    if period == "minute":
        start = now - now % 60
        return time.strftime("m%Y%m%d%H%M", t), start, start + 60
    if period == "hour":
        start = now - now % 3600
        return time.strftime("h%Y%m%d%H", t), start, start + 3600
    if period == "day":
        start = now - now % 86400
        return time.strftime("d%Y%m%d", t), start, start + 86400
    if period == "week":
        day = now - now % 86400
        start = day - t.tm_wday * 86400  # tm_wday: Monday is 0
        return time.strftime("w%Y%m%d", time.gmtime(start)), start, start + 7 * 86400
    if period == "month":
        start = float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
        ny, nm = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        return time.strftime("M%Y%m", t), start, float(calendar.timegm((ny, nm, 1, 0, 0, 0)))
    raise ValueError(f"period: expected one of {', '.join(PERIODS)}, got {period!r}")


class _Entry:
    """One counter. `count`: what decisions see (committed + pending); `committed`: in the store."""

    __slots__ = ("count", "committed", "end", "loading", "since")

    def __init__(self, end: float) -> None:
        self.count = self.committed = 0
        self.end = end
        self.loading: list[tuple[asyncio.Future[Result], int]] | None = []  # waiters until loaded
        self.since = time.monotonic()


def _settle(fut: asyncio.Future[Result], result: Result) -> None:
    if not fut.done():
        fut.set_result(result)


class QuotaBook:
    """The server process's quota counters (see the module docstring)."""

    def __init__(self, store: Callable[[], Store], durable: Callable[[], Awaitable[None]],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.store, self.durable = store, durable
        self.loop = loop or asyncio.get_running_loop()
        self.entries: dict[str, _Entry] = {}
        self.loading: dict[str, _Entry] = {}  # entries whose stored count is being read
        self.batch: dict[str, list[Any]] = {}  # key -> [entry, increments], not yet committed
        self.waiters: list[tuple[asyncio.Future[Result], int, float]] = []  # (future, remaining, end)
        self.inflight: list[tuple[asyncio.Future[Result], int, float]] = []
        self.inflight_since = 0.0
        self.flushing = False
        self.closed = False
        self.commits = self.allowed = self.denied = self.failed = 0
        self._periods: dict[str, tuple[str, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"<QuotaBook keys={len(self.entries)} pending={len(self.waiters) + len(self.inflight)} "
                f"commits={self.commits} allowed={self.allowed} denied={self.denied} failed={self.failed} "
                f"closed={self.closed}>")

    # ---- lifecycle ----
    def start(self) -> None:
        self._ticker = self.loop.create_task(self._tick())

    async def close(self) -> None:
        """Stop: whatever still waits gets UNAVAILABLE; a commit already in its thread may still land."""
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        for e, inc in self.batch.values():
            e.count -= inc
        self.batch = {}
        for fut, _, end in self.waiters + self.inflight:
            _settle(fut, (UNAVAILABLE, 0, end))
        self.waiters, self.inflight = [], []
        for e in self.loading.values():
            if e.loading:
                for fut, _ in e.loading:
                    _settle(fut, (UNAVAILABLE, 0, e.end))
                e.loading = []

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- deciding ----
    def take(self, project: str, identity: str, subject: str, period: str, limit: int) -> asyncio.Future[Result]:
        """Count one request of `subject` against `limit` per `period`; see the module docstring."""
        fut: asyncio.Future[Result] = self.loop.create_future()
        now = time.time()
        cur = self._periods.get(period)
        if cur is None or now >= cur[1]:
            try:
                pid, _, end = period_window(period, now)
            except ValueError:
                fut.set_result((UNAVAILABLE, 0, now))
                return fut
            self._periods[period] = cur = (pid, end)
        if self.closed:
            fut.set_result((UNAVAILABLE, 0, cur[1]))
            return fut
        key = f"{project}/{identity}/{subject}/{cur[0]}"
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = self.loading[key] = _Entry(cur[1])
            e.loading = [(fut, limit)]
            self._spawn(self._load(key, e))
        elif e.loading is not None:
            e.loading.append((fut, limit))
        else:
            self._decide(key, e, fut, limit)
        return fut

    def _decide(self, key: str, e: _Entry, fut: asyncio.Future[Result], limit: int) -> None:
        if e.count >= limit:
            self.denied += 1
            fut.set_result((EXCEEDED, 0, e.end))
            return
        e.count += 1
        pending = self.batch.get(key)
        if pending is None:
            self.batch[key] = [e, 1]
        else:
            pending[1] += 1
        self.waiters.append((fut, limit - e.count, e.end))
        if not self.flushing:
            self.flushing = True
            self._spawn(self._flush())

    async def _load(self, key: str, e: _Entry) -> None:
        try:
            value = await asyncio.to_thread(self.store().get, NS, key)
            n = int(value["n"]) if isinstance(value, dict) and isinstance(value.get("n"), int) else 0
        except Exception as exc:  # the store failed: nothing is known, nothing is counted
            self.loading.pop(key, None)
            log.warning("quota: cannot read %s: %s", key, exc)
            if self.entries.get(key) is e:
                del self.entries[key]
            for fut, _ in e.loading or []:
                _settle(fut, (UNAVAILABLE, 0, e.end))
            e.loading = []
            self.failed += 1
            return
        self.loading.pop(key, None)
        waiting, e.loading = e.loading or [], None
        e.count = e.committed = n
        for fut, limit in waiting:
            if not fut.done():  # (timed out or closed meanwhile)
                self._decide(key, e, fut, limit)

    async def _flush(self) -> None:
        """Group commit: one store commit (in a thread) and one durability wait per batch."""
        try:
            while self.batch and not self.closed:
                batch, self.batch = self.batch, {}
                self.inflight, self.waiters = self.waiters, []
                self.inflight_since = time.monotonic()
                ops = [Op(NS, key, {"n": e.committed + inc, "end": e.end}) for key, (e, inc) in batch.items()]
                try:
                    await asyncio.to_thread(self.store().commit, ops)
                except Exception as exc:
                    for e, inc in batch.values():
                        e.count -= inc  # memory never claims what the store does not have
                    self._release(UNAVAILABLE, f"commit failed: {exc}")
                    continue
                self.commits += 1
                for e, inc in batch.values():
                    e.committed += inc
                try:
                    await self.durable()
                except Exception as exc:  # committed here, maybe not on the passive: not acknowledged
                    self._release(UNAVAILABLE, f"not durable: {exc}")
                    continue
                self._release(ALLOWED, "")
        finally:
            self.flushing = False
            self.inflight_since = 0.0

    def _release(self, status: int, why: str) -> None:
        waiters, self.inflight = self.inflight, []
        if status == ALLOWED:
            self.allowed += len(waiters)
            for fut, remaining, end in waiters:
                _settle(fut, (ALLOWED, remaining, end))
        else:
            self.failed += len(waiters)
            log.warning("quota: %d request(s) answered 503: %s", len(waiters), why)
            for fut, _, end in waiters:
                _settle(fut, (UNAVAILABLE, 0, end))

    # ---- timeouts and pruning ----
    async def _tick(self) -> None:
        await self._prune_store()
        next_prune = time.monotonic() + PRUNE_INTERVAL
        while True:
            await asyncio.sleep(TICK)
            try:
                self.expire(time.monotonic())
                if time.monotonic() >= next_prune:
                    next_prune += PRUNE_INTERVAL
                    await self.prune(time.time())
            except Exception:  # the ticker must outlive one failure
                log.exception("quota book tick failed")

    def expire(self, mono: float) -> None:
        """Answer UNAVAILABLE to waiters whose store work has taken longer than TIMEOUT."""
        if self.inflight and self.inflight_since and mono - self.inflight_since > TIMEOUT:
            self._release(UNAVAILABLE, f"the store did not commit within {TIMEOUT:.0f} s")
        for e in self.loading.values():
            if e.loading and mono - e.since > TIMEOUT:
                for fut, _ in e.loading:
                    _settle(fut, (UNAVAILABLE, 0, e.end))

    async def prune(self, now: float) -> int:
        """Forget counters of ended periods and delete them from the store; returns how many."""
        # (an entry in a batch has count != committed until its commit returns)
        ended = [k for k, e in self.entries.items() if e.end <= now and e.loading is None and e.count == e.committed]
        stored = [k for k in ended if self.entries[k].committed > 0]
        for k in ended:
            del self.entries[k]
        await self._delete(stored)
        return len(ended)

    async def _prune_store(self) -> None:
        """Delete what earlier actives left of ended periods (one scan, at start)."""
        now = time.time()
        try:
            rows = await asyncio.to_thread(self.store().scan, NS)
        except Exception as exc:
            log.warning("quota: cannot scan the store to prune ended periods: %s", exc)
            return
        stale = [k for k, v in rows if not isinstance(v, dict) or not isinstance(v.get("end"), int | float)
                 or v["end"] <= now]
        await self._delete(stale)

    async def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), DELETE_CHUNK):
            ops = [Op(NS, k, None) for k in keys[i:i + DELETE_CHUNK]]
            try:
                await asyncio.to_thread(self.store().commit, ops)
            except Exception as exc:  # kept until the next prune
                log.warning("quota: cannot delete %d ended counter(s): %s", len(ops), exc)
                return
        if keys:
            log.info("quota: pruned %d counter(s) of ended periods", len(keys))


# ---- the worker side (frames Q and q of tandem.ags.workers) ----

def encode_take(i: int, project: str, identity: str, subject: str, period: str, limit: int) -> bytes:
    return json.dumps([i, project, identity, subject, period, limit], separators=(",", ":")).encode()


def decode_take(payload: bytes) -> tuple[int, str, str, str, str, int]:
    i, project, identity, subject, period, limit = json.loads(payload)
    if not (isinstance(i, int) and isinstance(limit, int)
            and all(isinstance(s, str) for s in (project, identity, subject, period))):
        raise ValueError(f"malformed quota request {payload[:200]!r}")
    return i, project, identity, subject, period, limit


def encode_answer(i: int, result: Result) -> bytes:
    return b"%d %d %d %.3f" % (i, result[0], result[1], result[2])


class RemoteQuota:
    """A worker's client of the parent's book: same `take()` as QuotaBook, over the control socket."""

    def __init__(self, send: Callable[[bytes], None], loop: asyncio.AbstractEventLoop) -> None:
        self.send, self.loop = send, loop
        self.pending: dict[int, tuple[asyncio.Future[Result], float]] = {}
        self.next_id = 0

    def __repr__(self) -> str:
        return f"<RemoteQuota pending={len(self.pending)}>"

    def take(self, project: str, identity: str, subject: str, period: str, limit: int) -> asyncio.Future[Result]:
        self.next_id = i = self.next_id + 1
        fut: asyncio.Future[Result] = self.loop.create_future()
        self.pending[i] = (fut, self.loop.time())
        self.send(encode_take(i, project, identity, subject, period, limit))
        return fut

    def answered(self, payload: bytes) -> None:
        i, status, remaining, end = payload.split(b" ")
        waiting = self.pending.pop(int(i), None)
        if waiting is not None:
            _settle(waiting[0], (int(status), int(remaining), float(end)))

    def expire(self, now: float) -> None:
        """Answer UNAVAILABLE to requests the parent has not answered within TIMEOUT (+1 s)."""
        late = [i for i, (_, t) in self.pending.items() if now - t > TIMEOUT + 1.0]
        for i in late:
            _settle(self.pending.pop(i)[0], (UNAVAILABLE, 0, time.time() + 1))
