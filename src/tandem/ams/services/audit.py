"""Reading and pruning the audit trail (its entries are written by `tandem.ams.audit`).

Reads go newest first, one day's key prefix at a time (keys start with their
ISO time), so a page costs the days it spans, not the whole trail. Pruning
deletes entries older than the retention (`[admin] AuditRetentionDays`), at
most `PRUNE_BATCH` per commit, on the active only (it is a store write, so
the passive prunes by replication).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import AmsState, now_iso
from tandem.ams.audit import NS_AUDIT
from tandem.store import Op

log = logging.getLogger("tandem.ams.audit")
PRUNE_BATCH = 1000
MAX_DAYS_BACK = 20 * 366  # a page walks back at most this many empty days


def _day(iso: str) -> datetime:
    return datetime.strptime(iso[:10], "%Y-%m-%d").replace(tzinfo=UTC)


DEFAULT_RETENTION_DAYS = 90


class AuditService:
    def __init__(self, state: AmsState, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self.state = state
        self.retention_days = retention_days

    def page(self, limit: int = 100, since: str | None = None, before: str | None = None,
             actor: str | None = None, action: str | None = None) -> dict[str, Any]:
        """Entries newest first: at or after `since`, strictly before the entry id `before`
        (the previous page's `next_before`), of `actor` / `action` when given."""
        store = self.state.store()
        # older entries are pruned: walk back no further than the retention (and a day of slack)
        floor = max(since or "", now_iso(time.time() - (self.retention_days + 1) * 86400))
        day = _day(before if before is not None else now_iso(time.time() + 86400))
        last_day = _day(floor)
        out: list[dict[str, Any]] = []
        more = False
        for _ in range(MAX_DAYS_BACK):
            if day < last_day:
                break
            rows = store.scan(NS_AUDIT, day.strftime("%Y-%m-%d"))
            for key, entry in reversed(rows):
                if before is not None and key >= before:
                    continue
                if key < floor:
                    break
                if (actor is not None and entry.get("actor") != actor) or \
                        (action is not None and entry.get("action") != action):
                    continue
                if len(out) == limit:
                    more = True
                    break
                out.append(entry)
            if more:
                break
            day -= timedelta(days=1)
        return {"entries": out, "next_before": out[-1]["id"] if more and out else None}

    def all(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (the export)."""
        return [v for _, v in self.state.store().scan(NS_AUDIT)]

    def prune(self) -> int:
        """Delete entries older than the retention; returns how many. Call on the active only."""
        cutoff = now_iso(time.time() - self.retention_days * 86400)
        removed = 0
        while self.state.serving():
            with self.state.lock:
                store = self.state.store()
                old = [k for k, _ in store.scan(NS_AUDIT)[:PRUNE_BATCH] if k < cutoff]
                if not old:
                    break
                self.state.commit([Op(NS_AUDIT, k, None) for k in old])
            removed += len(old)
        if removed:
            log.info("audit trail: pruned %d entries older than %s", removed, cutoff)
        return removed


ENTRY_ID = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{15}Z~[0-9a-f]{8}$")


def check_time(field: str, value: str | None) -> str | None:
    """A `?since=` / `?before=` value: an entry id as it is, an ISO 8601 time (a date alone is its
    midnight UTC; no zone is UTC) in the keys' form, so that text order is time order."""
    if value is None or ENTRY_ID.match(value):
        return value
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ApiError(422, "invalid", f"{field}: {value!r} is not an ISO 8601 time (e.g. 2026-12-01T08:00:00Z) "
                                       "or an entry id", field) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
