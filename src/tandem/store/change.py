"""One committed transaction of a store (`Change`), its writes (`Op`), and the names they may use.

Every local commit becomes one `Change` stamped `(epoch, lsn)`; lsns grow by
exactly 1 from 1. `Change.from_json` is how a change arrives from the peer: it
raises ChangeRejected naming the field that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tandem.errors import ChangeRejected, StoreError


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
