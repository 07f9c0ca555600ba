"""Property: replaying a store's log, or restoring a snapshot and replaying the tail, gives equal digests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.store import Op, Store, open_store

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
# None at the top level is a delete, so a put needs a non-null document
ops = st.builds(
    Op,
    ns=st.sampled_from(["a", "b", "é"]),
    key=st.text(alphabet="xyz", max_size=2),
    value=st.one_of(st.none(), json_values.filter(lambda v: v is not None)),
)
# each commit: its ops and whether to bump the epoch before it
commits = st.lists(st.tuples(st.lists(ops, max_size=4), st.booleans()), min_size=1, max_size=12)


def build(store: Store, plan: list[tuple[list[Op], bool]], snapshot_at: int) -> tuple[bytes, int]:
    snap, snap_lsn = store.snapshot(), 0
    for i, (batch, bump) in enumerate(plan):
        if i == snapshot_at:
            snap, snap_lsn = store.snapshot(), store.last_lsn()
        if bump:
            store.set_epoch(store.epoch + 1)
        store.commit(batch)
    return snap, snap_lsn


def contents(store: Store) -> dict[str, list[tuple[str, Any]]]:
    return {ns: store.scan(ns) for ns in ["a", "b", "é"]}


@settings(max_examples=50, deadline=None)
@given(plan=commits, data=st.data())
def test_replay_and_snapshot_plus_tail_give_equal_digests(
    plan: list[tuple[list[Op], bool]], data: st.DataObject
) -> None:
    snapshot_at = data.draw(st.integers(min_value=0, max_value=len(plan)), label="snapshot_at")
    batch_size = data.draw(st.integers(min_value=1, max_value=5), label="apply batch size")
    with tempfile.TemporaryDirectory() as tmp:
        a, b, c = (open_store(str(Path(tmp) / name)) for name in "abc")
        try:
            snap, snap_lsn = build(a, plan, snapshot_at)
            log = a.changes_since(0)
            assert [ch.lsn for ch in log] == list(range(1, len(plan) + 1))

            for i in range(0, len(log), batch_size):  # (a) full replay
                b.apply(log[i : i + batch_size])
            assert b.digest() == a.digest()
            assert contents(b) == contents(a)
            assert b.last_change_epoch() == a.last_change_epoch()

            c.restore(snap)  # (b) snapshot at a midpoint plus the tail
            assert c.last_lsn() == snap_lsn and c.oldest_lsn() == snap_lsn + 1
            c.apply(a.changes_since(snap_lsn))
            assert c.digest() == a.digest()
            assert contents(c) == contents(a)
        finally:
            for s in (a, b, c):
                s.close()
