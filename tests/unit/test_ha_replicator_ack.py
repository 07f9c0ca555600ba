"""The replicator's acknowledgement path with a scripted host: what a client is told when
the server steps down or stalls while a write waits for the passive (rule 4)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from tandem.errors import LockError, StoreError
from tandem.ha.lockfile import LockRecord
from tandem.ha.replicator import Replicator


@dataclass
class FakeLock:
    record: LockRecord
    writes: list[list[str]] = field(default_factory=list)

    async def set_in_sync(self, in_sync: list[str], epoch: int | None = None) -> None:
        if epoch is not None and epoch != self.record.epoch:
            raise LockError("other epoch")
        self.writes.append(list(in_sync))
        self.record = LockRecord(**{**self.record.__dict__, "in_sync": list(in_sync)})


class FakeHost:
    """What the replicator asks of its controller, scripted: `verified` is whether this
    server holds a verified lock (serving, not stepping down, verified within the deadline)."""

    def __init__(self, mode: str = "sync") -> None:
        self.name = "a"
        self.cfg = SimpleNamespace(ReplicationMode=mode, peer_dead_after=80, HeartbeatInterval=20,
                                   LogRetention=1000)
        self.lock = FakeLock(LockRecord(epoch=3, holder="a", in_sync=["a", "b"]))
        self.verified = True
        self.alive = True
        self.wake = asyncio.Event()
        self.lines: list[str] = []

        self.ops = SimpleNamespace(store=None, console=self.lines.append)
        self.peer = SimpleNamespace(alive=lambda: self.alive)

    def nudge(self) -> None:
        self.wake.set()

    def peer_alive(self) -> bool:
        return self.alive

    def holds_verified_lock(self) -> bool:
        return self.verified


def streaming(host: FakeHost) -> Replicator:
    """A replicator whose session is caught up (every new write waits for the peer's ack)."""
    rep = Replicator(host, host.ops, host.peer, host.cfg, gate=None)  # type: ignore[arg-type]
    rep.task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    rep.in_sync = True
    return rep


async def durable(rep: Replicator, lsn: int, epoch: int = 3) -> Any:
    return await rep.wait_durable(lsn, epoch)


def test_no_write_acknowledged_without_the_peer_once_stepping_down() -> None:
    """The [faults] race: writes committed as the isolated active stepped down were answered
    201 while the LockFile still named the peer in sync. Pending and later waits refuse."""

    async def scenario() -> None:
        host = FakeHost()
        rep = streaming(host)
        pending = asyncio.ensure_future(durable(rep, 5))
        await asyncio.sleep(0)
        assert not pending.done(), "a streamed write waits for the passive"
        host.verified = False  # stepping down: the client port closes, then...
        await rep.on_state("Passive", 3)  # ...the session ends
        with pytest.raises(StoreError):
            await pending
        with pytest.raises(StoreError):  # a write whose answer was about to leave
            await durable(rep, 6)
        assert host.lock.writes == [], "a server stepping down never changes the in-sync set"
        rep._acked(7)
        assert await durable(rep, 7) is None, "a write the passive stored may still be acknowledged"

    asyncio.run(scenario())


def test_a_stalled_server_does_not_record_its_peer_out_of_sync() -> None:
    """After SIGSTOP the resumed active's ack wait had run out; its lock is no longer verified.
    It must refuse the write and leave the record alone (the peer is in sync and takes over)."""

    async def scenario() -> None:
        host = FakeHost()
        rep = streaming(host)
        pending = asyncio.ensure_future(durable(rep, 5))
        await asyncio.sleep(0)
        host.verified = False  # stopped past the self-fence deadline
        with pytest.raises(StoreError):
            await pending  # the peer timeout (80 ms) runs out
        assert host.lock.writes == []
        assert host.lock.record.in_sync == ["a", "b"]

    asyncio.run(scenario())


def test_a_verified_holder_drops_a_silent_peer_then_acknowledges() -> None:
    async def scenario() -> None:
        host = FakeHost()
        rep = streaming(host)
        assert await durable(rep, 5) is None  # 80 ms without an ack: drop, then answer
        assert host.lock.writes == [["a"]]
        assert any("peer out of sync" in line for line in host.lines)
        with pytest.raises(StoreError):  # a write of an older epoch than the lock's
            await durable(rep, 6, epoch=2)

    asyncio.run(scenario())


def test_async_mode_drops_a_dead_peer_before_acknowledging() -> None:
    async def scenario() -> None:
        host = FakeHost("async")
        rep = streaming(host)
        assert await durable(rep, 5) is None
        assert host.lock.writes == [], "async: a live named peer costs no wait and no record"
        host.alive = False
        assert await durable(rep, 6) is None
        assert host.lock.writes == [["a"]]
        host.verified = False
        with pytest.raises(StoreError):
            await durable(rep, 7)

    asyncio.run(scenario())


def test_a_timed_out_in_sync_record_counts_until_a_drop_overwrites_it() -> None:
    """Naming the peer in sync timed out, but the write may still land: until a drop has
    written us alone, a write the peer has not acked is not acknowledged on the record."""

    async def scenario() -> None:
        host = FakeHost()
        host.lock.record = LockRecord(epoch=3, holder="a", in_sync=["a"])
        rep = streaming(host)

        async def slow(in_sync: list[str], epoch: int | None = None) -> None:
            raise TimeoutError  # the write did not finish in time (it may finish later)

        real = host.lock.set_in_sync
        host.lock.set_in_sync = slow  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await rep._record_peer_in_sync("b")
        host.lock.set_in_sync = real  # type: ignore[method-assign]
        rep.in_sync = False  # the session ended on the timeout
        assert await durable(rep, 5) is None
        assert host.lock.writes == [["a"]], "the write waited for a drop written behind the late record"

    asyncio.run(scenario())
