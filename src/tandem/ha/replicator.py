"""Replication over the backchannel: the active ships every change of its store
to the passive; in sync mode a write is acknowledged only once the passive
stored it (rule 4).

Active side, one session per connection to the peer:
1. `hello`: the passive answers its (last_lsn, last_epoch). At most one server
   writes per epoch, so (epoch, lsn) names one change: if our log has that
   change the passive's store is a prefix of ours and we stream from there;
   if it has a change we do not (a former active's unacknowledged tail) it has
   *diverged*: it moves its copy aside and takes a snapshot (rule 6); if our log
   no longer reaches back, a snapshot.
2. Stream batches of changes; each answer carries the passive's durable lsn.
   While a backlog is streamed we are `ActiveSync`, it is `PassiveSync`.
3. Caught up: first every new write waits for the peer's ack, then the
   LockFile records the peer as in sync (the order matters: no write may be
   acknowledged between "caught up" and the record without reaching the peer).
4. A peer that does not ack within the peer timeout, or dies, is first removed
   from the LockFile's in-sync set, then writes are acknowledged without it
   (`Standalone`). A passive not in that set never activates on its own (rule 5).

The passive side (the frames it takes) is `replica.py`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from tandem.config.model import HASection
from tandem.errors import LockError, NotDurable, PeerError, StoreError, TandemError
from tandem.ha.backchannel import BackchannelGate
from tandem.ha.durability import AckObservations, Verdict, may_acknowledge
from tandem.ha.interfaces import Replication, ServerOps
from tandem.ha.lockfile import LockRecord
from tandem.ha.peer import PeerLink
from tandem.ha.replica import Replica, ReplicationHost
from tandem.ha.states import SERVING
from tandem.net.httpmini import Route
from tandem.store import Change, LogTruncated, Store

log = logging.getLogger("tandem.ha.replicator")

BATCH = 500
RETENTION_EVERY = 2.0  # seconds between retention checks


class Resync(TandemError):
    """The session must start over (the peer refused a frame)."""


class Replicator(Replication):
    def __init__(self, host: ReplicationHost, ops: ServerOps, peer: PeerLink, cfg: HASection,
                 gate: BackchannelGate) -> None:
        self.host, self.ops, self.peer, self.cfg, self.gate = host, ops, peer, cfg, gate
        self.sync = cfg.ReplicationMode == "sync"
        self.acked_lsn = 0
        self.in_sync = False
        self.catching_up = False
        self.kick = asyncio.Event()
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.task: asyncio.Task[None] | None = None
        self.replica = Replica(host, ops, cfg, gate)
        self.last_error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._record_lock = asyncio.Lock()  # one change of the in-sync set at a time
        self._recording = False  # a write naming the peer in sync is under way

    def __repr__(self) -> str:
        return (f"<Replicator {self.host.name} {'sync' if self.sync else 'async'} acked={self.acked_lsn} "
                f"in_sync={self.in_sync} catching_up={self.catching_up}>")

    @property
    def store(self) -> Store:
        """The open store (StoreError when it is closed)."""
        return self.replica.store

    def attach(self, store: Store) -> None:
        if self._loop is None:
            asyncio.get_running_loop().create_task(self._retention())
        self._loop = asyncio.get_running_loop()
        store.add_listener(self._on_commit)

    def _on_commit(self, change: Change) -> None:  # may run on a worker thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.kick.set)

    async def _retention(self) -> None:
        """Keep the change log bounded (`LogRetention` changes), on both halves. A passive
        that falls further behind than the log reaches is caught up by a snapshot."""
        keep = self.cfg.LogRetention
        while True:
            await asyncio.sleep(RETENTION_EVERY)
            st = self.ops.store
            if st is None:
                continue
            try:
                if st.log_size() > keep:
                    dropped = await asyncio.to_thread(st.truncate_log, keep)
                    log.info("change log trimmed by %d entries (LogRetention=%d)", dropped, keep)
            except StoreError as exc:
                log.warning("change log retention failed: %s", exc)

    def routes(self) -> dict[tuple[str, str], Route]:
        return self.replica.routes()

    # ---- what the HA loop asks ----
    def passive_syncing(self) -> bool:
        return self.replica.syncing()

    def peer_syncing(self) -> bool:
        return self.task is not None and self.catching_up

    def status(self) -> dict[str, Any]:
        st = self.ops.store
        if self.task is not None and st is not None:
            return {"replicated_lsn": self.acked_lsn, "lag": st.last_lsn() - self.acked_lsn,
                    "in_sync": self.in_sync, "mode": "sync" if self.sync else "async"}
        peer_lsn = self.peer.view.lsn if self.peer.alive() else None
        mine = st.last_lsn() if st is not None else None
        lag = peer_lsn - mine if isinstance(peer_lsn, int) and mine is not None else None
        return {"replicated_lsn": mine, "lag": lag, "mode": "sync" if self.sync else "async"}

    async def on_state(self, state: str, epoch: int) -> None:
        if state in {s.value for s in SERVING}:
            if self.task is None:
                self.in_sync, self.catching_up, self.acked_lsn = False, False, 0
                self.task = asyncio.create_task(self._run())
        else:
            self.fail_pending()

    def fail_pending(self) -> None:
        """Step-down: end the session and wake every write waiting for an ack; from now
        on a write the peer has not acked is refused (never acknowledged without it)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.in_sync = self.catching_up = False
        self._wake_waiters()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    # ---- durability of acknowledged writes ----
    def _ack_observations(self, lsn: int, epoch: int, timed_out: bool) -> AckObservations:
        rec = self.host.lock.record
        return AckObservations(
            sync=self.sync, peer_acked=self.acked_lsn >= lsn, streaming=self.in_sync and self.task is not None,
            peer_alive=self.peer.alive(), timed_out=timed_out, holds_verified=self.host.holds_verified_lock(),
            lock_epoch=rec.epoch, write_epoch=epoch, peer_in_record=self._recording or self._peer_named(rec))

    def _peer_named(self, rec: LockRecord) -> bool:
        return any(n != self.host.name for n in rec.in_sync)

    async def wait_durable(self, lsn: int, epoch: int) -> None:
        """Return once the write at (`epoch`, `lsn`) may be acknowledged to a client;
        raise NotDurable when it may not (rule 4). `may_acknowledge` decides; this only
        carries out its verdicts: wait for the peer's ack (at most the peer timeout),
        record the peer out of sync, answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.peer_dead_after / 1000
        timed_out = False
        while True:
            verdict, why = may_acknowledge(self._ack_observations(lsn, epoch, timed_out))
            if verdict is Verdict.ACK:
                return
            if verdict is Verdict.REFUSE:
                raise NotDurable(f"write at lsn {lsn} not acknowledged: {why}")
            if verdict is Verdict.DROP_PEER:
                await self._drop_peer(f"{why} (lsn {lsn})")
                continue
            fut: asyncio.Future[None] = loop.create_future()
            self.waiters.append((lsn, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
            except TimeoutError:
                timed_out = True
                self.waiters = [w for w in self.waiters if w[1] is not fut]

    def _acked(self, lsn: int) -> None:
        self.acked_lsn = lsn
        keep = []
        for want, fut in self.waiters:
            if want <= lsn:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self.waiters = keep

    def _wake_waiters(self) -> None:
        """Every waiting write asks `may_acknowledge` again (the session or the record changed)."""
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters = []

    async def _drop_peer(self, why: str) -> None:
        """Record in the LockFile that the peer is not in sync, *before* any write is
        acknowledged without it. Only a server holding a verified lock may change the
        record (a stepping-down or stalled one would block its own handover: the peer
        would read itself out of sync and wait). Raises NotDurable when it may not or
        the write fails: nothing is acknowledged then."""
        async with self._record_lock:
            rec = self.host.lock.record
            if not (self._recording or self._peer_named(rec)):
                return  # already recorded
            if not self.host.holds_verified_lock():
                raise NotDurable(f"cannot record the peer out of sync ({why}): this server does not hold "
                                 "a verified lock")
            try:
                await self.host.lock.set_in_sync([self.host.name], rec.epoch)
            except (TimeoutError, OSError, LockError) as exc:
                raise NotDurable(f"cannot record the peer out of sync ({why}): "
                                 f"{exc or type(exc).__name__}") from exc
            self.in_sync = self._recording = False
            self.ops.console(f"REPL  peer out of sync: {why}; writes now acknowledged without it")
            self._wake_waiters()
            self.host.nudge()

    # ---- active side ----
    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (TandemError, TimeoutError, OSError, ValueError, KeyError) as exc:
                msg = str(exc) or type(exc).__name__
                if msg != self.last_error:
                    log.warning("replication session ended: %s", msg)
                    self.last_error = msg
            self.catching_up = False
            self.in_sync = False  # nothing streams now: a write waits no more, the record decides
            self._wake_waiters()
            if self.host.holds_verified_lock():
                try:
                    await self._drop_peer("replication session ended")
                except NotDurable as exc:
                    log.error("%s", exc)
            await asyncio.sleep(self.cfg.HeartbeatInterval / 1000)

    async def _post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        payload = {"epoch": self.host.lock.record.epoch, "leader": self.host.name, **payload}
        return await self.peer.client.post(path, payload, timeout=timeout or 5.0)

    def _has_change(self, lsn: int, epoch: int) -> bool | None:
        """Does our log hold the change (epoch, lsn)? None when the log no longer reaches it."""
        st = self.store
        if lsn == 0:
            return True
        if lsn == st.last_lsn():
            return epoch == st.last_change_epoch()
        try:
            found = st.changes_since(lsn - 1, limit=1)
        except LogTruncated:
            return None
        return bool(found) and found[0].lsn == lsn and found[0].epoch == epoch

    async def _session(self) -> None:
        if not self.peer.alive():
            raise PeerError("peer not alive")
        hello = await self._post("/ha/repl/hello", {"last_lsn": self.store.last_lsn()})
        plsn, pepoch = int(hello["last_lsn"]), int(hello["last_epoch"])
        common = None if plsn > self.store.last_lsn() else self._has_change(plsn, pepoch)
        if common:
            try:
                self.store.changes_since(plsn, limit=1)
                acked = plsn
            except LogTruncated:
                acked = await self._send_snapshot(diverged=False)
        else:
            acked = await self._send_snapshot(diverged=True)
        self._acked(acked)
        self.catching_up = acked < self.store.last_lsn()
        if self.catching_up:
            self.ops.console(f"REPL  catching up the peer from lsn {acked} to {self.store.last_lsn()}")
        recorded = False  # the LockFile names the peer in sync
        while True:
            if recorded and not self.in_sync:
                recorded = False  # dropped (a slow ack): earn the record again
            if self.acked_lsn < self.store.last_lsn():
                try:
                    batch = self.store.changes_since(self.acked_lsn, limit=BATCH)
                except LogTruncated:
                    self._acked(await self._send_snapshot(diverged=False))
                    continue
                resp = await self._post("/ha/repl/frames", {"changes": [c.to_json() for c in batch],
                                                            "catchup": self.catching_up}, timeout=2.0)
                if not resp.get("ok"):
                    raise Resync(f"peer refused a frame: {resp.get('error')}")
                self._acked(int(resp["acked_lsn"]))
                continue
            if not recorded:
                if not self.in_sync:
                    self.in_sync = True  # from now on every new write waits for the peer...
                    continue  # ...and whatever was committed meanwhile is shipped first
                await self._record_peer_in_sync(str(hello.get("server", "")))
                recorded = True
                if self.catching_up:  # tell the passive the catch-up is over (PassiveSync -> Passive now)
                    await self._post("/ha/repl/frames", {"changes": [], "catchup": False}, timeout=2.0)
                self.catching_up = False
                self.ops.console(f"REPL  peer in sync at lsn {self.acked_lsn}")
                self.host.nudge()
            if not self.peer.alive():
                raise PeerError("peer dead")
            self.kick.clear()
            if self.store.last_lsn() == self.acked_lsn:
                try:
                    await asyncio.wait_for(self.kick.wait(), self.cfg.HeartbeatInterval / 1000)
                except TimeoutError:
                    pass

    async def _record_peer_in_sync(self, peer: str) -> None:
        """Name the peer in sync in the LockFile. While the write is under way a write
        the peer has not acked counts as if the record named it already (it soon may)."""
        async with self._record_lock:
            if not self.host.holds_verified_lock():
                raise Resync("no verified lock: the peer is not recorded in sync")
            self._recording = True
            # if this raises (a timeout), the write may still land on the LockFile thread:
            # `_recording` stays set until a drop (queued behind it) has written us alone
            await self.host.lock.set_in_sync([self.host.name, peer], self.host.lock.record.epoch)
            self._recording = False

    async def _send_snapshot(self, diverged: bool) -> int:
        self.catching_up = True
        snap: bytes = await asyncio.to_thread(self.store.snapshot)
        self.ops.console(f"REPL  sending a snapshot ({len(snap)} bytes){' to a diverged peer' if diverged else ''}")
        resp = await self._post("/ha/repl/snapshot", {"snapshot": base64.b64encode(snap).decode(),
                                                      "diverged": diverged}, timeout=60.0)
        if not resp.get("ok"):
            raise Resync(f"peer refused the snapshot: {resp.get('error')}")
        return int(resp["acked_lsn"])
