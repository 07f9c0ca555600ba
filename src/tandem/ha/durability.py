"""May this write be acknowledged? One pure function, no I/O (rule 4).

An acknowledged write must survive any sequence of crashes and failovers. It
does when one of these holds:

- the passive has stored it (its ack covers the write's lsn), or
- this server still holds the lock, has verified it within the self-fence
  deadline, at the epoch the write was made in, **and** the LockFile record
  already names the passive out of sync: the passive then never activates on
  its own (rule 5), so the write survives as long as our store does.

In every other case the write is not acknowledged (503 `not_durable`), never
2xx: a server stepping down, a lock not verified, a record still naming the
peer in sync with no ack. Where the peer may still ack, the answer is to wait
(bounded by the peer timeout); where only the record stands in the way and we
may still write it, the answer is to drop the peer from the record first.

Async replication (`ReplicationMode = async`) acknowledges without waiting
for the peer, by design: a failover may lose the last writes. Even then a
write is acknowledged only under a verified lock at its epoch, and a peer
known dead is first recorded out of sync (so it stays `Waiting`).

The replicator gathers `AckObservations`, calls `may_acknowledge`, and does
what the verdict says, re-asking after every wait or record change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    ACK = "ack"  # answer the client now
    WAIT = "wait"  # wait for the peer's ack (bounded), then ask again
    DROP_PEER = "drop_peer"  # record the peer out of sync in the LockFile, then ask again
    REFUSE = "refuse"  # 503 not_durable: the write may exist, but we cannot vouch for it


@dataclass(frozen=True)
class AckObservations:
    sync: bool  # ReplicationMode = sync
    peer_acked: bool  # the passive's durable lsn covers the write
    streaming: bool  # a replication session is caught up: every new write is shipped to the peer
    peer_alive: bool
    timed_out: bool  # we already waited the peer timeout for this write
    holds_verified: bool  # serving, not stepping down, lock held and verified within the deadline
    lock_epoch: int  # the epoch of the LockFile record we hold
    write_epoch: int  # the epoch the write was committed in
    peer_in_record: bool  # the LockFile record names the peer in sync


def may_acknowledge(o: AckObservations) -> tuple[Verdict, str]:
    """The verdict for one write and why (the reason goes into the 503 body and the log)."""
    if o.peer_acked:
        return Verdict.ACK, "the passive stored it"
    if o.sync and o.streaming and o.peer_alive and not o.timed_out:
        return Verdict.WAIT, "waiting for the passive's ack"
    if not o.holds_verified:
        return Verdict.REFUSE, "no longer active: this server does not hold a verified lock"
    if o.lock_epoch != o.write_epoch:
        return Verdict.REFUSE, f"written at epoch {o.write_epoch}, the lock is now at epoch {o.lock_epoch}"
    if not o.peer_in_record:
        return Verdict.ACK, "the LockFile records the passive out of sync"
    if not o.sync and o.peer_alive:
        return Verdict.ACK, "async replication: acknowledged without the passive"
    if o.timed_out:
        return Verdict.DROP_PEER, "the passive did not acknowledge within the peer timeout"
    if not o.peer_alive:
        return Verdict.DROP_PEER, "the passive is dead"
    return Verdict.DROP_PEER, "no replication session is streaming to the passive"
