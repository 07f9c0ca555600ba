"""HA states and the transitions between them, as data. No I/O here.

Theory of operation
-------------------
Two servers share a LockFile on a third machine. Whoever holds its POSIX lock
*may* serve; it actually serves only while it has re-verified the lock within
the last verification period (rule 1). Each acquisition increments the epoch
recorded in the LockFile (rule 2).

Shared mode (one store): `Passive` servers try the lock every retry interval;
the winner goes `Activating` (lock held, store opened, takeover wait running,
client port still closed), then `Active`. Losing the lock, failing its
verification or becoming isolated sends an active back to `Passive`, closing
the client port *before* releasing the lock.

Replicated mode (one store each): the lock holder is `Active` while its peer is
alive, `Standalone` while the peer is `Dead`, `ActiveSync` while it streams
catch-up data. A non-holder is `Passive` when its store is in sync, `Waiting`
when it is not (rule 5: it never activates on its own), `PassiveSync` while
receiving catch-up data. `Activating` is the same short step as in shared mode.

`Starting` is the state before the first decision; `Stopped` the state after
shutdown. `Dead` is how a server reports its *peer*, never itself.

The decide function (`decide.py`) may only move along the edges listed here;
`check_transition` raises `IllegalTransition` for any other.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STARTING = "Starting"
    PASSIVE = "Passive"
    WAITING = "Waiting"
    PASSIVE_SYNC = "PassiveSync"
    ACTIVATING = "Activating"
    ACTIVE = "Active"
    STANDALONE = "Standalone"
    ACTIVE_SYNC = "ActiveSync"
    STOPPED = "Stopped"


PEER_DEAD = "Dead"

#: states in which a server serves clients (given a fresh lock verification)
SERVING = frozenset({State.ACTIVE, State.STANDALONE, State.ACTIVE_SYNC})
#: states in which a server holds (or is taking) the lock
HOLDING = SERVING | {State.ACTIVATING}
#: states that do not hold the lock
NOT_HOLDING = frozenset({State.STARTING, State.PASSIVE, State.WAITING, State.PASSIVE_SYNC})

_S = State
SHARED_TRANSITIONS: frozenset[tuple[State, State]] = frozenset({
    (_S.STARTING, _S.PASSIVE), (_S.STARTING, _S.ACTIVATING),
    (_S.PASSIVE, _S.ACTIVATING),
    (_S.ACTIVATING, _S.ACTIVE), (_S.ACTIVATING, _S.PASSIVE),
    (_S.ACTIVE, _S.PASSIVE),
})

REPLICATED_TRANSITIONS: frozenset[tuple[State, State]] = frozenset({
    (_S.STARTING, _S.PASSIVE), (_S.STARTING, _S.WAITING), (_S.STARTING, _S.ACTIVATING),
    (_S.STARTING, _S.PASSIVE_SYNC),
    (_S.PASSIVE, _S.ACTIVATING), (_S.PASSIVE, _S.WAITING), (_S.PASSIVE, _S.PASSIVE_SYNC),
    (_S.WAITING, _S.PASSIVE), (_S.WAITING, _S.PASSIVE_SYNC), (_S.WAITING, _S.ACTIVATING),
    (_S.PASSIVE_SYNC, _S.PASSIVE), (_S.PASSIVE_SYNC, _S.WAITING),
    (_S.ACTIVATING, _S.ACTIVE), (_S.ACTIVATING, _S.STANDALONE), (_S.ACTIVATING, _S.PASSIVE),
    (_S.ACTIVATING, _S.WAITING), (_S.ACTIVATING, _S.ACTIVE_SYNC),
    (_S.ACTIVE, _S.STANDALONE), (_S.ACTIVE, _S.ACTIVE_SYNC), (_S.ACTIVE, _S.PASSIVE),
    (_S.ACTIVE, _S.WAITING),
    (_S.STANDALONE, _S.ACTIVE), (_S.STANDALONE, _S.ACTIVE_SYNC), (_S.STANDALONE, _S.PASSIVE),
    (_S.STANDALONE, _S.WAITING),
    (_S.ACTIVE_SYNC, _S.ACTIVE), (_S.ACTIVE_SYNC, _S.STANDALONE), (_S.ACTIVE_SYNC, _S.PASSIVE),
    (_S.ACTIVE_SYNC, _S.WAITING),
})


class IllegalTransition(Exception):
    def __init__(self, mode: str, old: State, new: State) -> None:
        super().__init__(f"illegal {mode} transition {old} -> {new}")
        self.mode, self.old, self.new = mode, old, new


def transitions(mode: str) -> frozenset[tuple[State, State]]:
    return SHARED_TRANSITIONS if mode == "shared" else REPLICATED_TRANSITIONS


def check_transition(mode: str, old: State, new: State) -> None:
    """Raise IllegalTransition unless old -> new is an edge of `mode` (staying put is always legal)."""
    if old == new:
        return
    if new == State.STOPPED:
        return  # shutdown may happen from anywhere; the controller closes the port first
    if (old, new) not in transitions(mode):
        raise IllegalTransition(mode, old, new)
