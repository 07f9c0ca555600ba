"""Carrying out what `decide()` decided: one method per `Action`.

`Actions.perform` runs a decision's actions in order, each shielded from
cancellation ("stop serving first, then release" is never half-done), and
stops at the first activation step that fails: `failure` then says why, and
the controller decides again knowing it (`Observations.activation_failed`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tandem.errors import LockError, StoreError, TandemError
from tandem.ha.decide import Action, Decision
from tandem.ha.holding import Holding, HoldOff
from tandem.ha.interfaces import Replication, ServerOps
from tandem.ha.peer import PeerLink
from tandem.ha.states import State

HOLD_OFF_AFTER_STEP_DOWN = 1.0


class ActionHost(Protocol):
    """What the actions read and change of the controller."""

    name: str
    state: State
    epoch: int  # raised to every epoch an action learns; never lowered
    forced: bool  # an operator forced activation: the next claim records it, then it is over
    replication: Replication


class Actions:
    def __init__(self, host: ActionHost, ops: ServerOps, holding: Holding, peer: PeerLink, hold_off: HoldOff,
                 wake: asyncio.Event) -> None:
        self.host, self.ops, self.holding, self.peer, self.hold_off, self.wake = host, ops, holding, peer, hold_off, wake
        self.lock = holding.lock
        self.failure: str | None = None  # why the activation step just performed failed
        self.stepping_down = False  # from the first step-down action until the release
        self.announcing: asyncio.Task[None] | None = None  # telling the peer we released

    async def perform(self, d: Decision) -> None:
        for action in d.actions:
            await asyncio.shield(self.act(action, d.drain))
            if self.failure is not None:
                return

    def _fail(self, why: str) -> None:
        self.ops.console(f"HA  activation aborted: {why}")
        self.failure = why

    async def act(self, action: Action, drain: float) -> None:
        """One action. `drain`: how long in-flight requests may finish when the client port closes."""
        host = self.host
        if action is Action.TRY_ACQUIRE:
            if await self.holding.try_acquire():
                self.wake.set()  # claim at once, not a tick later
            host.epoch = max(host.epoch, self.lock.record.epoch)
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
            host.replication.fail_pending()
        elif action is Action.RELEASE_LOCK:
            self.stepping_down = False  # the lock is gone: nothing can be vouched for anyway
            released = self.holding.release()
            if self.hold_off.active() is None:
                self.hold_off.set(HOLD_OFF_AFTER_STEP_DOWN, "just stepped down: giving the peer the first try")
            if released is not None:  # we stopped serving first: the peer need not wait
                self.announcing = asyncio.get_running_loop().create_task(self.peer.announce_release(released))
        elif action is Action.CLOSE_STORE:
            self.ops.close_store()

    async def _claim(self) -> None:
        host = self.host
        try:
            store_epoch = self.ops.store.epoch if self.ops.store is not None else 0
            epoch = await self.holding.claim(host.name, host.forced, max(host.epoch, store_epoch),
                                             still_ours=self._still_activating)
        except (TimeoutError, OSError, LockError) as exc:
            self._fail(f"cannot write the LockFile: {exc or type(exc).__name__}")
            return
        host.epoch = max(host.epoch, epoch)
        if host.forced:
            self.ops.console(f"HA  operator forced activation at epoch={epoch}: acknowledged writes may be lost")
            host.forced = False
        if self.ops.store is not None:
            try:
                self.ops.store.set_epoch(epoch)
            except StoreError as exc:
                self._fail(f"store refuses epoch {epoch}: {exc}")

    def _still_activating(self, epoch: int) -> bool:
        return (self.host.state == State.ACTIVATING and self.holding.watch.claimed
                and self.lock.record.epoch == epoch)
