"""The HA loop: observe -> decide -> act, one cycle at a fixed pace.

Every state change goes through `decide()`: the LockFile, the peer, the probe,
the operator's switchover and force-activate, a failed activation step and the
server stopping are all observations. Fixed-pace loops feed them: heartbeats
(`peer.py`), record reads and the verification thread (`lockwatch.py`), the
isolation probe. The cycle does no I/O but the actions it decides, in order and
shielded from cancellation: "stop serving first, then release" is never
half-done. HA-port routes: `endpoints.py`; replication: `replicator.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from tandem.ha.actions import Actions
from tandem.ha.decide import Action, Observations, decide
from tandem.ha.endpoints import HAEndpoints
from tandem.ha.holding import Holding, HoldOff
from tandem.ha.interfaces import Controller, NoReplication, Replication, Routes, ServerOps
from tandem.ha.lockfile import LockFile, preflight
from tandem.ha.lockwatch import LockWatch
from tandem.ha.pace import every
from tandem.ha.peer import PeerLink
from tandem.ha.probe import Probe
from tandem.ha.replicator import Replicator
from tandem.ha.states import HOLDING, SERVING, State, check_transition
from tandem.store import Store

log = logging.getLogger("tandem.ha")

HOLD_OFF_AFTER_SWITCHOVER = 5.0
HOLD_OFF_AFTER_FAILURE = 3.0
HISTORY = 50  # state changes kept for /ha/status
TIE_BREAK = "secondary at start: the primary has the first try"


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
        self.holding = Holding(self.lock, self.watch, self.peer, ha, ops.console, self.nudge)
        self.replication = replication or (Replicator(self, ops, self.peer, ha, self.endpoints.peer_gate)
                                           if self.mode == "replicated" else NoReplication())
        self.tick = max(0.01, min(ha.LockRetryInterval, ha.LockVerifyInterval, ha.HeartbeatInterval) / 2000)
        self.forced = self.switching = False
        self.hold_off, self.last_reason = HoldOff(), ""
        # the last state changes with their reasons, newest last (the console's timeline)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.last_cycle = time.monotonic()
        self.wake, self.cycle_lock = asyncio.Event(), asyncio.Lock()
        self.actions = Actions(self, ops, self.holding, self.peer, self.hold_off, self.wake)
        self.tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return (f"<HAController {self.name} {self.mode}/{self.cfg.Role} state={self.state} epoch={self.epoch} "
                f"lock={'held' if self.lock.held else 'free'} peer={self.peer.state()} isolated={self.probe.isolated}>")

    # ---- observations ----
    def may_activate(self) -> bool:
        return self.mode == "shared" or self.lock.record.lets_activate(self.name)

    def observe(self, stopping: bool = False) -> Observations:
        peer = self.peer.view
        return Observations(
            mode=self.mode, state=self.state, holds_lock=self.lock.held, lock_fresh=self.watch.fresh(),
            lock_lost=self.watch.lost, takeover_elapsed=self.holding.takeover_elapsed(),
            client_open=self.ops.client_open, peer_alive=self.peer.alive(), isolated=self.probe.isolated,
            may_activate=self.may_activate(), hold_off=self.hold_off.active(),
            retry_due=time.monotonic() >= self.holding.next_attempt,
            passive_syncing=self.replication.passive_syncing(),
            peer_syncing=self.replication.peer_syncing(),
            peer_serving_higher_epoch=(self.peer.alive() and peer.serving and peer.epoch > self.lock.record.epoch
                                       and self.watch.claimed),
            store_open=self.ops.store is not None, forced=self.forced, switchover=self.switching,
            activation_failed=self.actions.failure, stopping=stopping)

    def holds_verified_lock(self) -> bool:
        """May this server vouch for a write (rule 4) or change the LockFile's in-sync set?
        Only while serving, not stepping down, with the lock held, claimed and verified
        within the self-fence deadline, the record naming us."""
        return (self.state in SERVING and not self.actions.stepping_down and self.watch.fresh()
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
        await self.actions.perform(d)
        if (failure := self.actions.failure) is not None:  # an activation step failed: decide again, knowing it
            d = decide(self.observe())
            await self.actions.perform(d)
            self.hold_off.set(HOLD_OFF_AFTER_FAILURE, f"backing off after a failed activation: {failure}")
            self.actions.failure = None
        if d.state != self.state:
            self._set_state(d.state, d.reason)
        self.last_cycle, self.last_reason = time.monotonic(), d.reason
        return d.reason

    def _set_state(self, new: State, reason: str) -> None:
        check_transition(self.mode, self.state, new)
        old, self.state, self.since = self.state, new, time.time()
        self.ops.console(f"HA  {old} -> {new}  epoch={self.epoch}  reason={reason}")
        self.history.append({"at": datetime.fromtimestamp(self.since, UTC).isoformat(), "from": str(old),
                             "to": str(new), "epoch": self.epoch, "reason": reason})
        if new != State.STOPPED:
            asyncio.get_running_loop().create_task(self.replication.on_state(str(new), self.epoch))

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
        if self.peer.view.serving and self.hold_off.reason == TIE_BREAK:
            self.hold_off.clear()  # the peer already serves: there is no tie to break
        if revived or (self.peer.view.serving and self.state in HOLDING):
            self.wake.set()

    def peer_released(self, epoch: int) -> None:
        self.holding.handover_epoch = epoch
        self.hold_off.clear()
        self.holding.next_attempt = 0.0
        self.ops.console(f"HA  peer released epoch={epoch} after it stopped serving")
        self.wake.set()

    async def _probe_tick(self) -> None:
        if (line := await self.probe.tick()) is not None:
            self.ops.console(line)
            self.wake.set()

    # ---- operator commands (HA port: endpoints.py) ----
    async def hand_over(self) -> tuple[str | None, int]:
        """Switchover: step down now for the peer to take over; (why refused or None, the epoch)."""
        async with self.cycle_lock:
            if self.state not in SERVING:
                return f"{self.name} is {self.state}, not active", self.epoch
            if not self.peer.alive() or self.peer.view.state != State.PASSIVE:
                return f"peer is {self.peer.state()}, not {State.PASSIVE}: refusing a switchover", self.epoch
            epoch, self.switching = self.lock.record.epoch, True
            self.hold_off.set(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
            try:
                await self._cycle()
            finally:
                self.switching = False
            self.hold_off.set(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
            return None, epoch

    def force_activate(self) -> None:
        self.forced = True
        self.hold_off.clear()
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
            self.hold_off.set(2 * self.cfg.peer_dead_after / 1000, TIE_BREAK)
        if await self.watch.read("reading the LockFile at start"):  # the first decision knows the epoch
            self.epoch = max(self.epoch, self.lock.record.epoch)
        ha = self.cfg
        self.tasks = [asyncio.create_task(every(self.tick, self.run_cycle, "cycle", self.wake)),
                      asyncio.create_task(every(ha.LockVerifyInterval / 1000, self._record_tick, "record")),
                      asyncio.create_task(every(ha.HeartbeatInterval / 1000, self._heartbeat_tick, "heartbeat"))]
        if self.probe.enabled:
            self.tasks.append(asyncio.create_task(every(ha.ProbeInterval / 1000, self._probe_tick, "probe")))
        self.watch.start(self.ops.console, self.nudge)

    async def stop(self) -> None:
        self.watch.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.run_cycle(stopping=True)  # stop serving first (in-flight requests drain), then release
        self.lock.close()
        if self.actions.announcing is not None:  # let the peer know it need not wait (bounded: 1 s)
            await asyncio.gather(self.actions.announcing, return_exceptions=True)
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
            "peer": self.peer.status(rep), "lock": self.watch.status(),
            "isolated": self.probe.isolated, "since": self.since, "reason": self.last_reason,
            "waiting_reason": rec.waiting_reason(self.lock.path) if self.state == State.WAITING else None,
            "replication": rep, "history": list(self.history),
        }

    # ---- ReplicationHost (what the replicator may ask) ----
    def refuses_frames(self) -> str | None:
        return f"{self.name} is {self.state}" if self.state in HOLDING or self.lock.held else None

    def learn_epoch(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def nudge(self) -> None:
        self.wake.set()

    def console(self, line: str) -> None:
        self.ops.console(line)
