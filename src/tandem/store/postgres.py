"""The PostgreSQL backend: same contract as SQLite, one schema per store.

`?schema=name` in the URL picks the schema (default "tandem"). Writers lock
the `meta` rows FOR UPDATE, which serialises commits even across processes.
Multi-statement reads run REPEATABLE READ so a snapshot or digest sees one
instant. ns/key columns use COLLATE "C" so ordering is code-point order, as
in SQLite, and digests of the two backends agree.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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

DEFAULT_SCHEMA = "tandem"
# Hard limits (house rule 6): a dead server must not hang a commit forever.
_CONN_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
_STATEMENT_TIMEOUT = "30s"
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CORRUPT = (psycopg.errors.DataCorrupted, psycopg.errors.IndexCorrupted)

_TABLES = """
CREATE TABLE IF NOT EXISTS {s}.kv (ns TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
                                   value TEXT NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS {s}.log (lsn BIGINT PRIMARY KEY, epoch BIGINT NOT NULL,
                                    ts DOUBLE PRECISION NOT NULL, ops TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.localmeta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO {s}.meta (key, value) VALUES ('epoch', 0), ('last_lsn', 0), ('last_change_epoch', 0)
    ON CONFLICT (key) DO NOTHING
"""


def split_url(url: str) -> tuple[str, str]:
    """Return (url without `schema=`, schema name); a bad name raises StoreError."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_RE.match(schema):
        raise StoreError(f"postgres store: schema={schema!r} is not a plain SQL identifier")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


class PostgresStore(Store):
    backend = "postgres"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url, self._schema = split_url(url)
        self._where = f"{_safe(self._url)} schema={self._schema}"
        self._lock = threading.Lock()
        self._state = (0, 0)
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        q = {name: sql.SQL(text).format(s=sql.Identifier(self._schema)) for name, text in _QUERIES.items()}
        self._q = q
        try:
            with self._tx("open") as cur:
                # two processes creating the same schema at once would collide on IF NOT EXISTS
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tandem.store.{self._schema}",))
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema)))
                for statement in _TABLES.split(";"):
                    cur.execute(sql.SQL(statement).format(s=sql.Identifier(self._schema)))
                self._meta(cur)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        params = {**_CONN_DEFAULTS, **conninfo_to_dict(self._url)}
        try:
            conn = psycopg.connect(make_conninfo("", **params), autocommit=False)
            conn.execute(f"SET statement_timeout = '{_STATEMENT_TIMEOUT}'")
            conn.execute("SET synchronous_commit = on")
            conn.commit()
        except psycopg.Error as exc:
            raise StoreError(f"postgres store {self._where}: cannot connect: {exc}") from exc
        return conn

    @contextmanager
    def _tx(self, what: str, consistent: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock:
            if self._closed:
                raise StoreError(f"postgres store {self._where} is closed")
            if self._conn is None or self._conn.broken or self._conn.closed:
                self._conn = self._connect()  # reconnect after a lost connection
            conn = self._conn
            try:
                with conn.cursor() as cur:
                    if consistent:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    yield cur
                conn.commit()
            except psycopg.Error as exc:
                self._rollback(conn)
                cls = StoreCorrupt if isinstance(exc, _CORRUPT) else StoreError
                raise cls(f"postgres store {self._where}: {what} failed: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.rollback()
        except psycopg.Error:
            pass  # the original error is the one worth reporting

    def _meta(self, cur: psycopg.Cursor[Any], lock: bool = False) -> dict[str, int]:
        meta: dict[str, int] = dict(cur.execute(self._q["meta_lock" if lock else "meta"]).fetchall())
        self._state = (meta["epoch"], meta["last_lsn"])
        return meta

    def _advance(self, cur: psycopg.Cursor[Any], change: Change, rows: Sequence[Row]) -> None:
        for ns, key, text in rows:
            if text is None:
                cur.execute(self._q["delete"], (ns, key))
            else:
                cur.execute(self._q["upsert"], (ns, key, text))
        cur.execute(self._q["log"], (change.lsn, change.epoch, change.ts, rows_to_log_json(rows)))
        cur.execute(self._q["set_meta"], (change.lsn, "last_lsn"))
        cur.execute(self._q["set_meta"], (change.epoch, "last_change_epoch"))

    @property
    def epoch(self) -> int:
        with self._tx("epoch") as cur:
            return self._meta(cur)["epoch"]

    def set_epoch(self, epoch: int) -> None:
        with self._tx("set_epoch") as cur:
            current = self._meta(cur, lock=True)["epoch"]
            if epoch < current:
                raise StaleEpoch(f"epoch {epoch} is lower than the store's epoch {current}")
            cur.execute(self._q["set_meta"], (epoch, "epoch"))
        self._state = (epoch, self._state[1])

    def commit(self, ops: Sequence[Op]) -> Change:
        rows = encode_ops(ops, StoreError)
        with self._tx("commit") as cur:
            meta = self._meta(cur, lock=True)
            if meta["epoch"] < meta["last_change_epoch"]:
                raise StaleEpoch(
                    f"store epoch {meta['epoch']} is below the newest change's {meta['last_change_epoch']}"
                )
            change = Change(meta["epoch"], meta["last_lsn"] + 1, tuple(ops), time.time())
            self._advance(cur, change, rows)
        self._state = (change.epoch, change.lsn)
        self._notify(change)
        return change

    def apply(self, changes: Sequence[Change]) -> None:
        with self._tx("apply") as cur:
            meta = self._meta(cur, lock=True)
            encoded = check_batch(changes, meta["last_lsn"], meta["last_change_epoch"])
            for change, rows in zip(changes, encoded, strict=True):
                self._advance(cur, change, rows)
        if changes:
            self._state = (self._state[0], changes[-1].lsn)

    def get(self, ns: str, key: str) -> Any | None:
        with self._tx("get") as cur:
            row = cur.execute(self._q["get"], (ns, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def scan(self, ns: str, prefix: str = "") -> list[tuple[str, Any]]:
        upper = prefix_upper(prefix)
        with self._tx("scan") as cur:
            if upper is None:
                rows = cur.execute(self._q["scan_open"], (ns, prefix)).fetchall()
            else:
                rows = cur.execute(self._q["scan"], (ns, prefix, upper)).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def last_lsn(self) -> int:
        with self._tx("last_lsn") as cur:
            return self._meta(cur)["last_lsn"]

    def last_change_epoch(self) -> int:
        with self._tx("last_change_epoch") as cur:
            return self._meta(cur)["last_change_epoch"]

    def _oldest(self, cur: psycopg.Cursor[Any]) -> int:
        row = cur.execute(self._q["oldest"]).fetchone()
        return int(row[0]) if row and row[0] is not None else self._meta(cur)["last_lsn"] + 1

    def oldest_lsn(self) -> int:
        with self._tx("oldest_lsn", consistent=True) as cur:
            return self._oldest(cur)

    def changes_since(self, lsn: int, limit: int = 1000) -> list[Change]:
        with self._tx("changes_since", consistent=True) as cur:
            oldest = self._oldest(cur)
            if lsn + 1 < oldest:
                raise LogTruncated(
                    f"postgres store {self._where}: log starts at lsn {oldest}, asked for {lsn + 1}"
                )
            rows = cur.execute(self._q["since"], (lsn, limit)).fetchall()
        return [
            Change(int(epoch), int(lsn_), log_json_to_ops(ops), float(ts)) for lsn_, epoch, ts, ops in rows
        ]

    def truncate_log(self, keep_last: int) -> int:
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        with self._tx("truncate_log") as cur:
            cut = self._meta(cur, lock=True)["last_lsn"] - keep_last
            return cur.execute(self._q["truncate"], (cut,)).rowcount

    def log_size(self) -> int:
        with self._tx("log_size") as cur:
            row = cur.execute(self._q["log_size"]).fetchone()
        return int(row[0]) if row else 0

    def snapshot(self) -> bytes:
        with self._tx("snapshot", consistent=True) as cur:
            meta = self._meta(cur)
            rows = cur.execute(self._q["all"]).fetchall()
        return encode_snapshot(
            SnapshotImage(meta["epoch"], meta["last_lsn"], meta["last_change_epoch"], rows)
        )

    def restore(self, snap: bytes) -> None:
        img = decode_snapshot(snap)
        with self._tx("restore") as cur:
            epoch = max(self._meta(cur, lock=True)["epoch"], img.epoch)
            cur.execute(self._q["clear_kv"])
            cur.execute(self._q["clear_log"])
            with cur.copy(self._q["copy_kv"]) as copy:
                for row in img.rows:
                    copy.write_row(row)
            for key, value in (
                ("epoch", epoch),
                ("last_lsn", img.last_lsn),
                ("last_change_epoch", img.last_change_epoch),
            ):
                cur.execute(self._q["set_meta"], (value, key))
        self._state = (epoch, img.last_lsn)

    def digest(self) -> str:
        d = Digest()
        with self._tx("digest", consistent=True) as cur:
            last = self._meta(cur)["last_lsn"]
            for ns, key, text in cur.execute(self._q["all"]):
                d.add(ns, key, text)
        return d.finish(last)

    def meta_get(self, key: str) -> str | None:
        with self._tx("meta_get") as cur:
            row = cur.execute(self._q["lm_get"], (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self._tx("meta_set") as cur:
            cur.execute(self._q["lm_set"], (key, value))

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._closed = self._conn, None, True
        if conn is not None:
            conn.close()

    def _location(self) -> str:
        return self._where

    def _cached_state(self) -> tuple[int, int]:
        return self._state


_QUERIES = {
    "meta": "SELECT key, value FROM {s}.meta",
    "meta_lock": "SELECT key, value FROM {s}.meta FOR UPDATE",
    "set_meta": "UPDATE {s}.meta SET value = %s WHERE key = %s",
    "upsert": "INSERT INTO {s}.kv (ns, key, value) VALUES (%s, %s, %s) "
    "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
    "delete": "DELETE FROM {s}.kv WHERE ns = %s AND key = %s",
    "log": "INSERT INTO {s}.log (lsn, epoch, ts, ops) VALUES (%s, %s, %s, %s)",
    "get": "SELECT value FROM {s}.kv WHERE ns = %s AND key = %s",
    "scan": "SELECT key, value FROM {s}.kv WHERE ns = %s AND key >= %s AND key < %s ORDER BY key",
    "scan_open": "SELECT key, value FROM {s}.kv WHERE ns = %s AND key >= %s ORDER BY key",
    "oldest": "SELECT MIN(lsn) FROM {s}.log",
    "since": "SELECT lsn, epoch, ts, ops FROM {s}.log WHERE lsn > %s ORDER BY lsn LIMIT %s",
    "truncate": "DELETE FROM {s}.log WHERE lsn <= %s",
    "log_size": "SELECT COUNT(*) FROM {s}.log",
    "all": "SELECT ns, key, value FROM {s}.kv ORDER BY ns, key",
    "clear_kv": "DELETE FROM {s}.kv",
    "clear_log": "DELETE FROM {s}.log",
    "copy_kv": "COPY {s}.kv (ns, key, value) FROM STDIN",
    "lm_get": "SELECT value FROM {s}.localmeta WHERE key = %s",
    "lm_set": "INSERT INTO {s}.localmeta (key, value) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
}
