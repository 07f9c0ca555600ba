"""The embedded SQLite backend: one file, WAL, synchronous=FULL.

One connection guarded by a lock: SQLite serialises writers anyway, and a
single connection keeps every read consistent with the last commit of this
process. Writes take BEGIN IMMEDIATE so the head (last_lsn in `meta`) is read
and advanced under the write lock even if another process opens the file.

The store holds secrets (JWT HMAC secrets, password and key hashes), so it is
its owner's only: the folder is set to 0700 and the database file is created
0600 before SQLite opens it (SQLite gives the -wal and -shm files the
database file's mode); files an older version left wider are narrowed at open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tandem.errors import StaleEpoch, StoreCorrupt, StoreError
from tandem.store.change import Change, LogTruncated, Op
from tandem.store.codec import (
    Digest,
    Row,
    SnapshotImage,
    check_batch,
    decode_snapshot,
    encode_ops,
    encode_snapshot,
    log_json_to_ops,
    prefix_upper,
    rows_to_log_json,
)
from tandem.store.contract import Store

log = logging.getLogger("tandem.store")

BUSY_TIMEOUT_S = 5.0
SCHEMA_VERSION = 1
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                               PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (lsn INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, ts REAL NOT NULL,
                                ops TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS localmeta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UPSERT = "INSERT INTO kv (ns, key, value) VALUES (?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value"
_DELETE = "DELETE FROM kv WHERE ns = ? AND key = ?"
_LOG = "INSERT INTO log (lsn, epoch, ts, ops) VALUES (?, ?, ?, ?)"
_SET_META = "UPDATE meta SET value = ? WHERE key = ?"


FILE_MODE = 0o600
FOLDER_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm", "-journal")


def secure_files(path: Path) -> None:
    """Owner-only modes for the store folder, the database and its side files (created
    empty here if missing, so that SQLite never creates it with the umask's mode)."""
    try:
        folder = path.parent
        if stat.S_IMODE(folder.stat().st_mode) & 0o077:
            try:
                os.chmod(folder, FOLDER_MODE)
            except PermissionError as exc:  # not our folder: the files themselves stay private
                log.warning("sqlite store %s: cannot make its folder private (0700): %s", path, exc)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        for p in (path, *(path.with_name(path.name + s) for s in _SIDE_FILES)):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(p.stat().st_mode) != FILE_MODE:
                    os.chmod(p, FILE_MODE)
    except OSError as exc:
        raise StoreError(f"sqlite store {path}: cannot make it private (mode 0600, folder 0700): {exc}") from exc


def _translate(exc: sqlite3.Error, path: Path, what: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    cls = StoreCorrupt if code in _CORRUPT_CODES else StoreError
    return cls(f"sqlite store {path}: {what} failed: {exc}")


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = Path(path)
        self._lock = threading.Lock()
        self._state = (0, 0)
        secure_files(self._path)
        try:
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _translate(exc, self._path, "open") from exc
        try:
            self._init(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _init(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StoreCorrupt(f"sqlite store {self._path} is corrupt: {'; '.join(problems[:3])}")
            conn.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise StoreCorrupt(f"{self._path} is an SQLite database but not a Tandem store")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            defaults = [("schema", SCHEMA_VERSION), ("epoch", 0), ("last_lsn", 0), ("last_change_epoch", 0)]
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", defaults)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta["schema"] != SCHEMA_VERSION:
                raise StoreCorrupt(f"{self._path}: unknown store schema {meta['schema']!r}")
            conn.execute("COMMIT")
            self._state = (meta["epoch"], meta["last_lsn"])
        except sqlite3.Error as exc:
            raise _translate(exc, self._path, "open") from exc

    @contextmanager
    def _tx(self, what: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"sqlite store {self._path} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise _translate(exc, self._path, what) from exc
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting

    def _meta(self, conn: sqlite3.Connection) -> dict[str, int]:
        meta: dict[str, int] = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._state = (meta["epoch"], meta["last_lsn"])
        return meta

    def _write_rows(self, conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
        for ns, key, text in rows:
            if text is None:
                conn.execute(_DELETE, (ns, key))
            else:
                conn.execute(_UPSERT, (ns, key, text))

    def _advance(self, conn: sqlite3.Connection, change: Change, rows: Sequence[Row]) -> None:
        self._write_rows(conn, rows)
        conn.execute(_LOG, (change.lsn, change.epoch, change.ts, rows_to_log_json(rows)))
        conn.execute(_SET_META, (change.lsn, "last_lsn"))
        conn.execute(_SET_META, (change.epoch, "last_change_epoch"))

    @property
    def epoch(self) -> int:
        with self._tx("epoch") as conn:
            return self._meta(conn)["epoch"]

    def set_epoch(self, epoch: int) -> None:
        with self._tx("set_epoch", write=True) as conn:
            current = self._meta(conn)["epoch"]
            if epoch < current:
                raise StaleEpoch(f"epoch {epoch} is lower than the store's epoch {current}")
            conn.execute(_SET_META, (epoch, "epoch"))
        self._state = (epoch, self._state[1])

    def commit(self, ops: Sequence[Op]) -> Change:
        rows = encode_ops(ops, StoreError)
        with self._tx("commit", write=True) as conn:
            meta = self._meta(conn)
            if meta["epoch"] < meta["last_change_epoch"]:
                raise StaleEpoch(
                    f"store epoch {meta['epoch']} is below the newest change's {meta['last_change_epoch']}"
                )
            change = Change(meta["epoch"], meta["last_lsn"] + 1, tuple(ops), time.time())
            self._advance(conn, change, rows)
        self._state = (change.epoch, change.lsn)
        self._notify(change)
        return change

    def apply(self, changes: Sequence[Change]) -> None:
        with self._tx("apply", write=True) as conn:
            meta = self._meta(conn)
            encoded = check_batch(changes, meta["last_lsn"], meta["last_change_epoch"])
            for change, rows in zip(changes, encoded, strict=True):
                self._advance(conn, change, rows)
        if changes:
            self._state = (self._state[0], changes[-1].lsn)

    def get(self, ns: str, key: str) -> Any | None:
        with self._tx("get") as conn:
            row = conn.execute("SELECT value FROM kv WHERE ns = ? AND key = ?", (ns, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def scan(self, ns: str, prefix: str = "") -> list[tuple[str, Any]]:
        upper = prefix_upper(prefix)
        sql = "SELECT key, value FROM kv WHERE ns = ? AND key >= ?"
        args: tuple[str, ...] = (ns, prefix)
        if upper is not None:
            sql, args = sql + " AND key < ?", (*args, upper)
        with self._tx("scan") as conn:
            rows = conn.execute(sql + " ORDER BY key", args).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def last_lsn(self) -> int:
        with self._tx("last_lsn") as conn:
            return self._meta(conn)["last_lsn"]

    def last_change_epoch(self) -> int:
        with self._tx("last_change_epoch") as conn:
            return self._meta(conn)["last_change_epoch"]

    def _oldest(self, conn: sqlite3.Connection) -> int:
        (oldest,) = conn.execute("SELECT MIN(lsn) FROM log").fetchone()
        return int(oldest) if oldest is not None else self._meta(conn)["last_lsn"] + 1

    def oldest_lsn(self) -> int:
        with self._tx("oldest_lsn") as conn:
            return self._oldest(conn)

    def changes_since(self, lsn: int, limit: int = 1000) -> list[Change]:
        with self._tx("changes_since") as conn:
            oldest = self._oldest(conn)
            if lsn + 1 < oldest:
                raise LogTruncated(
                    f"sqlite store {self._path}: log starts at lsn {oldest}, asked for {lsn + 1}"
                )
            rows = conn.execute(
                "SELECT lsn, epoch, ts, ops FROM log WHERE lsn > ? ORDER BY lsn LIMIT ?", (lsn, limit)
            ).fetchall()
        return [Change(epoch, lsn_, log_json_to_ops(ops), ts) for lsn_, epoch, ts, ops in rows]

    def truncate_log(self, keep_last: int) -> int:
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        with self._tx("truncate_log", write=True) as conn:
            cut = self._meta(conn)["last_lsn"] - keep_last
            return conn.execute("DELETE FROM log WHERE lsn <= ?", (cut,)).rowcount

    def log_size(self) -> int:
        with self._tx("log_size") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM log").fetchone()[0])

    def snapshot(self) -> bytes:
        with self._tx("snapshot") as conn:
            meta = self._meta(conn)
            rows = conn.execute("SELECT ns, key, value FROM kv ORDER BY ns, key").fetchall()
        img = SnapshotImage(meta["epoch"], meta["last_lsn"], meta["last_change_epoch"], rows)
        return encode_snapshot(img)

    def restore(self, snap: bytes) -> None:
        img = decode_snapshot(snap)
        with self._tx("restore", write=True) as conn:
            epoch = max(self._meta(conn)["epoch"], img.epoch)
            conn.execute("DELETE FROM kv")
            conn.execute("DELETE FROM log")
            conn.executemany("INSERT INTO kv (ns, key, value) VALUES (?, ?, ?)", img.rows)
            for key, value in (
                ("epoch", epoch),
                ("last_lsn", img.last_lsn),
                ("last_change_epoch", img.last_change_epoch),
            ):
                conn.execute(_SET_META, (value, key))
        self._state = (epoch, img.last_lsn)

    def digest(self) -> str:
        d = Digest()
        with self._tx("digest") as conn:
            for ns, key, text in conn.execute("SELECT ns, key, value FROM kv ORDER BY ns, key"):
                d.add(ns, key, text)
            last = self._meta(conn)["last_lsn"]
        return d.finish(last)

    def meta_get(self, key: str) -> str | None:
        with self._tx("meta_get") as conn:
            row = conn.execute("SELECT value FROM localmeta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self._tx("meta_set", write=True) as conn:
            conn.execute(
                "INSERT INTO localmeta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _location(self) -> str:
        return str(self._path)

    def _cached_state(self) -> tuple[int, int]:
        return self._state
