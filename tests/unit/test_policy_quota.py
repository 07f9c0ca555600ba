"""quota: calendar periods, the book's decisions over a real SQLite store (group commit,
rollback of a failed commit, durability failures, pruning), the worker protocol, the step's
answers and the builder's checks."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tandem.ags.policies import Consumers, Services, compile_chain
from tandem.ags.policies.base import Answer
from tandem.ags.policies.chain import Context
from tandem.ags.policies.quota import QuotaStep, build
from tandem.ags.quota_book import (
    ALLOWED,
    EXCEEDED,
    NS,
    UNAVAILABLE,
    QuotaBook,
    RemoteQuota,
    decode_take,
    encode_answer,
    period_window,
)
from tandem.store import Op, Store, open_store
from tests.support.ags import StepExchange


def ts(*ymdhms: int) -> float:
    y, mo, d, h, mi, s = (*ymdhms, 0, 0, 0, 0, 0, 0)[:6]
    return float(calendar.timegm((y, mo, d, h, mi, s)))


# ---- periods ----

def test_calendar_periods_in_utc() -> None:
    now = ts(2026, 11, 25, 10, 7, 31) + 0.25  # a Wednesday
    assert period_window("minute", now) == ("m202611251007", ts(2026, 11, 25, 10, 7), ts(2026, 11, 25, 10, 8))
    assert period_window("hour", now) == ("h2026112510", ts(2026, 11, 25, 10), ts(2026, 11, 25, 11))
    assert period_window("day", now) == ("d20261125", ts(2026, 11, 25), ts(2026, 11, 26))
    assert period_window("week", now) == ("w20261123", ts(2026, 11, 23), ts(2026, 11, 30))  # from Monday
    assert period_window("month", now) == ("M202611", ts(2026, 11, 1), ts(2026, 12, 1))


def test_period_edges_weeks_and_month_lengths() -> None:
    assert period_window("week", ts(2026, 11, 23))[0] == "w20261123"  # Monday 00:00 starts a week
    assert period_window("week", ts(2026, 11, 23) - 0.001)[0] == "w20261116"  # Sunday 23:59:59.999
    assert period_window("week", ts(2026, 12, 30)) == ("w20261228", ts(2026, 12, 28), ts(2027, 1, 4))
    assert period_window("month", ts(2026, 12, 31, 23, 59, 59)) == ("M202612", ts(2026, 12, 1), ts(2027, 1, 1))
    assert period_window("month", ts(2028, 2, 29, 12)) == ("M202802", ts(2028, 2, 1), ts(2028, 3, 1))  # leap
    assert period_window("day", ts(2027, 1, 1)) == ("d20270101", ts(2027, 1, 1), ts(2027, 1, 2))
    for period in ("minute", "hour", "day", "week", "month"):
        for t in range(0, 90 * 86400, 86400 * 3 + 3917):
            pid, start, end = period_window(period, ts(2026, 1, 1) + t)
            assert start <= ts(2026, 1, 1) + t < end and period_window(period, start)[0] == pid
            assert period_window(period, end)[0] != pid
    with pytest.raises(ValueError, match="period"):
        period_window("fortnight", 0.0)


# ---- the book ----

def book_run(tmp: Path, test: Callable[[QuotaBook, list[Store]], Awaitable[None]],
             durable: Callable[[], Awaitable[None]] | None = None) -> None:
    stores = [open_store(str(tmp / "store"))]

    async def nothing() -> None:
        return None

    async def main() -> None:
        book = QuotaBook(lambda: stores[-1], durable or nothing)
        try:
            await asyncio.wait_for(test(book, stores), 20)
        finally:
            await book.close()

    try:
        asyncio.run(main())
    finally:
        for s in stores:
            s.close()


def stored(store: Store) -> dict[str, Any]:
    return dict(store.scan(NS))


def test_book_counts_to_the_limit_then_refuses_without_counting(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        got = [await book.take("pets", "consumer.day", "c:ann", "day", 3) for _ in range(5)]
        end = period_window("day", time.time())[2]
        assert got == [(ALLOWED, 2, end), (ALLOWED, 1, end), (ALLOWED, 0, end), (EXCEEDED, 0, end),
                       (EXCEEDED, 0, end)]
        assert (await book.take("pets", "consumer.day", "c:bob", "day", 3))[:2] == (ALLOWED, 2)  # own count
        assert (await book.take("cats", "consumer.day", "c:ann", "day", 3))[:2] == (ALLOWED, 2)  # per project
        values = stored(stores[-1])
        key = next(k for k in values if k.startswith("pets/consumer.day/c:ann/d"))
        assert values[key] == {"n": 3, "end": end}  # denials were never written
        assert book.denied == 2 and book.allowed == 5

    book_run(tmp_path, t)


def test_a_new_book_continues_from_the_store_and_a_raised_limit_keeps_the_count(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        for _ in range(2):
            assert (await book.take("pets", "ip.hour", "ip:10.0.0.1", "hour", 3))[0] == ALLOWED

        async def nothing() -> None:
            return None

        again = QuotaBook(lambda: stores[-1], nothing)  # e.g. after a restart or a failover
        assert (await again.take("pets", "ip.hour", "ip:10.0.0.1", "hour", 3))[:2] == (ALLOWED, 0)
        assert (await again.take("pets", "ip.hour", "ip:10.0.0.1", "hour", 3))[0] == EXCEEDED
        assert (await again.take("pets", "ip.hour", "ip:10.0.0.1", "hour", 5))[:2] == (ALLOWED, 1)
        await again.close()

    book_run(tmp_path, t)


def test_concurrent_takes_are_group_committed_and_exactly_limit_pass(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        lsn = stores[-1].last_lsn()
        results = await asyncio.gather(*(book.take("pets", "consumer.day", f"c:{i % 3}", "day", 40)
                                         for i in range(300)))
        assert sum(1 for r in results if r[0] == ALLOWED) == 120
        assert sum(1 for r in results if r[0] == EXCEEDED) == 180
        commits = stores[-1].last_lsn() - lsn
        assert commits == book.commits and commits <= 10, f"{commits} commits for 120 increments"
        assert sorted(v["n"] for v in stored(stores[-1]).values()) == [40, 40, 40]

    book_run(tmp_path, t)


def test_a_failed_commit_answers_unavailable_and_rolls_the_increments_back(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        assert (await book.take("pets", "consumer.day", "c:ann", "day", 5))[:2] == (ALLOWED, 4)
        stores[-1].close()  # every commit fails from now on
        failed = await asyncio.gather(*(book.take("pets", "consumer.day", "c:ann", "day", 5) for _ in range(3)))
        assert [r[0] for r in failed] == [UNAVAILABLE] * 3
        assert (await book.take("pets", "consumer.day", "c:zed", "day", 5))[0] == UNAVAILABLE  # cannot load
        stores.append(open_store(str(tmp_path / "store")))  # the store is back
        # the three failed increments were not kept: 1 counted, so 4 more pass
        got = [(await book.take("pets", "consumer.day", "c:ann", "day", 5))[:2] for _ in range(5)]
        assert got == [(ALLOWED, 3), (ALLOWED, 2), (ALLOWED, 1), (ALLOWED, 0), (EXCEEDED, 0)]
        assert next(iter(v["n"] for k, v in stored(stores[-1]).items() if "c:ann" in k)) == 5
        assert (await book.take("pets", "consumer.day", "c:zed", "day", 5))[:2] == (ALLOWED, 4)  # loads now

    book_run(tmp_path, t)


def test_a_durability_failure_is_unavailable_but_the_committed_count_stays(tmp_path: Path) -> None:
    fail = [False]

    async def durable() -> None:
        if fail[0]:
            raise RuntimeError("the passive did not acknowledge")

    async def t(book: QuotaBook, stores: list[Store]) -> None:
        assert (await book.take("pets", "ip.day", "ip:1.2.3.4", "day", 3))[0] == ALLOWED
        fail[0] = True
        assert (await book.take("pets", "ip.day", "ip:1.2.3.4", "day", 3))[0] == UNAVAILABLE
        fail[0] = False
        assert (await book.take("pets", "ip.day", "ip:1.2.3.4", "day", 3))[:2] == (ALLOWED, 0)
        assert list(stored(stores[-1]).values())[0]["n"] == 3  # memory mirrors the store

    book_run(tmp_path, t, durable)


def test_an_allowed_answer_waits_for_the_replicated_passive(tmp_path: Path) -> None:
    """The book lets a request through only once its increment is durable on both halves: an
    allowed answer never runs ahead of the replication wait (the failover half of the quota promise)."""
    passive_acked = asyncio.Event()
    waits = [0]

    async def durable() -> None:
        waits[0] += 1
        await passive_acked.wait()

    async def t(book: QuotaBook, stores: list[Store]) -> None:
        taken = asyncio.ensure_future(book.take("pets", "consumer.day", "c:ann", "day", 5))
        await wait(lambda: waits[0] == 1, "the durability wait started")
        await wait(lambda: [v["n"] for v in stored(stores[-1]).values()] == [1], "the count committed")
        assert not taken.done()  # committed locally, not yet acknowledged by the passive: no answer
        passive_acked.set()
        assert (await taken)[:2] == (ALLOWED, 4)

    book_run(tmp_path, t, durable)


def test_ended_periods_are_pruned_from_memory_and_store(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        await asyncio.to_thread(stores[-1].commit, [Op(NS, "old/consumer.day/c:x/d20200101", {"n": 7, "end": 1.0}),
                                                    Op(NS, "junk", "not a counter")])
        for period in ("minute", "month"):
            assert (await book.take("pets", f"ip.{period}", "ip:1.1.1.1", period, 9))[0] == ALLOWED
        book.start()  # the first tick scans the store for what earlier actives left
        await wait(lambda: len(stored(stores[-1])) == 2, "stale keys deleted at start")
        month_end = period_window("month", time.time())[2]
        assert await book.prune(month_end - 1) == 1  # the minute ended long before the month
        assert [k.split("/")[1] for k in book.entries] == ["ip.month"]
        assert [k.split("/")[1] for k in stored(stores[-1])] == ["ip.month"]

    book_run(tmp_path, t)


async def wait(check: Callable[[], bool], what: str, deadline: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        assert loop.time() < end, f"{what}: not within {deadline} s"
        await asyncio.sleep(0.02)


def test_a_closed_book_answers_unavailable(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        pending = book.take("pets", "ip.day", "ip:a", "day", 3)
        await book.close()  # before the load could finish
        assert (await pending)[0] == UNAVAILABLE
        assert (await book.take("pets", "ip.day", "ip:a", "day", 3))[0] == UNAVAILABLE
        assert (await book.take("pets", "ip.day", "ip:a", "fortnight", 3))[0] == UNAVAILABLE

    book_run(tmp_path, t)


def test_worker_protocol_round_trip_through_a_book(tmp_path: Path) -> None:
    async def t(book: QuotaBook, stores: list[Store]) -> None:
        loop = asyncio.get_running_loop()
        remote: RemoteQuota

        def send(payload: bytes) -> None:  # what WorkerSet._quota does with a Q frame
            i, project, identity, subject, period, limit = decode_take(payload)
            book.take(project, identity, subject, period, limit).add_done_callback(lambda f: remote.answered(encode_answer(i, f.result())))

        remote = RemoteQuota(send, loop)
        got = [await remote.take("pets", "consumer.week", "c:ann", "week", 2) for _ in range(3)]
        end = period_window("week", time.time())[2]
        assert got == [(ALLOWED, 1, end), (ALLOWED, 0, end), (EXCEEDED, 0, end)]
        assert remote.pending == {}
        lost = RemoteQuota(lambda p: None, loop)  # the parent never answers
        fut = lost.take("pets", "consumer.week", "c:ann", "week", 2)
        lost.expire(loop.time() + 5)
        assert not fut.done()
        lost.expire(loop.time() + 60)
        assert (await fut)[0] == UNAVAILABLE and lost.pending == {}
        with pytest.raises(ValueError):
            decode_take(b'[1, "p", "i", 5, "day", 3]')

    book_run(tmp_path, t)


# ---- the step and its builder ----

Ex = StepExchange


class FixedBook:
    def __init__(self, result: tuple[int, int, float]) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def take(self, *args: Any) -> Any:
        self.calls.append(args)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(self.result)
        return fut


def _project(*policies: dict[str, Any]) -> dict[str, Any]:
    return {"name": "pets", "context_path": "/pets", "targets": [], "policies": list(policies)}


def _step(policy: dict[str, Any], services: Services, index: int = 0, *others: dict[str, Any]) -> QuotaStep:
    project = _project(*others, policy) if others else _project(policy)
    step = build(policy, Context(project, Consumers([]), services, index))
    assert isinstance(step, QuotaStep)
    return step


def run_step(step: QuotaStep, ex: Ex) -> Answer | None:
    async def main() -> Answer | None:
        r = step.request(ex)  # type: ignore[arg-type]
        if r is None or isinstance(r, Answer):
            return r
        return await r

    return asyncio.run(main())


def test_step_subjects_headers_and_answers() -> None:
    services = Services()
    services.quota = book = FixedBook((ALLOWED, 7, time.time() + 99.5))
    step = _step({"type": "quota", "limit": 10}, services)
    ex = Ex(consumer="ann")
    assert run_step(step, ex) is None
    assert book.calls[0] == ("pets", "consumer.day", "c:ann", "day", 10)
    assert ex.headers() == {"X-Quota-Limit": "10", "X-Quota-Remaining": "7", "X-Quota-Reset": "100"}
    run_step(step, Ex(ip=b"192.0.2.9"))  # no consumer identified: by the client IP
    assert book.calls[1][2] == "ip:192.0.2.9"
    ip_step = _step({"type": "quota", "limit": 10, "by": "ip", "period": "minute"}, services)
    run_step(ip_step, Ex(ip=b"::1", consumer="ann"))
    assert book.calls[2] == ("pets", "ip.minute", "ip:::1", "minute", 10)

    book.result = (EXCEEDED, 0, time.time() + 3600.2)
    ex = Ex()
    a = run_step(step, ex)
    assert isinstance(a, Answer) and (a.status, a.code) == (429, "quota_exceeded")
    head = b"".join(a.headers).decode()
    assert "Retry-After: 3601\r\n" in head and "RateLimit-Limit: 10\r\n" in head
    assert "RateLimit-Remaining: 0\r\n" in head and "RateLimit-Reset: 3601\r\n" in head
    assert ex.resp_extra is None  # no X-Quota-* on a refusal

    book.result = (UNAVAILABLE, 0, time.time())
    a = run_step(step, Ex())
    assert isinstance(a, Answer) and (a.status, a.code) == (503, "quota_unavailable")
    services.quota = None  # no book in this process: fail closed, never open
    a = run_step(step, Ex())
    assert isinstance(a, Answer) and (a.status, a.code) == (503, "quota_unavailable")


def test_builder_checks_and_identities() -> None:
    services = Services()
    for bad, field in (({"limit": 0}, "limit"), ({"limit": True}, "limit"), ({}, "limit"), ({"limit": "5"}, "limit"),
                       ({"limit": 5, "period": "year"}, "period"), ({"limit": 5, "by": "header"}, "by")):
        with pytest.raises(ValueError, match=field):
            _step({"type": "quota", **bad}, services)
    first = {"type": "quota", "limit": 100, "period": "day"}
    second = {"type": "quota", "limit": 1000, "period": "day"}
    assert _step(second, services, 1, first).identity == "consumer.day#1"  # two counters, not one
    assert _step({"type": "quota", "limit": 5, "period": "hour"}, services, 1, first).identity == "consumer.hour"
    chain, refusal = compile_chain(_project({"type": "quota", "limit": -1}), Consumers([]), services)
    assert chain is None and refusal is not None and "limit" in refusal
    chain, refusal = compile_chain(_project({"type": "quota", "limit": 5}), Consumers([]), services)
    assert refusal is None and chain is not None and chain.kinds == ["quota"]
