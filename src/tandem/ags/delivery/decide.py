"""The delivery decision for one message, as a pure function (the house style of `ha/decide.py`).

`decide(msg, event, rules, now, draw)` -> `Decision(state, attempts, next_at, since, reason, store)`:
what the message becomes, when it may be tried next, and whether the change
must be written to the store (`store`: a stored state changed; a dispatch,
which only moves it in memory, is not written). `draw` is a number in
[0, 1) from the caller (the jitter), so the function stays pure and tests
can pin it.

Rules:
- dispatch: queued -> delivering, only when `next_at <= now`.
- expire: queued -> dead once `now >= since + ttl` ("ttl").
- outcome: an upstream status in `delivered` -> delivered; anything else (another
  status, a connection error, a timeout) is one more attempt: dead when
  `max_attempts` are used up or the ttl is over, else queued again after a
  backoff drawn between `backoff_initial` and min(`backoff_max`,
  `backoff_initial * 2**(attempts-1)`) (exponential, full jitter).
- lost: delivering -> queued, attempts unchanged (the server stopped with it in flight).
- redrive: dead -> queued with attempts 0 and the ttl clock restarted.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.ags.delivery.states import DEAD, DELIVERED, DELIVERING, QUEUED, allowed


@dataclass(frozen=True, slots=True)
class Rules:
    max_attempts: int = 10
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    ttl: float = 86_400.0
    delivered: frozenset[int] | None = None  # None: any 2xx


@dataclass(frozen=True, slots=True)
class Message:
    state: str
    attempts: int
    next_at: float  # wall-clock seconds
    since: float  # when its ttl started: accepted, or redriven


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # dispatch, expire, outcome, lost, redrive
    status: int | None = None  # outcome: the upstream's status, None for a connection error or timeout
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    state: str
    attempts: int
    next_at: float
    since: float
    reason: str
    store: bool


class IllegalEvent(ValueError):
    pass


def backoff(rules: Rules, attempts: int, draw: float) -> float:
    """Seconds before attempt `attempts + 1` (attempts >= 1), full jitter in [initial, cap]."""
    cap = min(rules.backoff_max, rules.backoff_initial * 2.0 ** min(attempts - 1, 60))
    return rules.backoff_initial + (cap - rules.backoff_initial) * draw


def is_delivered(rules: Rules, status: int | None) -> bool:
    if status is None:
        return False
    return 200 <= status < 300 if rules.delivered is None else status in rules.delivered


def decide(msg: Message, event: Event, rules: Rules, now: float, draw: float = 0.5) -> Decision:
    """See the module docstring. Raises IllegalEvent when `event` does not apply to `msg.state`."""
    targets = allowed(msg.state, event.kind)
    if not targets:
        raise IllegalEvent(f"{event.kind!r} does not apply to a {msg.state} message")
    kind = event.kind
    if kind == "dispatch":
        if msg.next_at > now:
            raise IllegalEvent(f"not due for {msg.next_at - now:.3f} s")
        return Decision(DELIVERING, msg.attempts, msg.next_at, msg.since, "dispatched", False)
    if kind == "expire":
        if now < msg.since + rules.ttl:
            raise IllegalEvent("its ttl is not over")
        return Decision(DEAD, msg.attempts, msg.next_at, msg.since, f"ttl of {rules.ttl:g} s is over", True)
    if kind == "lost":
        return Decision(QUEUED, msg.attempts, now, msg.since, "in flight when delivery stopped", True)
    if kind == "redrive":
        return Decision(QUEUED, 0, now, now, "redriven", True)
    # outcome
    attempts = msg.attempts + 1
    what = f"upstream answered {event.status}" if event.status is not None else (event.error or "no answer")
    if is_delivered(rules, event.status):
        return Decision(DELIVERED, attempts, msg.next_at, msg.since, what, True)
    if attempts >= rules.max_attempts:
        return Decision(DEAD, attempts, msg.next_at, msg.since, f"{what}; {attempts} attempts used up", True)
    if now >= msg.since + rules.ttl:
        return Decision(DEAD, attempts, msg.next_at, msg.since, f"{what}; ttl of {rules.ttl:g} s is over", True)
    return Decision(QUEUED, attempts, now + backoff(rules, attempts, draw), msg.since, what, True)


__all__ = ["DEAD", "DELIVERED", "DELIVERING", "QUEUED", "Decision", "Event", "IllegalEvent", "Message", "Rules",
           "backoff", "decide", "is_delivered"]
