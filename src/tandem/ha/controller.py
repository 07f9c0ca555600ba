"""The HA loop: observe -> decide -> act, one cycle at a fixed pace.

Every state change goes through `decide()` (`decide.py`): the LockFile and the
peer's news, and also the operator's switchover and force-activate, a failed
activation step and the server stopping, are observations. Beside the cycle,
fixed-pace loops feed observations: heartbeats to the peer (`peer.py`), the
passive's record reads and the holder's verification thread (`lockwatch.py`),
and the isolation probe. Every I/O has a hard timeout shorter than what it
protects. The cycle does no I/O except the actions it decides, performed in
order and shielded from cancellation: "stop serving first, then release" is
never half-done. The HA-port routes are in `endpoints.py`, replication in
`replicator.py` (which sees this controller only as a `ReplicationHost`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tandem.errors import LockError, PeerError, StoreError, TandemError
from tandem.ha.decide import Action, Decision, Observations, decide
from tandem.ha.endpoints import HAEndpoints
from tandem.ha.interfaces import Controller, NoReplication, Replication, Routes, ServerOps
from tandem.ha.lockfile import LockFile, LockRecord, check_lockfile
from tandem.ha.lockwatch import LockWatch
from tandem.ha.pace import every
from tandem.ha.peer import PeerLink
from tandem.ha.probe import Probe
from tandem.ha.replicator import Replicator
from tandem.ha.states import HOLDING, SERVING, State, check_transition
from tandem.store import Store

log = logging.getLogger("tandem.ha")

HOLD_OFF_AFTER_STEP_DOWN = 1.0
HOLD_OFF_AFTER_SWITCHOVER = 5.0
HOLD_OFF_AFTER_FAILURE = 3.0
TIE_BREAK = "secondary at start: the primary has the first try"


def preflight(profile: Any) -> None:
    """Checks that must fail the start with exit 2 (rule 8)."""
    if profile.ha.Type != "none":
        check_lockfile(profile.ha.LockFile)


class HAController(Controller):
    def __init__(self, ops: ServerOps, replication: Replication | None = None) -> None:
        super().__init__(ops)
        ha = self.cfg = ops.profile.ha
        preflight(ops.profile)
        self.mode, self.name = ha.Type, ops.profile.server.Name or ops.profile.name
        self.state, self.since = State.STARTING, time.time()
        self.epoch = 0  # highest epoch known; never goes backwards
        self.lock = LockFile(ha.LockFile, self.name, ha.LockIOTimeout / 1000)
        self.watch = LockWatch(self.lock, ha.LockVerifyInterval / 1000,
                               fence=(ha.LockVerifyInterval + ha.LockIOTimeout) / 1000)
        self.probe = Probe(ha.GatewayServerIPAddress, ha.GatewayServerPort, ha.ProbeTimeout / 1000,
                           ha.ProbeFailures)
        self.peer = PeerLink(ha, epoch=lambda: self.epoch)
        self.endpoints = HAEndpoints(self)
        self.replication = replication or (Replicator(self, ha, self.endpoints.peer_gate)
                                           if self.mode == "replicated" else NoReplication())
        self.tick = max(0.01, min(ha.LockRetryInterval, ha.LockVerifyInterval, ha.HeartbeatInterval) / 2000)
        self.lock_lost = self.stepping_down = self.skip_takeover_wait = self.forced = self.switching = False
        self.failure: str | None = None  # why the activation step just performed failed
        self.acquired_at: float | None = None
        self.next_attempt = self.hold_off_until = 0.0
        self.hold_off_reason = self.last_reason = ""
        self.handover_epoch: int | None = None
        self.last_cycle = time.monotonic()
        self.wake, self.cycle_lock = asyncio.Event(), asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.announcing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"<HAController {self.name} {self.mode}/{self.cfg.Role} state={self.state} epoch={self.epoch} "
                f"lock={'held' if self.lock.held else 'free'} peer={self.peer.state()} "
                f"isolated={self.probe.isolated}>")

    # ---- observations ----
    def may_activate(self) -> bool:
        if self.mode == "shared":
            return True
        rec = self.lock.record
        if rec.unreadable:
            return False
        return rec.epoch == 0 or self.name in rec.in_sync or (not rec.in_sync and rec.holder == self.name)

    def waiting_reason(self) -> str:
        rec = self.lock.record
        if rec.unreadable:
            return (f"the LockFile {self.lock.path} holds no readable Tandem record: whether our store has "
                    "every acknowledged write is unknown (fix the file or `tandem ha force-activate`)")
        return (f"store may miss acknowledged writes: the last active {rec.holder or '?'} (epoch {rec.epoch}) "
                f"recorded only {rec.in_sync} in sync; waiting for it to return "
                "(or `tandem ha force-activate`)")

    def observe(self, stopping: bool = False) -> Observations:
        now, took, peer = time.monotonic(), self.acquired_at, self.peer.view
        return Observations(
            mode=self.mode, state=self.state, holds_lock=self.lock.held, lock_fresh=self.watch.fresh(),
            lock_lost=self.lock_lost,
            takeover_elapsed=took is not None and (self.skip_takeover_wait
                                                   or now - took >= self.cfg.TakeoverWait / 1000),
            client_open=self.ops.client_open, peer_alive=self.peer.alive(), isolated=self.probe.isolated,
            may_activate=self.may_activate(), hold_off=self.hold_off_reason if now < self.hold_off_until else None,
            retry_due=now >= self.next_attempt, passive_syncing=self.replication.passive_syncing(),
            peer_syncing=self.replication.peer_syncing(),
            peer_serving_higher_epoch=(self.peer.alive() and peer.serving and peer.epoch > self.lock.record.epoch
                                       and self.watch.claimed),
            store_open=self.ops.store is not None, forced=self.forced, switchover=self.switching,
            activation_failed=self.failure, stopping=stopping)

    def holds_verified_lock(self) -> bool:
        """May this server vouch for a write (rule 4) or change the LockFile's in-sync set?
        Only while serving, not stepping down, with the lock held, claimed and verified
        within the self-fence deadline, the record naming us."""
        return (self.state in SERVING and not self.stepping_down and self.watch.fresh()
                and self.lock.record.holder == self.name)

    @property
    def serving(self) -> bool:
        """Rule 1: serving state, lock held and verified within the self-fence deadline, port open."""
        return self.state in SERVING and self.watch.fresh() and self.ops.client_open

    def healthy(self) -> bool:
        return time.monotonic() - self.last_cycle < max(0.5, self.cfg.WatchdogTimeout / 2000)

    async def durable(self, lsn: int, epoch: int) -> None:
        await self.replication.wait_durable(lsn, epoch)

    # ---- the cycle ----
    async def run_cycle(self, stopping: bool = False) -> str:
        async with self.cycle_lock:
            return await self._cycle(stopping)

    async def _cycle(self, stopping: bool = False) -> str:
        d = decide(self.observe(stopping))
        if Action.OPEN_CLIENT in d.actions and d.state != self.state:
            # the state says serving before the port accepts: a request on a connection
            # the port accepted is served, not turned away as not_active (SPEC section 3)
            self._set_state(d.state, d.reason)
        await self._perform(d)
        if self.failure is not None:  # an activation step failed: decide again, knowing it
            d = decide(self.observe())
            await self._perform(d)
            self._hold_off(HOLD_OFF_AFTER_FAILURE, f"backing off after a failed activation: {self.failure}")
            self.failure = None
        if d.state != self.state:
            self._set_state(d.state, d.reason)
        self.last_cycle, self.last_reason = time.monotonic(), d.reason
        return d.reason

    async def _perform(self, d: Decision) -> None:
        for action in d.actions:
            await asyncio.shield(self._act(action, d.drain))
            if self.failure is not None:
                return

    def _set_state(self, new: State, reason: str) -> None:
        check_transition(self.mode, self.state, new)
        old, self.state, self.since = self.state, new, time.time()
        self.ops.console(f"HA  {old} -> {new}  epoch={self.epoch}  reason={reason}")
        if new != State.STOPPED:
            asyncio.get_running_loop().create_task(self.replication.on_state(str(new), self.epoch))

    def _hold_off(self, seconds: float, reason: str) -> None:
        self.hold_off_until, self.hold_off_reason = time.monotonic() + seconds, reason

    def _fail(self, why: str) -> None:
        self.ops.console(f"HA  activation aborted: {why}")
        self.failure = why

    async def _act(self, action: Action, drain: float) -> None:
        """One action. `drain`: how long in-flight requests may finish when the client port closes."""
        if action is Action.TRY_ACQUIRE:
            self.next_attempt = time.monotonic() + self.cfg.LockRetryInterval / 1000
            try:
                if await self.lock.try_lock():
                    self.wake.set()  # claim at once, not a tick later
                self.watch.problem("")
            except (TimeoutError, OSError, LockError) as exc:
                self.watch.problem(f"lock attempt on {self.lock.path} failed: {exc or type(exc).__name__}")
            self.epoch = max(self.epoch, self.lock.record.epoch)
        elif action is Action.CLAIM:
            await self._claim()
        elif action is Action.OPEN_STORE:
            try:
                self.ops.open_store().set_epoch(self.lock.record.epoch)
            except (StoreError, OSError) as exc:
                self._fail(f"cannot open the store: {exc}")
        elif action is Action.OPEN_CLIENT:
            try:
                await self.ops.activate()
            except (OSError, RuntimeError, TandemError) as exc:
                self._fail(f"cannot open the client port: {exc}")
        elif action is Action.CLOSE_CLIENT:
            if self.lock.held:
                self.stepping_down = True
            await self.ops.deactivate(drain_timeout=drain)
        elif action is Action.FAIL_PENDING:
            self.stepping_down = True
            self.replication.fail_pending()
        elif action is Action.RELEASE_LOCK:
            released = self.lock.record.epoch if self.watch.claimed else None
            self._release()
            if released is not None:  # we stopped serving first: the peer need not wait
                self.announcing = asyncio.get_running_loop().create_task(self.peer.announce_release(released))
        elif action is Action.CLOSE_STORE:
            self.ops.close_store()

    async def _claim(self) -> None:
        prev = self.lock.record  # the previous holder's record, found under the lock
        try:
            store_epoch = self.ops.store.epoch if self.ops.store is not None else 0
            epoch = await self.lock.claim([self.name], forced=self.forced, floor=max(self.epoch, store_epoch))
        except (TimeoutError, OSError, LockError) as exc:
            self._fail(f"cannot write the LockFile: {exc or type(exc).__name__}")
            return
        now = time.monotonic()
        self.watch.claimed, self.watch.last_verified, self.acquired_at, self.lock_lost = True, now, now, False
        self.skip_takeover_wait, why = self._old_holder_gone(prev)
        if self.skip_takeover_wait:
            self.ops.console(f"HA  no takeover wait: {why}")
        elif prev.holder == self.peer.view.name and self.peer.view.heard_at > 0:
            asyncio.get_running_loop().create_task(self._probe_old_holder(epoch))
        asyncio.get_running_loop().call_later(0 if self.skip_takeover_wait else self.cfg.TakeoverWait / 1000,
                                              self.wake.set)
        self.handover_epoch, self.epoch = None, max(self.epoch, epoch)
        if self.forced:
            self.ops.console(f"HA  operator forced activation at epoch={epoch}: acknowledged writes may be lost")
            self.forced = False
        if self.ops.store is not None:
            try:
                self.ops.store.set_epoch(epoch)
            except StoreError as exc:
                self._fail(f"store refuses epoch {epoch}: {exc}")

    async def _probe_old_holder(self, epoch: int) -> None:
        """Just after taking the lock from our peer: does its HA port refuse connections?
        The previous holder claimed its epoch before we acquired; a refusal *now* means
        that process is gone. Only signed exchanges with the peer before (heard_at)
        vouch that the address is really the peer's."""
        if not await self.peer.port_refuses():
            return  # something listens (or nothing proves otherwise): the previous holder may be alive
        if self.state == State.ACTIVATING and self.watch.claimed and self.lock.record.epoch == epoch:
            self.skip_takeover_wait = True
            self.ops.console(f"HA  no takeover wait: the previous holder {self.peer.view.name} is down "
                             "(its HA port refuses connections)")
            self.wake.set()

    def _old_holder_gone(self, rec: LockRecord) -> tuple[bool, str]:
        """The takeover wait covers a holder that lost the lock without knowing yet. It is
        skipped only when the holder of `rec` provably no longer serves: it handed that very
        epoch over after it stopped serving, or nobody ever held the lock (or, observed after
        we took the lock, its HA port refuses connections: `_probe_old_holder`)."""
        if self.handover_epoch is not None and self.handover_epoch == rec.epoch:
            return True, f"the peer handed over epoch {rec.epoch}"
        if rec.epoch == 0 and not rec.holder:
            return True, "nobody has held the lock before"
        return False, ""

    def _release(self) -> None:
        self.lock.release()
        self.watch.claimed, self.acquired_at, self.lock_lost = False, None, False
        self.stepping_down = self.skip_takeover_wait = False  # the lock is gone: nothing can be vouched for
        self.next_attempt = time.monotonic() + self.cfg.LockRetryInterval / 1000
        if time.monotonic() >= self.hold_off_until:
            self._hold_off(HOLD_OFF_AFTER_STEP_DOWN, "just stepped down: giving the peer the first try")

    # ---- what the loops and the peer tell us ----
    async def _record_tick(self) -> None:
        """A replicated passive learns from the record whether it is in sync (rule 5)."""
        if self.lock.held or self.mode != "replicated" or self.state in HOLDING:
            return
        before = self.may_activate()
        if await self.watch.read("reading the LockFile"):
            self.epoch = max(self.epoch, self.lock.record.epoch)
            if self.may_activate() != before:
                self.wake.set()

    def _lock_lost(self, why: str) -> None:
        if self.lock.held and self.watch.claimed:
            self.ops.console(f"HA  lock verification failed: {why}")
            self.lock_lost = True
            self.wake.set()

    def heartbeat_payload(self) -> dict[str, Any]:
        store = self.ops.store
        return {"server": self.name, "role": self.cfg.Role, "state": str(self.state), "epoch": self.epoch,
                "serving": self.serving, "lsn": store.last_lsn() if store is not None else None}

    async def _heartbeat_tick(self) -> None:
        if (d := await self.peer.heartbeat(self.heartbeat_payload())) is not None:
            self.peer_news(d)

    def peer_news(self, d: dict[str, Any]) -> None:
        revived = self.peer.heard(d)
        self.epoch = max(self.epoch, self.peer.view.epoch)
        if self.peer.view.serving and self.hold_off_reason == TIE_BREAK:
            self.hold_off_until = 0.0  # the peer already serves: there is no tie to break
        if revived or (self.peer.view.serving and self.state in HOLDING):
            self.wake.set()

    def peer_released(self, epoch: int) -> None:
        self.handover_epoch = epoch
        self.hold_off_until, self.next_attempt = 0.0, 0.0
        self.ops.console(f"HA  peer released epoch={epoch} after it stopped serving")
        self.wake.set()

    async def _probe_tick(self) -> None:
        was = self.probe.isolated
        await self.probe.run_once()
        if self.probe.isolated != was:
            if self.probe.isolated:
                self.ops.console(f"HA  isolated: {self.probe.failures} probes of {self.probe.target} failed "
                                 f"({self.probe.last_error})")
            else:
                self.ops.console(f"HA  probe of {self.probe.target} answers again: no longer isolated")
            self.wake.set()

    # ---- operator commands (HA port: endpoints.py) ----
    async def switchover(self) -> tuple[str | None, int]:
        async with self.cycle_lock:
            if self.state not in SERVING:
                return f"{self.name} is {self.state}, not active", self.epoch
            ready = State.PASSIVE.value
            if not self.peer.alive() or self.peer.view.state != ready:
                return f"peer is {self.peer.state()}, not {ready}: refusing a switchover", self.epoch
            epoch = self.lock.record.epoch
            self._hold_off(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
            self.switching = True
            try:
                await self._cycle()
            finally:
                self.switching = False
            self._hold_off(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
        try:
            await self.peer.client.post("/ha/peer/takeover", {"epoch": epoch}, timeout=2.0)
        except PeerError as exc:
            self.ops.console(f"HA  switchover: peer did not acknowledge the handover ({exc}); it will take "
                             "the lock on its next attempt")
        return None, epoch

    def force_activate(self) -> None:
        self.forced, self.hold_off_until = True, 0.0
        self.ops.console("HA  force-activate requested by operator: this server may activate although its "
                         "store may miss acknowledged writes (rule 5 overridden)")
        self.wake.set()

    # ---- Controller API ----
    async def start(self) -> None:
        if not self.probe.enabled:
            self.ops.console("HA  warning: GatewayServerIPAddress is empty: isolation probe disabled")
        if self.mode == "replicated":
            self.replication.attach(self.ops.open_store())
        if self.cfg.Role == "secondary":
            self._hold_off(2 * self.cfg.peer_dead_after / 1000, TIE_BREAK)
        try:  # the first decision already knows the epoch and whether we are in sync
            await self.lock.read()
            self.epoch = max(self.epoch, self.lock.record.epoch)
        except (TimeoutError, OSError, LockError) as exc:
            log.warning("reading the LockFile at start failed: %s", exc or type(exc).__name__)
        ha = self.cfg
        self.tasks = [asyncio.create_task(every(self.tick, self.run_cycle, "cycle", self.wake)),
                      asyncio.create_task(every(ha.LockVerifyInterval / 1000, self._record_tick, "record")),
                      asyncio.create_task(every(ha.HeartbeatInterval / 1000, self._heartbeat_tick, "heartbeat"))]
        if self.probe.enabled:
            self.tasks.append(asyncio.create_task(every(ha.ProbeInterval / 1000, self._probe_tick, "probe")))
        self.watch.start(self._lock_lost)

    async def stop(self) -> None:
        self.watch.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.run_cycle(stopping=True)  # stop serving first (in-flight requests drain), then release
        self.lock.close()
        if self.announcing is not None:  # let the peer know it need not wait (bounded: 1 s)
            await asyncio.gather(self.announcing, return_exceptions=True)
        await self.replication.close()
        await self.peer.close()

    def store_reopened(self, store: Store) -> None:
        self.replication.attach(store)

    def routes(self) -> Routes:
        return {**self.endpoints.routes(), **self.replication.routes()}

    def status(self) -> dict[str, Any]:
        rep, rec = self.replication.status(), self.lock.record
        return {
            "type": self.mode, "role": self.cfg.Role, "state": str(self.state), "epoch": self.epoch,
            "peer": {"state": self.peer.state(), "address": f"{self.cfg.BackupHAIPAddress}:{self.cfg.BackupHAPort}",
                     "client_address": self.cfg.BackupServerIp, "epoch": self.peer.view.epoch,
                     "replicated_lsn": rep.get("replicated_lsn"), "lag": rep.get("lag")},
            "lock": {"path": self.lock.path, "held": self.lock.held and self.watch.claimed,
                     "verified_ms_ago": self.watch.verified_ms_ago(), "holder": rec.holder, "in_sync": rec.in_sync},
            "isolated": self.probe.isolated, "since": self.since, "reason": self.last_reason,
            "waiting_reason": self.waiting_reason() if self.state == State.WAITING else None,
            "replication": rep,
        }

    # ---- ReplicationHost (what the replicator may ask) ----
    def store(self) -> Store | None:
        return self.ops.store

    def console(self, line: str) -> None:
        self.ops.console(line)

    def set_aside_store(self) -> str:
        return self.ops.set_aside_store()

    def peer_alive(self) -> bool:
        return self.peer.alive()

    def peer_lsn(self) -> int | None:
        return self.peer.view.lsn

    async def post(self, path: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.peer.client.post(path, payload, timeout=timeout)

    def refuses_frames(self) -> str | None:
        return f"{self.name} is {self.state}" if self.state in HOLDING or self.lock.held else None

    def learn_epoch(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def nudge(self) -> None:
        self.wake.set()
