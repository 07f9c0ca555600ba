"""The Store contract: namespaced JSON documents plus a change log.

Every local commit becomes one `Change` stamped `(epoch, lsn)`; lsns grow by
exactly 1 from 1. A peer replays those changes with `apply`, or, when the log
no longer reaches back far enough (`LogTruncated`), restores a `snapshot` and
replays the tail. `digest` covers the data and `last_lsn` but not the log, so
both routes end in equal digests.

The helpers below the ABC (canonical JSON, snapshot codec, digest, batch
checks) are shared by the backends so that they agree byte for byte: a
snapshot taken from SQLite restores into PostgreSQL with the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.errors import ChangeRejected, StaleEpoch, StoreCorrupt, StoreError

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
_SNAPSHOT_MAGIC = b"TANDEM-SNAPSHOT"


class LogTruncated(StoreError):
    """The log no longer reaches back to the requested lsn: use a snapshot."""


@dataclass(frozen=True)
class Op:
    """One write inside a change; `value=None` deletes the key."""

    ns: str
    key: str
    value: Any | None


@dataclass(frozen=True)
class Change:
    """One committed transaction, i.e. one log entry."""

    epoch: int
    lsn: int
    ops: tuple[Op, ...]
    ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "lsn": self.lsn,
            "ts": self.ts,
            "ops": [{"ns": o.ns, "key": o.key, "value": o.value} for o in self.ops],
        }

    @classmethod
    def from_json(cls, d: Any) -> Change:
        """Build a Change from wire JSON; raises ChangeRejected naming the bad field."""
        if not isinstance(d, dict):
            raise ChangeRejected(f"change: expected an object, got {type(d).__name__}")
        epoch = _int_field(d, "epoch", minimum=0)
        lsn = _int_field(d, "lsn", minimum=1)
        ts = d.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise ChangeRejected(f"change field 'ts': expected a finite number, got {ts!r}")
        raw_ops = d.get("ops")
        if not isinstance(raw_ops, list):
            raise ChangeRejected(f"change field 'ops': expected a list, got {type(raw_ops).__name__}")
        ops = []
        for i, o in enumerate(raw_ops):
            if not isinstance(o, dict) or "value" not in o:
                raise ChangeRejected(f"change field 'ops[{i}]': expected an object with ns, key, value")
            for name in ("ns", "key"):
                problem = name_problem(o.get(name), allow_empty=name == "key")
                if problem:
                    raise ChangeRejected(f"change field 'ops[{i}].{name}': {problem}")
            ops.append(Op(o["ns"], o["key"], o["value"]))
        return cls(epoch=epoch, lsn=lsn, ops=tuple(ops), ts=float(ts))


def _int_field(d: dict[str, Any], name: str, minimum: int) -> int:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ChangeRejected(f"change field {name!r}: expected an integer >= {minimum}, got {v!r}")
    return v


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


# --- shared helpers: both backends use these so they agree byte for byte ---

Row = tuple[str, str, str | None]  # (ns, key, canonical JSON text or None for delete)


def dump_value(value: Any) -> str:
    """Canonical JSON text of a document (sorted keys, no spaces, ASCII only)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def name_problem(name: Any, allow_empty: bool) -> str | None:
    """Why `name` cannot be a namespace or key, or None when it can."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name and not allow_empty:
        return "must not be empty"
    if "\x00" in name:
        return f"must not contain NUL: {name!r}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"not valid unicode: {name!r}"
    return None


def encode_ops(ops: Iterable[Op], error: type[StoreError]) -> list[Row]:
    rows: list[Row] = []
    for i, op in enumerate(ops):
        if not isinstance(op, Op):
            raise error(f"ops[{i}]: expected an Op, got {type(op).__name__}")
        for field, name in (("ns", op.ns), ("key", op.key)):
            problem = name_problem(name, allow_empty=field == "key")
            if problem:
                raise error(f"ops[{i}].{field}: {problem}")
        if op.value is None:
            rows.append((op.ns, op.key, None))
            continue
        try:
            rows.append((op.ns, op.key, dump_value(op.value)))
        except (TypeError, ValueError) as exc:
            raise error(f"ops[{i}] {op.ns}/{op.key}: value is not a JSON document: {exc}") from exc
    return rows


def rows_to_log_json(rows: Sequence[Row]) -> str:
    return "[" + ",".join(_triple(ns, key, text or "null") for ns, key, text in rows) + "]"


def log_json_to_ops(text: str) -> tuple[Op, ...]:
    return tuple(Op(ns, key, value) for ns, key, value in json.loads(text))


def _triple(ns: str, key: str, text: str) -> str:
    return json.dumps([ns, key], ensure_ascii=True, separators=(",", ":"))[:-1] + "," + text + "]"


def check_batch(changes: Sequence[Change], last_lsn: int, last_change_epoch: int) -> list[list[Row]]:
    """Validate a peer batch against the store head; returns the encoded rows per change."""
    expected_lsn, min_epoch = last_lsn + 1, last_change_epoch
    encoded = []
    for change in changes:
        if not isinstance(change, Change):
            raise ChangeRejected(f"expected a Change, got {type(change).__name__}")
        if change.lsn != expected_lsn:
            what = "gap" if change.lsn > expected_lsn else "overlap"
            raise ChangeRejected(f"{what}: got lsn {change.lsn}, expected {expected_lsn}")
        if change.epoch < min_epoch:
            raise StaleEpoch(f"lsn {change.lsn} has epoch {change.epoch} < newest change epoch {min_epoch}")
        encoded.append(encode_ops(change.ops, ChangeRejected))
        expected_lsn, min_epoch = change.lsn + 1, change.epoch
    return encoded


def prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    chars = list(prefix)
    while chars:
        c = ord(chars.pop())
        if c < 0x10FFFF:
            c += 1
            if 0xD800 <= c < 0xE000:  # surrogates cannot be stored; skip over them
                c = 0xE000
            return "".join(chars) + chr(c)
    return None


class Digest:
    """Incremental digest: feed rows sorted by (ns, key) in code-point order."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"tandem-digest-v1\n")

    def add(self, ns: str, key: str, text: str) -> None:
        self._h.update(_triple(ns, key, text).encode("ascii") + b"\n")

    def finish(self, last_lsn: int) -> str:
        self._h.update(f"last_lsn={last_lsn}".encode("ascii"))
        return self._h.hexdigest()


@dataclass(frozen=True)
class SnapshotImage:
    epoch: int
    last_lsn: int
    last_change_epoch: int
    rows: list[tuple[str, str, str]]


def encode_snapshot(img: SnapshotImage) -> bytes:
    body = json.dumps(
        {
            "version": SNAPSHOT_VERSION,
            "epoch": img.epoch,
            "last_lsn": img.last_lsn,
            "last_change_epoch": img.last_change_epoch,
            "rows": img.rows,
        },
        ensure_ascii=True,
        separators=(",", ":"),
    ).encode("ascii")
    packed = zlib.compress(body, 6)
    header = b"%s %d sha256=%s\n" % (
        _SNAPSHOT_MAGIC,
        SNAPSHOT_VERSION,
        hashlib.sha256(packed).hexdigest().encode(),
    )
    return header + packed


def decode_snapshot(snap: bytes) -> SnapshotImage:
    """Parse and verify a snapshot; any defect raises StoreCorrupt."""
    if not isinstance(snap, bytes | bytearray | memoryview):
        raise StoreCorrupt(f"snapshot: expected bytes, got {type(snap).__name__}")
    data = bytes(snap)
    header, sep, packed = data.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != _SNAPSHOT_MAGIC:
        raise StoreCorrupt("snapshot: not a Tandem snapshot (bad header)")
    if parts[1] != str(SNAPSHOT_VERSION).encode():
        raise StoreCorrupt(f"snapshot: unsupported version {parts[1]!r}")
    if parts[2] != b"sha256=" + hashlib.sha256(packed).hexdigest().encode():
        raise StoreCorrupt("snapshot: checksum mismatch")
    try:
        d = json.loads(zlib.decompress(packed))
        img = SnapshotImage(
            epoch=_nonneg(d["epoch"]),
            last_lsn=_nonneg(d["last_lsn"]),
            last_change_epoch=_nonneg(d["last_change_epoch"]),
            rows=[_snapshot_row(r) for r in d["rows"]],
        )
    except (ValueError, TypeError, KeyError, zlib.error) as exc:
        raise StoreCorrupt(f"snapshot: malformed body: {exc!r}") from exc
    return img


def _nonneg(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return int(v)


def _snapshot_row(r: Any) -> tuple[str, str, str]:
    ns, key, text = r
    if (
        name_problem(ns, allow_empty=False)
        or name_problem(key, allow_empty=True)
        or not isinstance(text, str)
    ):
        raise ValueError(f"bad row {r!r}")
    value = json.loads(text)
    if value is None:
        raise ValueError(f"row {ns}/{key} holds null")
    return ns, key, dump_value(value)  # re-canonicalise so the digest is well defined
