"""The Store contract: namespaced JSON documents plus a change log.

A peer replays a store's changes with `apply`, or, when the log no longer
reaches back far enough (`LogTruncated`), restores a `snapshot` and replays
the tail. `digest` covers the data and `last_lsn` but not the log, so both
routes end in equal digests. Backends: `sqlite.py`, `postgres.py`; both agree
byte for byte through `codec.py`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from tandem.store.change import Change, Op

log = logging.getLogger("tandem.store")


class Store(ABC):
    """Key/value documents in namespaces, with a change log.

    Atomicity: `commit`, `apply`, `restore`, `set_epoch` and `truncate_log` are
    each one database transaction: all of it happens or none of it does, and
    it is durable when the call returns. Reads see committed state only.

    Failures: every method raises `StoreError` (or a subclass) when the
    backend fails, translated with `raise ... from exc`, and then nothing
    happened. `StoreCorrupt`: the store or a snapshot cannot be read
    consistently. `ChangeRejected`: a peer's change is refused. `StaleEpoch`
    (a ChangeRejected): an epoch lower than one already seen. `LogTruncated`:
    `changes_since` was asked for history that retention dropped.

    Threads: one writer thread at a time, reads from any thread. A closed
    store raises StoreError.
    """

    backend: str = "abstract"

    def __init__(self) -> None:
        self._listeners: list[Callable[[Change], None]] = []

    @property
    @abstractmethod
    def epoch(self) -> int:
        """The epoch new local commits are stamped with."""

    @abstractmethod
    def set_epoch(self, epoch: int) -> None:
        """Persist a new epoch; lower than the current one raises StaleEpoch."""

    @abstractmethod
    def commit(self, ops: Sequence[Op]) -> Change:
        """Write all ops plus one log entry atomically; lsn = last_lsn + 1.

        Raises StoreError for an op that is not a valid name or JSON document,
        and StaleEpoch when `epoch` is below `last_change_epoch()` (a node
        with a stale epoch must not write on top of newer history).
        Listeners run after the transaction is durable; their errors are
        logged, never raised.
        """

    @abstractmethod
    def get(self, ns: str, key: str) -> Any | None: ...

    @abstractmethod
    def scan(self, ns: str, prefix: str = "") -> list[tuple[str, Any]]:
        """(key, value) pairs of `ns` whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    def last_lsn(self) -> int:
        """The lsn of the newest change, 0 for an empty store (kept when the log is truncated)."""

    @abstractmethod
    def last_change_epoch(self) -> int:
        """The epoch of the newest change, 0 if none."""

    @abstractmethod
    def oldest_lsn(self) -> int:
        """Oldest lsn still in the log; last_lsn + 1 when the log is empty."""

    @abstractmethod
    def changes_since(self, lsn: int, limit: int = 1000) -> list[Change]:
        """Up to `limit` changes with lsn > `lsn`, ascending.

        Raises LogTruncated when lsn + 1 < oldest_lsn(): the caller needs a snapshot.
        """

    @abstractmethod
    def apply(self, changes: Sequence[Change]) -> None:
        """Apply a peer's changes keeping their epoch and lsn, atomically for the batch.

        Raises ChangeRejected for a gap (first lsn != last_lsn + 1), non-consecutive
        lsns or an invalid op, and StaleEpoch for an epoch lower than the newest
        change's. Nothing is applied on refusal. Listeners are not called.
        """

    @abstractmethod
    def truncate_log(self, keep_last: int) -> int:
        """Drop the oldest log entries, keeping at least `keep_last`; returns how many were dropped."""

    @abstractmethod
    def log_size(self) -> int: ...

    @abstractmethod
    def snapshot(self) -> bytes:
        """All data plus last_lsn, last_change_epoch and epoch (not the log); versioned, checksummed."""

    @abstractmethod
    def restore(self, snap: bytes) -> None:
        """Replace all data with the snapshot atomically; the log ends up empty.

        Afterwards last_lsn() is the snapshot's and oldest_lsn() == last_lsn() + 1.
        The epoch becomes max(current, snapshot's): epochs never go back.
        Local metadata (meta_get/meta_set) is kept. A corrupt snapshot raises
        StoreCorrupt and changes nothing.
        """

    @abstractmethod
    def digest(self) -> str:
        """sha256 hex over all (ns, key, value) in canonical JSON, sorted, plus last_lsn; not the log."""

    @abstractmethod
    def meta_get(self, key: str) -> str | None:
        """Local metadata: not replicated, not logged, not in the digest or snapshot."""

    @abstractmethod
    def meta_set(self, key: str, value: str) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release the connection; idempotent."""

    @abstractmethod
    def _location(self) -> str: ...

    @abstractmethod
    def _cached_state(self) -> tuple[int, int]:
        """(epoch, last_lsn) as last seen, without I/O, for __repr__."""

    def add_listener(self, fn: Callable[[Change], None]) -> None:
        """Call `fn(change)` after each local commit (not after apply)."""
        self._listeners.append(fn)

    def _notify(self, change: Change) -> None:
        for fn in list(self._listeners):
            try:
                fn(change)
            except Exception:  # the commit is durable already; a listener must not undo it
                log.exception("store listener %r failed on lsn %d", fn, change.lsn)

    def __repr__(self) -> str:
        epoch, lsn = self._cached_state()
        return f"<{type(self).__name__} backend={self.backend} path={self._location()!r} epoch={epoch} last_lsn={lsn}>"
