"""The HA loop: observe -> decide -> act, one `run_cycle()` at a fixed pace.

Beside the cycle, three fixed-pace loops feed observations: lock
verification (holder only), heartbeats to the peer, and the isolation probe.
Every I/O has a hard timeout shorter than what it protects. The cycle itself
does no I/O except the actions it decides, performed in order and shielded
from cancellation: "stop serving first, then release" is never half-done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from tandem.errors import LockError, PeerError, StoreError, TandemError
from tandem.ha.backchannel import (
    AUTH_HEADER,
    OPERATOR,
    BackchannelGate,
    Frame,
    FrameGuard,
    PeerClient,
    PeerView,
    other_role,
    sign_response,
)
from tandem.ha.decide import Action, Observations, decide, standby_after_step_down, step_down_actions
from tandem.ha.interfaces import Controller, NoReplication, Replication, ServerOps
from tandem.ha.lockfile import LockFile, LockRecord, check_lockfile
from tandem.ha.probe import Probe
from tandem.ha.states import HOLDING, PEER_DEAD, SERVING, State, check_transition
from tandem.net.httpmini import Request, Response, Route

log = logging.getLogger("tandem.ha")

HOLD_OFF_AFTER_STEP_DOWN = 1.0
HOLD_OFF_AFTER_SWITCHOVER = 5.0
TIE_BREAK = "secondary at start: the primary has the first try"


def preflight(ops_profile: Any) -> None:
    """Checks that must fail the start with exit 2 (rule 8)."""
    ha = ops_profile.ha
    if ha.Type != "none":
        check_lockfile(ha.LockFile)


class HAController(Controller):
    def __init__(self, ops: ServerOps, replication: Replication | None = None) -> None:
        super().__init__(ops)
        prof = ops.profile
        ha = self.cfg = prof.ha
        preflight(prof)
        self.mode = ha.Type
        self.name = prof.server.Name or prof.name
        self.state = State.STARTING
        self.since = time.time()
        self.lock = LockFile(ha.LockFile, self.name, ha.LockIOTimeout / 1000)
        self.probe = Probe(ha.GatewayServerIPAddress, ha.GatewayServerPort, ha.ProbeTimeout / 1000,
                           ha.ProbeFailures)
        self.peer = PeerView()
        self.peer_client = PeerClient(ha.BackupHAIPAddress, ha.BackupHAPort, ha.PairSecret,
                                      ha.HeartbeatInterval / 1000, me=ha.Role, epoch=lambda: self.epoch)
        # frames are checked from their head, before a body byte is read (docs/ha.md)
        guard = FrameGuard(ha.PairSecret, ha.Role)
        self.peer_gate = BackchannelGate(guard, (other_role(ha.Role),))
        self.operator_gate = BackchannelGate(guard, (OPERATOR,))
        self.replication = replication or NoReplication()
        self.fence = (ha.LockVerifyInterval + ha.LockIOTimeout) / 1000
        self.tick = max(0.01, min(ha.LockRetryInterval, ha.LockVerifyInterval, ha.HeartbeatInterval) / 2000)
        self.epoch = 0  # highest epoch known; never goes backwards
        self.claimed = False
        self.last_verified = float("-inf")
        self.lock_lost = False
        self.stepping_down = False  # from the first step-down action until the release
        self.acquired_at: float | None = None
        self.skip_takeover_wait = False
        self.next_attempt = 0.0
        self.hold_off_until = 0.0
        self.hold_off_reason = ""
        self.forced = False
        self.handover_epoch: int | None = None
        self.last_cycle = time.monotonic()
        self.last_reason = ""
        self.peer_error = ""
        self.lock_error = ""  # the LockFile problem last logged ("" while it answers)
        self.wake = asyncio.Event()
        self.cycle_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.announcing: asyncio.Task[None] | None = None
        self._verifier_stop = threading.Event()

    def __repr__(self) -> str:
        return (f"<HAController {self.name} {self.mode}/{self.cfg.Role} state={self.state} epoch={self.epoch} "
                f"lock={'held' if self.lock.held else 'free'} peer={self.peer_state()} "
                f"isolated={self.probe.isolated}>")

    # ---- observations ----
    def peer_alive(self) -> bool:
        return time.monotonic() - self.peer.heard_at <= self.cfg.peer_dead_after / 1000

    def peer_state(self) -> str:
        return (self.peer.state or "?") if self.peer_alive() else PEER_DEAD

    def lock_fresh(self) -> bool:
        return self.lock.held and self.claimed and time.monotonic() - self.last_verified <= self.fence

    def may_activate(self) -> bool:
        if self.mode == "shared" or self.forced:
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

    def observe(self) -> Observations:
        now = time.monotonic()
        took = self.acquired_at
        return Observations(
            mode=self.mode, state=self.state, holds_lock=self.lock.held, lock_fresh=self.lock_fresh(),
            lock_lost=self.lock_lost,
            takeover_elapsed=took is not None and (self.skip_takeover_wait
                                                   or now - took >= self.cfg.TakeoverWait / 1000),
            client_open=self.ops.client_open, peer_alive=self.peer_alive(), isolated=self.probe.isolated,
            may_activate=self.may_activate(),
            hold_off=self.hold_off_reason if now < self.hold_off_until else None,
            retry_due=now >= self.next_attempt,
            passive_syncing=self.replication.passive_syncing(), peer_syncing=self.replication.peer_syncing(),
            peer_serving_higher_epoch=(self.peer_alive() and self.peer.serving
                                       and self.peer.epoch > self.lock.record.epoch and self.claimed),
            store_open=self.ops.store is not None)

    def holds_verified_lock(self) -> bool:
        """May this server vouch for a write (rule 4) or change the LockFile's in-sync set?
        Only while serving, not stepping down, with the lock held, claimed and verified
        within the self-fence deadline, the record naming us."""
        return (self.state in SERVING and not self.stepping_down and self.lock_fresh()
                and self.lock.record.holder == self.name)

    def standby_state(self) -> State:
        """Where this server rests after stepping down (the decide rule, not a copy)."""
        return standby_after_step_down(self.observe())

    async def durable(self, lsn: int, epoch: int) -> None:
        await self.replication.wait_durable(lsn, epoch)

    @property
    def serving(self) -> bool:
        """Rule 1: serving state, lock held and verified within the self-fence deadline, port open."""
        return self.state in SERVING and self.lock_fresh() and self.ops.client_open

    def healthy(self) -> bool:
        return time.monotonic() - self.last_cycle < max(0.5, self.cfg.WatchdogTimeout / 2000)

    # ---- the cycle ----
    async def run_cycle(self) -> str:
        async with self.cycle_lock:
            d = decide(self.observe())
            if Action.OPEN_CLIENT in d.actions and d.state != self.state:
                # the state says serving before the port accepts: a request on a connection
                # the port accepted is served, not turned away as not_active (SPEC section 3)
                self._set_state(d.state, d.reason)
            for action in d.actions:
                await asyncio.shield(self._act(action))
                if action in (Action.CLAIM, Action.OPEN_STORE, Action.OPEN_CLIENT) and not self.lock.held:
                    break  # the action failed and stepped down
            if self.state in HOLDING and not self.lock.held:
                self._set_state(self.standby_state(), "activation aborted")
            elif d.state != self.state and (self.lock.held or d.state not in HOLDING):
                self._set_state(d.state, d.reason)
            self.last_cycle = time.monotonic()
            self.last_reason = d.reason
            return d.reason

    def _set_state(self, new: State, reason: str) -> None:
        check_transition(self.mode, self.state, new)
        old, self.state, self.since = self.state, new, time.time()
        self.ops.console(f"HA  {old} -> {new}  epoch={self.epoch}  reason={reason}")
        asyncio.get_running_loop().create_task(self.replication.on_state(str(new), self.epoch))

    def _hold_off(self, seconds: float, reason: str) -> None:
        self.hold_off_until = time.monotonic() + seconds
        self.hold_off_reason = reason

    async def _act(self, action: Action, drain: float = 0.0) -> None:
        """One action. `drain` is how long in-flight requests may finish when the client
        port closes (0 in the cycle: a server that cannot prove its lock stops at once)."""
        if action is Action.TRY_ACQUIRE:
            self.next_attempt = time.monotonic() + self.cfg.LockRetryInterval / 1000
            try:
                if await self.lock.try_lock():
                    self.wake.set()  # claim at once, not a tick later
                self._lock_problem("")
            except (TimeoutError, OSError, LockError) as exc:
                self._lock_problem(f"lock attempt on {self.lock.path} failed: {exc or type(exc).__name__}")
            self.epoch = max(self.epoch, self.lock.record.epoch)
        elif action is Action.CLAIM:
            await self._claim()
        elif action is Action.OPEN_STORE:
            try:
                self.ops.open_store()
                assert self.ops.store is not None
                self.ops.store.set_epoch(self.lock.record.epoch)
            except (StoreError, OSError) as exc:
                await self._abort_activation(f"cannot open the store: {exc}")
        elif action is Action.OPEN_CLIENT:
            try:
                await self.ops.activate()
            except (OSError, RuntimeError, TandemError) as exc:
                await self._abort_activation(f"cannot open the client port: {exc}")
        elif action is Action.CLOSE_CLIENT:
            if self.lock.held:
                self.stepping_down = True
            await self.ops.deactivate(drain_timeout=drain)
        elif action is Action.FAIL_PENDING:
            self.stepping_down = True
            self.replication.fail_pending()
        elif action is Action.RELEASE_LOCK:
            released = self.lock.record.epoch if self.claimed else None
            self._release()
            if released is not None:  # we stopped serving first: the peer need not wait
                self.announcing = asyncio.get_running_loop().create_task(self._announce_release(released))
        elif action is Action.CLOSE_STORE:
            self.ops.close_store()

    async def _claim(self) -> None:
        prev = self.lock.record  # the previous holder's record, found under the lock
        in_sync = [self.name]
        try:
            store_epoch = self.ops.store.epoch if self.ops.store is not None else 0
            epoch = await self.lock.claim(in_sync, forced=self.forced, floor=max(self.epoch, store_epoch))
        except (TimeoutError, OSError, LockError) as exc:
            await self._abort_activation(f"cannot write the LockFile: {exc or type(exc).__name__}")
            return
        now = time.monotonic()
        self.claimed, self.last_verified, self.acquired_at, self.lock_lost = True, now, now, False
        self.skip_takeover_wait, why = self._old_holder_gone(prev)
        if self.skip_takeover_wait:
            self.ops.console(f"HA  no takeover wait: {why}")
        elif prev.holder == self.peer.name and self.peer.heard_at > 0:
            asyncio.get_running_loop().create_task(self._probe_old_holder(epoch))
        asyncio.get_running_loop().call_later(0 if self.skip_takeover_wait else self.cfg.TakeoverWait / 1000,
                                              self.wake.set)
        self.handover_epoch = None
        self.epoch = max(self.epoch, epoch)
        if self.forced:
            self.ops.console(f"HA  operator forced activation at epoch={epoch}: acknowledged writes may be lost")
            self.forced = False
        if self.ops.store is not None:
            try:
                self.ops.store.set_epoch(epoch)
            except StoreError as exc:
                await self._abort_activation(f"store refuses epoch {epoch}: {exc}")

    async def _announce_release(self, epoch: int) -> None:
        try:
            await self.peer_client.post("/ha/peer/takeover", {"epoch": epoch, "released": True}, timeout=1.0)
        except PeerError:
            pass  # best effort: without it the peer simply waits TakeoverWait

    async def _probe_old_holder(self, epoch: int) -> None:
        """Just after taking the lock from our peer: does its HA port refuse connections?
        A server's HA port is open for the whole life of its process, and the previous
        holder claimed its epoch before we acquired; a refusal *now* means that process
        is gone. Only signed exchanges with the peer before (heard_at) vouch that the
        address is really the peer's."""
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(self.cfg.BackupHAIPAddress, self.cfg.BackupHAPort), 0.2)
            w.close()
            return  # something listens: the previous holder may still be alive; wait
        except ConnectionRefusedError:
            pass
        except (OSError, TimeoutError):
            return  # unreachable or slow is not proof of anything
        if self.state == State.ACTIVATING and self.claimed and self.lock.record.epoch == epoch:
            self.skip_takeover_wait = True
            self.ops.console(f"HA  no takeover wait: the previous holder {self.peer.name} is down "
                             "(its HA port refuses connections)")
            self.wake.set()

    def _old_holder_gone(self, rec: LockRecord) -> tuple[bool, str]:
        """The takeover wait covers a holder that lost the lock without knowing yet.
        It is skipped only when the holder of `rec` provably no longer serves: it
        handed that very epoch over after it stopped serving, or nobody ever held the
        lock. (A refusal of the peer's HA port proves it too, but only one observed
        after we took the lock: `_probe_old_holder`.)"""
        if self.handover_epoch is not None and self.handover_epoch == rec.epoch:
            return True, f"the peer handed over epoch {rec.epoch}"
        if rec.epoch == 0 and not rec.holder:
            return True, "nobody has held the lock before"
        return False, ""

    async def _stand_down(self, drain: float) -> None:
        """Step down now, outside the cycle's decision (switchover, failed activation,
        shutdown): the same sequence the cycle uses (`step_down_actions`)."""
        for action in step_down_actions(self.mode, client_open=True):
            await asyncio.shield(self._act(action, drain))

    async def _abort_activation(self, why: str) -> None:
        self.ops.console(f"HA  activation aborted: {why}")
        await self._stand_down(0.0)
        self._hold_off(3.0, f"backing off after a failed activation: {why}")

    def _release(self) -> None:
        self.lock.release()
        self.claimed, self.acquired_at, self.lock_lost = False, None, False
        self.stepping_down = False  # the lock is gone: nothing can be vouched for anyway
        self.skip_takeover_wait = False
        self.next_attempt = time.monotonic() + self.cfg.LockRetryInterval / 1000
        if time.monotonic() >= self.hold_off_until:
            self._hold_off(HOLD_OFF_AFTER_STEP_DOWN, "just stepped down: giving the peer the first try")

    # ---- loops ----
    async def _every(self, interval: float, fn: Any, name: str, wake: asyncio.Event | None = None) -> None:
        """Fixed pace: next += interval; warn on overrun, never drift. With `wake`,
        a tick also runs as soon as the event is set (the pace restarts from then)."""
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            try:
                await fn()
            except Exception:  # a loop must survive a bug in one tick
                log.exception("%s tick failed", name)
            nxt += interval
            delay = nxt - loop.time()
            if delay < -interval:
                log.warning("%s loop overran by %.0f ms", name, -delay * 1000)
                nxt = loop.time()
                delay = 0
            if wake is None:
                await asyncio.sleep(max(delay, 0))
                continue
            try:
                await asyncio.wait_for(wake.wait(), max(delay, 0))
                nxt = loop.time()  # woken early: the pace restarts from now
            except TimeoutError:
                pass
            wake.clear()

    async def _passive_read_tick(self) -> None:
        if not self.lock.held:
            if self.mode == "replicated" and self.state not in HOLDING:
                # a passive learns from the record whether it is in sync (rule 5)
                try:
                    before = self.may_activate()
                    await self.lock.read()
                    self.epoch = max(self.epoch, self.lock.record.epoch)
                    if self.may_activate() != before:
                        self.wake.set()
                    self._lock_problem("")
                except (TimeoutError, OSError, LockError) as exc:
                    self._lock_problem(f"reading the LockFile failed: {exc or type(exc).__name__}")
            return

    def _verifier(self, loop: asyncio.AbstractEventLoop) -> None:
        """Lock verification on a thread of its own, three attempts per period: it
        keeps proving the lock while the event loop is busy (a stalled loop cannot
        serve anyway), and one slow fsync does not cost the lock. Freshness is
        still "a write+fsync that succeeded within the self-fence deadline"."""
        period = self.cfg.LockVerifyInterval / 3000
        nxt = time.monotonic()
        while not self._verifier_stop.is_set():
            if self.lock.held and self.claimed:
                started = time.monotonic()
                try:
                    why = self.lock.verify_blocking()
                except RuntimeError:
                    return  # the LockFile was closed: the server is stopping
                except (TimeoutError, OSError, LockError) as exc:
                    log.warning("lock verification did not finish: %s", exc or type(exc).__name__)
                else:
                    if why is None:
                        self.last_verified = max(self.last_verified, started)
                    elif self.lock.held and self.claimed:
                        loop.call_soon_threadsafe(self._lock_lost, why)
            nxt += period
            if nxt < time.monotonic():
                nxt = time.monotonic()
            self._verifier_stop.wait(nxt - time.monotonic())

    def _lock_lost(self, why: str) -> None:
        if self.lock.held and self.claimed:
            self.ops.console(f"HA  lock verification failed: {why}")
            self.lock_lost = True
            self.wake.set()

    def heartbeat_payload(self) -> dict[str, Any]:
        store = self.ops.store
        return {"server": self.name, "role": self.cfg.Role, "state": str(self.state), "epoch": self.epoch,
                "serving": self.serving, "lsn": store.last_lsn() if store is not None else None}

    async def _heartbeat_tick(self) -> None:
        try:
            d = await self.peer_client.post("/ha/peer/heartbeat", self.heartbeat_payload())
        except (PeerError, ValueError) as exc:
            self._peer_problem(str(exc))
            return
        self._peer_news(d)
        self.peer_error = ""

    def _peer_news(self, d: dict[str, Any]) -> None:
        was_alive = self.peer_alive()
        self.peer.update(d)
        self.epoch = max(self.epoch, self.peer.epoch)
        if self.peer.serving and self.hold_off_reason == TIE_BREAK:
            self.hold_off_until = 0.0  # the peer already serves: there is no tie to break
        if not was_alive or (self.peer.serving and self.state in HOLDING):
            self.wake.set()

    def _lock_problem(self, msg: str) -> None:
        """Log a LockFile problem once, not at every 50 ms attempt; "" when it works again."""
        if msg == self.lock_error:
            return
        if msg:
            log.warning("%s", msg)
        else:
            log.info("the LockFile %s answers again", self.lock.path)
        self.lock_error = msg

    def _peer_problem(self, msg: str) -> None:
        if msg != self.peer_error:
            log.warning("backchannel: %s", msg)
            self.peer_error = msg

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
        self.tasks = [
            asyncio.create_task(self._every(self.tick, self.run_cycle, "cycle", self.wake)),
            asyncio.create_task(self._every(ha.LockVerifyInterval / 1000, self._passive_read_tick, "record")),
            asyncio.create_task(self._every(ha.HeartbeatInterval / 1000, self._heartbeat_tick, "heartbeat")),
        ]
        if self.probe.enabled:
            self.tasks.append(asyncio.create_task(self._every(ha.ProbeInterval / 1000, self._probe_tick, "probe")))
        self._verifier_thread = threading.Thread(target=self._verifier, args=(asyncio.get_running_loop(),),
                                                 name="lock-verifier", daemon=True)
        self._verifier_thread.start()

    async def stop(self) -> None:
        self._verifier_stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        async with self.cycle_lock:
            if self.state in HOLDING:
                await self._stand_down(5.0)  # stop serving first (graceful: drain), then release
            else:
                await self.ops.deactivate(drain_timeout=5.0)
            self.lock.close()
            if self.mode == "shared":
                self.ops.close_store()
            old, self.state, self.since = self.state, State.STOPPED, time.time()
            self.ops.console(f"HA  {old} -> {self.state}  epoch={self.epoch}  reason=server stopping")
        if self.announcing is not None:  # let the peer know it need not wait (bounded: 1 s)
            await asyncio.gather(self.announcing, return_exceptions=True)
        await self.replication.close()
        await self.peer_client.close()

    def store_reopened(self, store: Any) -> None:
        self.replication.attach(store)

    def status(self) -> dict[str, Any]:
        rep = self.replication.status()
        return {
            "type": self.mode, "role": self.cfg.Role, "state": str(self.state), "epoch": self.epoch,
            "peer": {"state": self.peer_state(), "address": f"{self.cfg.BackupHAIPAddress}:{self.cfg.BackupHAPort}",
                     "client_address": self.cfg.BackupServerIp, "epoch": self.peer.epoch,
                     "replicated_lsn": rep.get("replicated_lsn"), "lag": rep.get("lag")},
            "lock": {"path": self.lock.path, "held": self.lock.held and self.claimed,
                     "verified_ms_ago": (round((time.monotonic() - self.last_verified) * 1000)
                                         if self.claimed else None),
                     "holder": self.lock.record.holder, "in_sync": self.lock.record.in_sync},
            "isolated": self.probe.isolated, "since": self.since, "reason": self.last_reason,
            "waiting_reason": self.waiting_reason() if self.state == State.WAITING else None,
            "replication": rep,
        }

    # ---- HA-port routes ----
    def routes(self) -> dict[tuple[str, str], Route]:
        small = self.cfg.HAMaxControlBytes
        r: dict[tuple[str, str], Route] = {
            ("POST", "/ha/peer/heartbeat"): Route(self._h_heartbeat, small, self.peer_gate),
            ("POST", "/ha/peer/takeover"): Route(self._h_takeover, small, self.peer_gate),
            ("POST", "/ha/switchover"): Route(self._h_switchover, small, self.operator_gate),
            ("POST", "/ha/force-activate"): Route(self._h_force, small, self.operator_gate),
        }
        r.update(self.replication.routes())
        return r

    def signed(self, req: Request, data: dict[str, Any], status: int = 200) -> Response:
        """Our answer to a frame the gate admitted, signed for its sender."""
        body = json.dumps(data, separators=(",", ":")).encode()
        frame: Frame = req.auth
        return Response(status, body, headers={
            AUTH_HEADER: sign_response(self.cfg.PairSecret, frame, req.path, status, body, self.epoch)})

    def frame_body(self, req: Request) -> dict[str, Any] | Response:
        """The JSON object of an admitted frame, or a 400 answer."""
        try:
            d = json.loads(req.body)
            if not isinstance(d, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("backchannel: garbage frame on %s from %s: %s", req.path, req.peer, exc)
            return Response.json({"error": f"bad frame: {exc}"}, 400)
        return d

    def _stale_command(self, req: Request) -> Response | None:
        """An operator command signed for another epoch than ours: refused (a replay or
        a command about a pair that has moved on)."""
        frame: Frame = req.auth
        if frame.epoch == self.epoch:
            return None
        log.warning("backchannel: refused %s from %s: signed for epoch %d, this server is at epoch %d",
                    req.path, req.peer, frame.epoch, self.epoch)
        return self.signed(req, {"ok": False, "error": f"command signed for epoch {frame.epoch}, {self.name} is at "
                                                      f"epoch {self.epoch} (stale or replayed): run it again"}, 409)

    async def _h_heartbeat(self, req: Request) -> Response:
        d = self.frame_body(req)
        if isinstance(d, Response):
            return d
        self._peer_news(d)
        return self.signed(req, self.heartbeat_payload())

    async def _h_takeover(self, req: Request) -> Response:
        d = self.frame_body(req)
        if isinstance(d, Response):
            return d
        self.handover_epoch = int(d.get("epoch", -1))
        self.hold_off_until, self.next_attempt = 0.0, 0.0
        self.ops.console(f"HA  peer released epoch={self.handover_epoch} after it stopped serving")
        self.wake.set()
        return self.signed(req, {"ok": True, "server": self.name})

    async def _h_switchover(self, req: Request) -> Response:
        d = self.frame_body(req)
        if isinstance(d, Response):
            return d
        if (stale := self._stale_command(req)) is not None:
            return stale
        async with self.cycle_lock:
            if self.state not in SERVING:
                return self.signed(req, {"ok": False, "error": f"{self.name} is {self.state}, not active"}, 409)
            ready = State.PASSIVE.value
            if not self.peer_alive() or self.peer.state != ready:
                return self.signed(req, {"ok": False, "error": f"peer is {self.peer_state()}, not {ready}: "
                                                                       "refusing a switchover"}, 409)
            epoch = self.lock.record.epoch
            self._hold_off(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
            await self._stand_down(2.0)
            self._hold_off(HOLD_OFF_AFTER_SWITCHOVER, "switchover: the peer takes over")
            self._set_state(self.standby_state(), "switchover requested by operator")
        try:
            await self.peer_client.post("/ha/peer/takeover", {"epoch": epoch}, timeout=2.0)
        except PeerError as exc:
            self.ops.console(f"HA  switchover: peer did not acknowledge the handover ({exc}); it will take "
                             "the lock on its next attempt")
        return self.signed(req, {"ok": True, "from": self.name, "epoch": epoch})

    async def _h_force(self, req: Request) -> Response:
        d = self.frame_body(req)
        if isinstance(d, Response):
            return d
        if (stale := self._stale_command(req)) is not None:
            return stale
        self.forced = True
        self.hold_off_until = 0.0
        self.ops.console("HA  force-activate requested by operator: this server may activate although its "
                         "store may miss acknowledged writes (rule 5 overridden)")
        self.wake.set()
        return self.signed(req, {"ok": True, "server": self.name, "state": str(self.state)})
