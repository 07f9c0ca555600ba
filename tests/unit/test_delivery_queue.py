"""The server process's message queue (ags/delivery/queue.py) over a real SQLite store and an
in-process echo backend: group commit, what a failed commit or durability wait answers, resuming
from the store, per-key order, halting, redrive and retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tandem.ags.delivery.queue import ACCEPTED, NS_MSG, NS_STATE, UNAVAILABLE, MessageQueue
from tandem.store import Op
from tandem.store.sqlite import SqliteStore
from tests.support.ags import make_document, project
from tests.support.echo import EchoServer
from tests.support.harness import wait_for_async

HEAD = b"X-Test: 1\r\n\r\n"


def _doc(url: str, redrive: int = 0, **policy: Any) -> dict[str, Any]:
    p = project("q", "/q", url, policies=[{"type": "delivery", "backoff_initial": 0.02, "backoff_max": 0.05,
                                           **policy}])
    if redrive:
        p["redrive"] = redrive
    return make_document([p])


def _run(fn: Callable[[SqliteStore, EchoServer, str, int], Awaitable[None]], tmp: Path) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp / "s.db"))
        echo = EchoServer("b")
        port = await echo.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(fn(store, echo, f"http://127.0.0.1:{port}", port), 30)
        finally:
            echo.close()
            store.close()
    asyncio.run(main())


async def _ok() -> None:
    return None


def _queue(store: SqliteStore, durable: Callable[[], Awaitable[None]] = _ok) -> MessageQueue:
    return MessageQueue(lambda: store, durable, connect_timeout=1.0, read_timeout=5.0, fail_timeout=0.05)


def _keys(echo: EchoServer) -> list[str]:
    return [dict(r["headers"]).get("Idempotency-Key", "") for r in echo.requests]


def counted(q: MessageQueue) -> None:
    """The incremental gauges (depth, dead, the oldest) agree with a count over every message."""
    depth = sum(1 for m in q.msgs.values() if m.state in ("queued", "delivering") and m.waiters is None)
    dead = sum(1 for m in q.msgs.values() if m.state == "dead")
    assert q.totals() == (depth, dead)
    for name, st in q.stats().items():
        mine = [m for m in q.msgs.values() if m.project == name and m.state in ("queued", "delivering")
                and m.waiters is None]
        assert st["depth"] == len(mine)
        if not mine:
            assert st["oldest"] == 0.0


def submit(q: MessageQueue, body: bytes = b"b", idem: str | None = None, order: str | None = None,
           rest: bytes = b"/x") -> asyncio.Future[Any]:
    """As the gateway hands it over: the client's Idempotency-Key is one of the forwarded headers."""
    head = (b"Idempotency-Key: %s\r\n" % idem.encode() if idem else b"") + HEAD
    path, _, query = rest.partition(b"?")
    return q.submit("q", b"POST", path, b"?" + query if query else b"", head, body, idem, order)


def test_accepts_are_group_committed_and_all_delivered(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url))
        await q.start()
        results = await asyncio.gather(*[submit(q, b"m%d" % i, f"k{i}") for i in range(300)])
        assert all(r[0] == ACCEPTED for r in results)
        assert q.commits < 30, f"{q.commits} commits for 300 messages: not grouped"
        await wait_for_async(lambda: len(echo.requests) >= 300, 10, "all delivered")
        assert sorted(_keys(echo)) == sorted(f"k{i}" for i in range(300))
        await wait_for_async(lambda: not store.scan(NS_MSG), 5, "delivered bodies deleted from the store")
        assert {v["s"] for _, v in store.scan(NS_STATE)} == {"delivered"}
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_a_failed_commit_answers_unavailable_and_forgets_the_batch(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url, max_messages=2))
        await q.start()
        real = store.commit
        store.commit = lambda ops: (_ for _ in ()).throw(OSError("disk full"))  # type: ignore[method-assign]
        r = await submit(q, idem="a")
        assert r[0] == UNAVAILABLE and "not stored" in r[2]
        assert not q.msgs and q.counters["q"].held == 0 and ("q", "a") not in q.by_key
        store.commit = real  # type: ignore[method-assign]
        r2 = await submit(q, idem="a")  # the retry makes the message (the first one never existed)
        assert r2[0] == ACCEPTED and r2[1]
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_a_failed_durability_wait_is_an_unknown_answer_and_the_retry_gets_the_same_id(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        fail = [True]

        async def durable() -> None:
            if fail[0]:
                raise RuntimeError("the passive did not confirm")

        q = _queue(store, durable)
        q.configure(_doc(url))
        await q.start()
        r = await submit(q, idem="pay-1")
        assert r[0] == UNAVAILABLE and "not confirmed durable" in r[2]
        assert len(store.scan(NS_MSG)) + len(store.scan(NS_STATE)) == 1, "stored: the answer was 'unknown'"
        r1 = await submit(q, idem="pay-1")  # still not confirmed: the retry is not told "accepted"
        assert r1[0] == UNAVAILABLE and "not confirmed durable" in r1[2]
        fail[0] = False
        r2 = await submit(q, idem="pay-1")  # confirmed now: accepted, the same message
        assert r2[0] == ACCEPTED and r2[2] == "duplicate" and len(store.scan(NS_MSG)) <= 1
        await wait_for_async(lambda: _keys(echo) == ["pay-1"], 5, "delivered once")
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_a_new_queue_resumes_from_the_store_and_a_halted_one_delivers_nothing(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, port: int) -> None:
        down = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}"
        q1 = _queue(store)
        q1.configure(_doc(down, max_attempts=1000))
        await q1.start()
        results = await asyncio.gather(*[submit(q1, idem=f"r{i}") for i in range(20)])
        assert all(r[0] == ACCEPTED for r in results)
        await q1.halt()
        attempts = q1.counters["q"].attempts
        q1.configure(_doc(url, max_attempts=1000))  # even pointed at a live backend: it is halted
        await asyncio.sleep(0.2)
        assert not echo.requests and q1.counters["q"].attempts == attempts
        counted(q1)
        await q1.close()

        q2 = _queue(store)  # the next activation: from the store
        q2.configure(_doc(url, max_attempts=1000))
        await q2.start()
        await wait_for_async(lambda: len(echo.requests) >= 20, 10, "resumed and delivered")
        assert sorted(_keys(echo)) == sorted(f"r{i}" for i in range(20))
        dup = await submit(q2, idem="r3")  # the dedup index came back with the store
        assert dup[0] == ACCEPTED and dup[2] == "duplicate"
        counted(q2)
        await q2.close()
    _run(t, tmp_path)


def test_messages_with_the_same_order_key_go_one_at_a_time_in_accept_order(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url, order_by_header="X-Account", concurrency=8))
        await q.start()
        futs = [submit(q, idem="a0", order="acct-a", rest=b"/flaky")]  # fails once: the rest of a wait
        futs += [submit(q, idem=f"a{i}", order="acct-a") for i in range(1, 6)]
        futs += [submit(q, idem=f"b{i}", order="acct-b") for i in range(5)]
        assert all(r[0] == ACCEPTED for r in await asyncio.gather(*futs))
        await wait_for_async(lambda: len(echo.requests) >= 12, 10, "all delivered")
        keys = _keys(echo)
        a = [k for k in keys if k.startswith("a")]
        assert a == ["a0", "a0", "a1", "a2", "a3", "a4", "a5"], a
        assert [k for k in keys if k.startswith("b")] == [f"b{i}" for i in range(5)]
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_dead_messages_are_redriven_once_per_counter_and_pruned_after_retention(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url, max_attempts=2, retention=60))
        await q.start()
        r = await submit(q, idem="d1", rest=b"/flaky?fail=2")  # dead after 2 attempts; the 3rd succeeds
        await wait_for_async(lambda: (q.lookup(r[1]) or {}).get("state") == "dead", 5, "dead")
        assert q.totals() == (0, 1)
        counted(q)
        q.configure(_doc(url, redrive=1, max_attempts=2, retention=60))
        await wait_for_async(lambda: (q.lookup(r[1]) or {}).get("state") == "delivered", 5, "redriven")
        assert _keys(echo) == ["d1"] * 3
        await wait_for_async(lambda: store.get("msgmeta", "redrive/q") == 1, 5, "the counter acted on is stored")
        q.configure(_doc(url, redrive=1, max_attempts=2, retention=60))  # the same counter: nothing again
        await asyncio.sleep(0.1)
        assert _keys(echo) == ["d1"] * 3
        await q.expire(time.time() + 86_400 * 2)  # past retention and ttl: deleted
        assert q.lookup(r[1]) is None and not store.scan(NS_STATE) and not store.scan(NS_MSG)
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_limits_count_held_messages_and_free_on_delivery(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        store.commit([Op("unrelated", "k", 1)])
        q = _queue(store)
        q.configure(_doc(url, max_messages=2, max_bytes=1024, max_body_bytes=1000))
        await q.start()
        assert (await submit(q, b"x" * 1001))[0] == 2  # TOO_LARGE
        a, b = await asyncio.gather(submit(q, b"x" * 600), submit(q, b"y" * 600))
        assert a[0] == ACCEPTED and b[0] == 1, "the second would pass max_bytes"  # FULL
        await wait_for_async(lambda: q.counters["q"].held == 0, 5, "delivered: its bytes are free again")
        assert (await submit(q, b"y" * 600))[0] == ACCEPTED
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_active_health_checks_keep_deliveries_off_a_failing_target(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        seen: list[bytes] = []

        async def sick(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    if line.startswith((b"GET ", b"POST ")):
                        seen.append(line)
                    if line == b"\r\n":
                        writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        await writer.drain()
                        break
            finally:
                writer.close()

        server = await asyncio.start_server(sick, "127.0.0.1", 0)
        bad = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        doc = _doc(url)
        doc["projects"][0]["targets"].append({"url": bad, "weight": 1})
        doc["projects"][0]["health_check"] = {"path": "/health", "interval": 0.2, "timeout": 0.1,
                                              "healthy": 1, "unhealthy": 1}
        q = _queue(store)
        q.configure(doc)
        await q.start()
        spec = q.specs["q"]
        await wait_for_async(lambda: all(tg.health is not None and tg.health.down == (tg.port != echo_port(url))
                                         for tg in spec.balancer.targets), 5, "the sick target checked down")
        results = await asyncio.gather(*[submit(q, idem=f"h{i}") for i in range(20)])
        assert all(r[0] == ACCEPTED for r in results)
        await wait_for_async(lambda: len(echo.requests) >= 20, 10, "delivered")
        assert not [x for x in seen if x.startswith(b"POST ")], "no delivery went to the target held down"
        assert all(q.lookup(r[1])["attempts"] == 1 for r in results)  # type: ignore[index]
        counted(q)
        await q.close()
        server.close()
    _run(t, tmp_path)


def echo_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_hung_commit_answers_unknown_and_a_retry_waits_for_what_the_commit_did(tmp_path: Path,
                                                                              monkeypatch: Any) -> None:
    import tandem.ags.delivery.queue as queue_module

    monkeypatch.setattr(queue_module, "TIMEOUT", 0.2)

    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url))
        await q.start()
        real = store.commit
        release = __import__("threading").Event()

        def slow(ops: Any) -> Any:
            release.wait(5)
            return real(ops)

        store.commit = slow  # type: ignore[method-assign]
        first = await submit(q, idem="slow-1")
        assert first[0] == UNAVAILABLE and "did not commit within" in first[2]
        retry = submit(q, idem="slow-1")  # the commit is still running: the retry waits for its outcome
        await asyncio.sleep(0.05)
        assert not retry.done()
        release.set()
        r = await retry
        assert r[0] == ACCEPTED and list(q.msgs) == [r[1]], (r, q.msgs)  # the one message, not a second
        store.commit = real  # type: ignore[method-assign]
        await wait_for_async(lambda: _keys(echo) == ["slow-1"], 5, "the stored message is delivered once")
        counted(q)
        await q.close()
    _run(t, tmp_path)


def test_delivered_messages_leave_memory_but_stay_readable_and_deduplicated(tmp_path: Path) -> None:
    """A delivered message costs no memory beyond its key: its state is read from the store, a retry
    with its key still gets its id (also after a restart), and it is gone after its retention."""
    async def t(store: SqliteStore, echo: EchoServer, url: str, _: int) -> None:
        q = _queue(store)
        q.configure(_doc(url, retention=60, ttl=600))
        await q.start()
        results = await asyncio.gather(*[submit(q, idem=f"m{i}") for i in range(50)])
        await wait_for_async(lambda: not q.msgs, 10, "every delivered message left memory")
        await wait_for_async(lambda: (q.lookup(results[7][1]) or {}).get("state") == "delivered", 5,
                             "read from the store")
        again = await submit(q, idem="m7")
        assert again == (ACCEPTED, results[7][1], "duplicate")
        counted(q)
        await q.close()
        q2 = _queue(store)  # a restart: delivered ones are not loaded as messages, their keys are
        q2.configure(_doc(url, retention=60, ttl=600))
        await q2.start()
        assert not q2.msgs and (await submit(q2, idem="m9"))[1] == results[9][1]
        await q2.expire(time.time() + 601)  # past retention and ttl: deleted, key forgotten
        assert q2.lookup(results[7][1]) is None and not store.scan(NS_STATE)
        fresh = await submit(q2, idem="m7")
        assert fresh[0] == ACCEPTED and fresh[1] != results[7][1]
        await q2.close()
    _run(t, tmp_path)


def test_a_queued_message_past_its_ttl_is_dead_without_walking_the_queue(tmp_path: Path) -> None:
    async def t(store: SqliteStore, echo: EchoServer, url: str, port: int) -> None:
        down = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}"
        q = _queue(store)
        q.configure(_doc(down, ttl=1, max_attempts=1000, backoff_initial=5, backoff_max=5))
        await q.start()
        r = await submit(q, idem="late")
        await wait_for_async(lambda: (q.lookup(r[1]) or {}).get("attempts") == 1, 5, "one failed attempt")
        await q.expire(time.time() + 2)
        v = q.lookup(r[1]) or {}
        assert v.get("state") == "dead" and "ttl" in v.get("reason", ""), v
        assert not q.ttls, "the ttl heap holds nothing more"
        counted(q)
        await q.close()
    _run(t, tmp_path)
