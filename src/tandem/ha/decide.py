"""Decide: (state, observations) -> (next state, actions, reason). Pure, no I/O.

The controller gathers `Observations` each cycle, calls `decide`, performs the
returned actions in order, and logs the reason when the state changes. Every
safety rule of the pair is a branch here, tested table-driven and by a
hypothesis state machine:

- a server that believes it holds the lock but cannot prove it (lost, stale
  verification) or is isolated closes its client port *then* releases (rule 1, 3);
- a lock just acquired is only used after the takeover wait (longer than the
  self-fence deadline of whoever held it before);
- isolation never makes a server try the lock (rule 3);
- in replicated mode a server whose store may miss acknowledged writes does
  not try the lock (rule 5): `Waiting`, unless an operator forced activation.

Operator commands and the controller's own events are observations too, so
every state change goes through here: a switchover (`switchover`), a forced
activation (`forced`), an activation step that failed (`activation_failed`),
and the server stopping (`stopping`). Each step-down uses the one sequence
`step_down_actions`; `Decision.drain` says how long in-flight requests may
finish when the client port closes (0 when the lock can no longer be proven).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tandem.ha.states import HOLDING, SERVING, State, check_transition

SWITCHOVER_DRAIN = 2.0  # seconds in-flight requests may finish when an operator switches over
SHUTDOWN_DRAIN = 5.0  # ... when the server stops


class Action(StrEnum):
    TRY_ACQUIRE = "try_acquire"
    CLAIM = "claim"  # under the lock: epoch + 1, us as holder
    OPEN_STORE = "open_store"
    OPEN_CLIENT = "open_client"
    CLOSE_CLIENT = "close_client"
    FAIL_PENDING = "fail_pending"  # every write still waiting for an ack is refused unless the peer has it
    RELEASE_LOCK = "release_lock"
    CLOSE_STORE = "close_store"


@dataclass(frozen=True)
class Observations:
    mode: str  # "shared" | "replicated"
    state: State
    holds_lock: bool  # we hold the POSIX lock (acquired and not released)
    lock_fresh: bool  # last successful verification is within the self-fence deadline
    lock_lost: bool  # a verification proved the lock is no longer ours
    takeover_elapsed: bool  # the takeover wait since our acquisition is over
    client_open: bool
    peer_alive: bool
    isolated: bool
    may_activate: bool  # replicated: our store has every acknowledged write; shared: always
    hold_off: str | None = None  # why not to try the lock now (tie-break, after switchover)
    retry_due: bool = True  # a lock attempt is due
    passive_syncing: bool = False  # replicated passive: receiving catch-up data
    peer_syncing: bool = False  # replicated active: sending catch-up data
    peer_serving_higher_epoch: bool = False  # the peer says it serves with a higher epoch than ours
    store_open: bool = True
    forced: bool = False  # an operator forced activation: rule 5 overridden (until the next claim)
    switchover: bool = False  # an operator asked this active to hand over to its peer
    activation_failed: str | None = None  # why an activation step (claim, store, port) just failed
    stopping: bool = False  # the server process is stopping


@dataclass(frozen=True)
class Decision:
    state: State
    actions: tuple[Action, ...]
    reason: str
    drain: float = 0.0  # seconds in-flight requests may finish if the actions close the client port


def _may(o: Observations) -> bool:
    """A passive mid-catch-up does not have every acknowledged write yet."""
    return o.mode == "shared" or ((o.may_activate or o.forced) and not o.passive_syncing)


def _standby(o: Observations, leaving_hold: bool = False) -> State:
    """Where a non-holder rests (a holder stepping down goes straight to Passive/Waiting)."""
    if o.mode == "shared":
        return State.PASSIVE
    if o.passive_syncing and not leaving_hold:
        return State.PASSIVE_SYNC
    return State.PASSIVE if o.may_activate or o.forced else State.WAITING


def _serving_state(o: Observations) -> State:
    if o.mode == "shared":
        return State.ACTIVE
    if o.peer_syncing:
        return State.ACTIVE_SYNC
    return State.ACTIVE if o.peer_alive else State.STANDALONE


def step_down_actions(mode: str, client_open: bool) -> tuple[Action, ...]:
    """The one step-down sequence, for every cause (lost lock, isolation, switchover,
    failed activation, shutdown): stop accepting, fail every pending acknowledgement,
    then release (then, shared mode, close the store)."""
    actions = [Action.CLOSE_CLIENT] if client_open else []
    actions += [Action.FAIL_PENDING, Action.RELEASE_LOCK]
    if mode == "shared":
        actions.append(Action.CLOSE_STORE)
    return tuple(actions)


def standby_after_step_down(o: Observations) -> State:
    """Where a holder rests once it has stepped down (for any cause)."""
    return _standby(o, leaving_hold=True)


def _step_down(o: Observations, reason: str, drain: float = 0.0, state: State | None = None) -> Decision:
    return Decision(state or standby_after_step_down(o),
                    step_down_actions(o.mode, o.client_open or o.state in SERVING), reason, drain)


def _stop(o: Observations) -> Decision:
    """The server stops: a holder steps down (in-flight requests drain), anyone closes
    what is open; the state is `Stopped`."""
    reason = "server stopping"
    if o.state in HOLDING or o.holds_lock:
        return _step_down(o, reason, SHUTDOWN_DRAIN, State.STOPPED)
    actions: tuple[Action, ...] = (Action.CLOSE_CLIENT,) if o.client_open else ()
    if o.mode == "shared":
        actions += (Action.CLOSE_STORE,)
    return Decision(State.STOPPED, actions, reason, SHUTDOWN_DRAIN)


def _decide(o: Observations) -> Decision:
    if o.stopping:
        return _stop(o)
    if o.activation_failed is not None and (o.state in HOLDING or o.holds_lock):
        return _step_down(o, f"activation aborted: {o.activation_failed}")
    if o.state in HOLDING:
        if not o.holds_lock or o.lock_lost:
            return _step_down(o, "lock lost: verification shows the LockFile is no longer ours")
        if not o.lock_fresh:
            return _step_down(o, "lock not verified within the self-fence deadline")
        if o.isolated:
            return _step_down(o, "isolated: gateway machine unreachable, releasing the lock")
        if o.peer_serving_higher_epoch:
            return _step_down(o, "peer serves with a higher epoch")
        if o.switchover and o.state in SERVING:
            return _step_down(o, "switchover requested by operator", SWITCHOVER_DRAIN)
        if o.state == State.ACTIVATING:
            if not o.takeover_elapsed:
                return Decision(State.ACTIVATING, (), "activating: takeover wait")
            target = _serving_state(o)
            return Decision(target, (Action.OPEN_CLIENT,), "lock held and verified, takeover wait over")
        target = _serving_state(o)
        actions = () if o.client_open else (Action.OPEN_CLIENT,)
        if target != o.state:
            why = {State.STANDALONE: "peer dead", State.ACTIVE: "peer alive",
                   State.ACTIVE_SYNC: "peer catching up"}[target]
            return Decision(target, actions, why)
        return Decision(o.state, actions, "serving")

    # not holding the lock
    rest = _standby(o)
    closing = (Action.CLOSE_CLIENT,) if o.client_open else ()
    if o.holds_lock:  # an attempt just succeeded
        if o.isolated:
            return Decision(rest, (*closing, Action.RELEASE_LOCK), "isolated: releasing a lock just acquired")
        if not _may(o):
            return Decision(rest, (*closing, Action.RELEASE_LOCK),
                            "store may miss acknowledged writes: not activating")
        opening = () if o.store_open else (Action.OPEN_STORE,)
        return Decision(State.ACTIVATING, (*closing, Action.CLAIM, *opening), "lock acquired")
    if o.isolated:
        return Decision(rest, closing, "isolated: gateway machine unreachable, not trying the lock")
    if not _may(o):
        return Decision(rest, closing, "store may miss acknowledged writes: waiting for the peer")
    if o.hold_off:
        return Decision(rest, closing, o.hold_off)
    if o.retry_due:
        return Decision(rest, (*closing, Action.TRY_ACQUIRE), "trying the lock")
    return Decision(rest, closing, "standing by")


def decide(o: Observations) -> Decision:
    """The next state, the actions to reach it (in order) and why. Raises
    IllegalTransition if the result is not an edge of the mode's table."""
    d = _decide(o)
    check_transition(o.mode, o.state, d.state)
    return d
