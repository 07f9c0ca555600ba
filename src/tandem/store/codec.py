"""What both store backends share so that they agree byte for byte: canonical JSON,
the rows of a change, batch checks, the digest and the snapshot codec. A snapshot
taken from SQLite restores into PostgreSQL with the same digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.errors import ChangeRejected, StaleEpoch, StoreCorrupt, StoreError
from tandem.store.change import Change, Op, name_problem

log = logging.getLogger("tandem.store")

SNAPSHOT_VERSION = 1
_SNAPSHOT_MAGIC = b"TANDEM-SNAPSHOT"


# --- shared helpers: both backends use these so they agree byte for byte ---

Row = tuple[str, str, str | None]  # (ns, key, canonical JSON text or None for delete)


def dump_value(value: Any) -> str:
    """Canonical JSON text of a document (sorted keys, no spaces, ASCII only)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


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
