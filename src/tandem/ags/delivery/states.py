"""The states of one queued message and the transitions between them, as data.

    queued ----dispatch----> delivering ----delivered----> delivered
      ^  \\                     |   |
      |   \\--expired--> dead <-/   \\--failed (attempts left, ttl left)--> queued
      |                   |
      \\-----redrive------/

`delivering` is never stored: a message in flight is `queued` in the store,
so a server that dies mid-delivery leaves it to be delivered again by the
next active (at least once). Every change goes through `decide.decide()`.
"""

from __future__ import annotations

QUEUED, DELIVERING, DELIVERED, DEAD = "queued", "delivering", "delivered", "dead"
STATES = (QUEUED, DELIVERING, DELIVERED, DEAD)

# (from, event) -> the states that event may lead to
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    (QUEUED, "dispatch"): frozenset({DELIVERING}),
    (QUEUED, "expire"): frozenset({DEAD}),
    (DELIVERING, "outcome"): frozenset({DELIVERED, QUEUED, DEAD}),
    (DELIVERING, "lost"): frozenset({QUEUED}),  # the server stopped with it in flight
    (DEAD, "redrive"): frozenset({QUEUED}),
}

EVENTS = tuple(sorted({e for _, e in TRANSITIONS}))
HOLDS_BODY = frozenset({QUEUED, DELIVERING, DEAD})  # a delivered message's body is deleted
FINAL = frozenset({DELIVERED, DEAD})  # kept until retention, then deleted


def allowed(state: str, event: str) -> frozenset[str]:
    """The states `event` may lead to from `state` (empty: the event does not apply)."""
    return TRANSITIONS.get((state, event), frozenset())
