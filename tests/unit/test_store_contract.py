"""The Store contract, run against every backend (SQLite always, PostgreSQL when reachable)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tandem.errors import ChangeRejected, StaleEpoch, StoreCorrupt, StoreError
from tandem.store import Change, LogTruncated, Op, Store, open_store
from tandem.store.postgres import PostgresStore, split_url

PG_URL = os.environ.get("TANDEM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test server URL; off CI an unreachable server skips, on CI (CI=true) it fails."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {PG_URL} and CI=true: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc}")
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    sep = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{sep}schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_schema_url"))
    return str(tmp_path / "store")


@pytest.fixture
def store(location: str) -> Iterator[Store]:
    s = open_store(location)
    yield s
    s.close()


def fill(store: Store, n: int) -> list[Change]:
    return [store.commit([Op("ns", f"k{i}", {"i": i})]) for i in range(n)]


def test_commit_get_scan_delete(store: Store) -> None:
    store.commit([Op("projects", "a", {"name": "A"}), Op("projects", "b", [1, 2.5, None, "x"])])
    store.commit([Op("projects", "ab", True), Op("other", "a", 7)])
    assert store.get("projects", "a") == {"name": "A"}
    assert store.get("projects", "b") == [1, 2.5, None, "x"]
    assert store.get("projects", "missing") is None
    assert store.scan("projects") == [("a", {"name": "A"}), ("ab", True), ("b", [1, 2.5, None, "x"])]
    assert store.scan("projects", prefix="a") == [("a", {"name": "A"}), ("ab", True)]
    assert store.scan("other") == [("a", 7)]
    store.commit([Op("projects", "a", None)])
    assert store.get("projects", "a") is None
    assert [k for k, _ in store.scan("projects")] == ["ab", "b"]


def test_scan_orders_by_code_point_and_prefix_is_exact(store: Store) -> None:
    keys = ["b", "B", "a\uffff", "a", "a\U0010ffff", "a\U0010ffffz", "é", "ab"]
    store.commit([Op("n", k, i) for i, k in enumerate(keys)])
    assert [k for k, _ in store.scan("n")] == sorted(keys)
    assert [k for k, _ in store.scan("n", "a")] == sorted(k for k in keys if k.startswith("a"))
    assert [k for k, _ in store.scan("n", "a\U0010ffff")] == ["a\U0010ffff", "a\U0010ffffz"]


def test_lsn_is_consecutive_and_epoch_stamped(store: Store) -> None:
    assert (store.last_lsn(), store.epoch, store.last_change_epoch(), store.oldest_lsn()) == (0, 0, 0, 1)
    first = fill(store, 3)
    assert [c.lsn for c in first] == [1, 2, 3]
    store.set_epoch(4)
    c = store.commit([Op("ns", "x", 1)])
    assert (c.lsn, c.epoch) == (4, 4)
    assert (store.last_lsn(), store.last_change_epoch(), store.epoch) == (4, 4, 4)
    assert [ch.epoch for ch in store.changes_since(0)] == [0, 0, 0, 4]
    assert store.changes_since(0) == [*first, c]
    assert store.changes_since(2, limit=1) == [first[2]]
    assert "epoch=4" in repr(store) and "last_lsn=4" in repr(store)


def test_set_epoch_lower_raises_stale_epoch(store: Store) -> None:
    store.set_epoch(5)
    store.set_epoch(5)
    with pytest.raises(StaleEpoch):
        store.set_epoch(4)
    assert store.epoch == 5


def test_commit_below_newest_change_epoch_raises(store: Store) -> None:
    store.apply([Change(epoch=3, lsn=1, ops=(Op("ns", "a", 1),), ts=1.0)])
    with pytest.raises(StaleEpoch):
        store.commit([Op("ns", "b", 2)])
    assert store.get("ns", "b") is None and store.last_lsn() == 1
    store.set_epoch(3)
    assert store.commit([Op("ns", "b", 2)]).lsn == 2


def test_commit_rejects_invalid_ops_and_writes_nothing(store: Store) -> None:
    for bad in (
        [Op("ns", "k", float("nan"))],
        [Op("ns", "k", {1, 2})],
        [Op("", "k", 1)],
        [Op("n", "a\x00", 1)],
    ):
        with pytest.raises(StoreError):
            store.commit([Op("ns", "ok", 1), *bad])
    assert store.last_lsn() == 0 and store.get("ns", "ok") is None


def test_apply_keeps_peer_epoch_and_lsn_and_skips_listeners(store: Store) -> None:
    seen: list[Change] = []
    store.add_listener(seen.append)
    batch = [
        Change(2, 1, (Op("a", "x", 1),), 10.0),
        Change(3, 2, (Op("a", "x", None), Op("a", "y", 2)), 11.0),
    ]
    store.apply(batch)
    assert seen == []
    assert store.changes_since(0) == batch
    assert (store.last_lsn(), store.last_change_epoch(), store.epoch) == (2, 3, 0)
    assert store.scan("a") == [("y", 2)]
    store.set_epoch(3)
    c = store.commit([Op("a", "z", 3)])
    assert seen == [c]


def test_apply_gap_is_rejected_and_nothing_applied(store: Store) -> None:
    fill(store, 2)
    before = store.digest()
    with pytest.raises(ChangeRejected, match="gap"):
        store.apply([Change(0, 4, (Op("ns", "gap", 1),), 1.0)])
    with pytest.raises(ChangeRejected):  # consecutive start, hole in the middle
        store.apply([Change(0, 3, (Op("ns", "g1", 1),), 1.0), Change(0, 5, (Op("ns", "g2", 1),), 1.0)])
    with pytest.raises(ChangeRejected):  # a bad document in the last change rolls back the first
        store.apply([Change(0, 3, (Op("ns", "g1", 1),), 1.0), Change(0, 4, (Op("ns", "g2", {1}),), 1.0)])
    assert store.digest() == before and store.last_lsn() == 2 and store.get("ns", "g1") is None


def test_apply_lower_epoch_raises_stale_epoch(store: Store) -> None:
    store.apply([Change(5, 1, (Op("ns", "a", 1),), 1.0)])
    with pytest.raises(StaleEpoch):
        store.apply([Change(4, 2, (Op("ns", "b", 1),), 1.0)])
    with pytest.raises(StaleEpoch):  # epoch going down inside one batch
        store.apply([Change(6, 2, (Op("ns", "b", 1),), 1.0), Change(5, 3, (Op("ns", "c", 1),), 1.0)])
    assert store.last_lsn() == 1 and store.get("ns", "b") is None


def test_truncate_log_then_changes_since_raises_log_truncated(store: Store) -> None:
    changes = fill(store, 10)
    assert store.truncate_log(keep_last=4) == 6
    assert store.truncate_log(keep_last=4) == 0
    assert (store.log_size(), store.oldest_lsn(), store.last_lsn()) == (4, 7, 10)
    assert store.changes_since(6) == changes[6:]
    with pytest.raises(LogTruncated):
        store.changes_since(5)
    assert store.truncate_log(keep_last=0) == 4
    assert (store.log_size(), store.oldest_lsn(), store.changes_since(10)) == (0, 11, [])
    assert store.commit([Op("ns", "after", 1)]).lsn == 11


def test_snapshot_restore_roundtrip(store: Store, tmp_path: Path) -> None:
    fill(store, 5)
    store.set_epoch(2)
    store.commit([Op("ns", "k0", None), Op("other", "é", {"nested": [1, {"a": "b"}]})])
    snap = store.snapshot()
    other = open_store(str(tmp_path / "other"))
    fill(other, 8)  # diverged history with a longer log: restore must replace all of it
    other.commit([Op("gone", "x", 1)])
    other.meta_set("peer_in_sync", "no")
    other.restore(snap)
    assert other.digest() == store.digest()
    assert (other.last_lsn(), other.log_size(), other.oldest_lsn()) == (6, 0, 7)
    assert (other.epoch, other.last_change_epoch()) == (2, 2)
    assert other.scan("gone") == [] and other.changes_since(6) == []
    assert other.meta_get("peer_in_sync") == "no"
    other.apply(store.changes_since(6))
    store.commit([Op("ns", "tail", 1)])
    other.apply(store.changes_since(6))
    assert other.digest() == store.digest()
    other.close()


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not a snapshot", b"TANDEM-SNAPSHOT 1 sha256=00\nxx", b"TANDEM-SNAPSHOT 9 sha256=00\n"],
)
def test_restore_garbage_raises_store_corrupt_and_changes_nothing(store: Store, garbage: bytes) -> None:
    fill(store, 3)
    before = (store.digest(), store.log_size(), store.last_lsn())
    with pytest.raises(StoreCorrupt):
        store.restore(garbage)
    assert (store.digest(), store.log_size(), store.last_lsn()) == before


def test_restore_bitflipped_snapshot_raises_store_corrupt(store: Store) -> None:
    fill(store, 3)
    snap = bytearray(store.snapshot())
    snap[-5] ^= 0x01
    before = store.digest()
    with pytest.raises(StoreCorrupt, match="checksum"):
        store.restore(bytes(snap))
    assert store.digest() == before


def test_digest_covers_data_and_lsn_but_not_log_or_meta(store: Store) -> None:
    fill(store, 3)
    d = store.digest()
    store.meta_set("peer_in_sync", "yes")
    store.truncate_log(0)
    assert store.digest() == d
    store.commit([Op("ns", "k1", {"i": 1})])  # same data, higher lsn
    assert store.digest() != d


def test_meta_is_local_and_overwritable(store: Store) -> None:
    assert store.meta_get("x") is None
    store.meta_set("x", "1")
    store.meta_set("x", "2")
    assert store.meta_get("x") == "2"
    assert store.last_lsn() == 0 and store.log_size() == 0


def test_listener_error_does_not_undo_commit(store: Store) -> None:
    def boom(change: Change) -> None:
        raise RuntimeError("listener failed")

    seen: list[int] = []
    store.add_listener(boom)
    store.add_listener(lambda c: seen.append(c.lsn))
    assert store.commit([Op("ns", "a", 1)]).lsn == 1
    assert seen == [1] and store.get("ns", "a") == 1


def test_state_survives_reopen(location: str) -> None:
    s = open_store(location)
    fill(s, 3)
    s.set_epoch(7)
    s.truncate_log(1)
    s.meta_set("m", "v")
    d = s.digest()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("ns", "k0")
    s = open_store(location)
    assert (s.digest(), s.epoch, s.last_lsn(), s.oldest_lsn(), s.meta_get("m")) == (d, 7, 3, 3, "v")
    s.close()


def test_reads_from_other_threads_while_committing(store: Store) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                a, b = store.get("t", "a"), store.get("t", "b")
                assert a is None or b is None or b >= a
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            store.commit([Op("t", "a", i), Op("t", "b", i)])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert errors == [] and store.last_lsn() == 100


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ([], "change"),
        ({"epoch": -1, "lsn": 1, "ts": 1.0, "ops": []}, "epoch"),
        ({"epoch": 1, "lsn": 0, "ts": 1.0, "ops": []}, "lsn"),
        ({"epoch": 1, "lsn": True, "ts": 1.0, "ops": []}, "lsn"),
        ({"epoch": 1, "lsn": 1, "ts": "now", "ops": []}, "ts"),
        ({"epoch": 1, "lsn": 1, "ts": 1.0, "ops": {}}, "ops"),
        ({"epoch": 1, "lsn": 1, "ts": 1.0, "ops": [{"ns": "a", "key": "b"}]}, r"ops\[0\]"),
        ({"epoch": 1, "lsn": 1, "ts": 1.0, "ops": [{"ns": "a", "key": 3, "value": 1}]}, r"ops\[0\]\.key"),
        ({"epoch": 1, "lsn": 1, "ts": 1.0, "ops": [{"ns": "", "key": "k", "value": 1}]}, r"ops\[0\]\.ns"),
    ],
)
def test_change_from_json_rejects_bad_input(bad: object, field: str) -> None:
    with pytest.raises(ChangeRejected, match=field):
        Change.from_json(bad)


def test_change_json_roundtrip() -> None:
    c = Change(epoch=3, lsn=9, ops=(Op("a", "b", {"x": [1, None]}), Op("a", "c", None)), ts=12.5)
    assert Change.from_json(c.to_json()) == c


def test_open_store_directory_rules(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing"):
        open_store(str(tmp_path / "missing" / "store"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="file"):
        open_store(str(tmp_path / "file"))
    s = open_store(str(tmp_path / "new"))
    assert (tmp_path / "new" / "store.sqlite3").is_file()
    s.close()


@pytest.mark.parametrize(
    "content", [b"this is not an sqlite database at all" * 200, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_open_corrupt_sqlite_file_raises_store_corrupt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.sqlite3").write_bytes(content)
    with pytest.raises(StoreCorrupt, match="store.sqlite3"):
        open_store(str(tmp_path / "s"))


def test_open_foreign_sqlite_database_raises_store_corrupt(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "s").mkdir()
    with sqlite3.connect(tmp_path / "s" / "store.sqlite3") as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a Tandem store"):
        open_store(str(tmp_path / "s"))


def test_digest_and_snapshot_agree_across_backends(tmp_path: Path, pg_schema_url: str) -> None:
    lite, pg = open_store(str(tmp_path / "lite")), open_store(pg_schema_url)
    try:
        for s in (lite, pg):
            s.commit([Op("n", k, {"k": k, "f": 0.1}) for k in ["b", "B", "é", "a\U0010ffff", "a"]])
            s.commit([Op("n", "b", None), Op("m", "x", [1, "2"])])
        assert lite.digest() == pg.digest()
        pg.restore(lite.snapshot())
        assert pg.digest() == lite.digest() and pg.last_lsn() == 2
    finally:
        lite.close()
        pg.close()


def test_postgres_url_schema_parsing() -> None:
    assert split_url("postgresql://u@h/db?schema=abc&sslmode=disable") == (
        "postgresql://u@h/db?sslmode=disable",
        "abc",
    )
    assert split_url("postgres://h/db") == ("postgres://h/db", "tandem")
    with pytest.raises(StoreError, match="schema"):
        split_url("postgresql://h/db?schema=a;drop")


def test_postgres_unreachable_raises_store_error_naming_url() -> None:
    with pytest.raises(StoreError, match="127.0.0.1:1") as info:
        PostgresStore("postgresql://postgres:secret@127.0.0.1:1/test?connect_timeout=2")
    assert "secret" not in str(info.value)


def test_restore_never_lowers_the_epoch(store: Store, tmp_path: Path) -> None:
    donor = open_store(str(tmp_path / "donor"))
    donor.set_epoch(2)
    donor.commit([Op("ns", "a", 1)])
    store.set_epoch(9)
    store.restore(donor.snapshot())
    donor.close()
    assert (store.epoch, store.last_change_epoch(), store.get("ns", "a")) == (9, 2, 1)
