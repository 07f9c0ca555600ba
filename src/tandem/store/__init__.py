"""The Store: namespaced JSON documents with a change log; the only thing replication touches."""

from __future__ import annotations

from pathlib import Path

from tandem.errors import StoreError
from tandem.store.change import Change, LogTruncated, Op
from tandem.store.contract import Store
from tandem.store.sqlite import SqliteStore

__all__ = ["Change", "LogTruncated", "Op", "SqliteStore", "Store", "open_store"]

SQLITE_FILENAME = "store.sqlite3"


def open_store(location: str) -> Store:
    """Open the store at a `postgresql://` URL or in a directory (created if missing).

    A directory whose parent does not exist raises StoreError naming the path;
    opening a file that is not a usable store raises StoreCorrupt.
    """
    if location.startswith(("postgresql://", "postgres://")):
        from tandem.store.postgres import PostgresStore  # psycopg is only needed for this backend

        return PostgresStore(location)
    directory = Path(location)
    if not directory.is_dir():
        if directory.exists():
            raise StoreError(f"store location {directory} exists but is not a directory")
        if not directory.parent.is_dir():
            raise StoreError(
                f"store location {directory}: parent directory {directory.parent} does not exist"
            )
        try:
            directory.mkdir()
        except FileExistsError:
            pass  # created concurrently; SqliteStore will tell if it is not a directory
        except OSError as exc:
            raise StoreError(f"cannot create store directory {directory}: {exc}") from exc
    return SqliteStore(directory / SQLITE_FILENAME)
