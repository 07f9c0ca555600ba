"""What the AMS app shares between requests: the server, the writer lock, the hub.

Nothing here caches domain data: every read goes to `server.store`, looked up
per call because the server may close and reopen (or swap) its store across a
failover. Writes are validated, then committed under `lock`, the one writer
lock of this process, so a uniqueness check and its commit are atomic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tandem.ams import audit
from tandem.ams.api_errors import ApiError
from tandem.ams.notify import Hub
from tandem.errors import StoreError
from tandem.store import Change, Op, Store

if TYPE_CHECKING:
    from tandem.server.client_service import ServiceHost

log = logging.getLogger("tandem.ams")

# store namespaces (all replicated: they go through Store.commit)
NS_SETTINGS = "ams.settings"          # admin_token -> {"sha256"}
NS_PROJECTS = "ams.projects"          # name -> Project
NS_CONSUMERS = "ams.consumers"        # name -> consumer record (hashed credentials, keys)
NS_ENVS = "ams.environments"          # env -> {"name", "revision", "projects": {name: snapshot}}
NS_DEPLOYMENTS = "ams.deployments"    # id -> job
NS_OPEN_JOBS = "ams.open-jobs"        # id -> {} while a job is pending or in progress
NS_GATEWAYS = "ams.gateways"          # "env/name" -> registry entry
NS_GATEWAY_TOKENS = "ams.gateway-tokens"  # sha256 -> {"id", "name", "created_at"}
NS_USERS = "ams.users"                # name -> {"name", "role", "description", "created_at"}
NS_USER_TOKENS = "ams.user-tokens"    # sha256 -> {"id", "user", "name", "created_at", "expires_at", "last_used_at"}
NS_SESSIONS = "ams.sessions"          # sha256(session id) -> {"user", "token", "token_id", "created_at", "expires_at"}


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class AmsState:
    def __init__(self, server: ServiceHost) -> None:
        self.server = server
        self.lock = threading.RLock()
        self.hub = Hub()
        self._polling: Counter[tuple[str, str]] = Counter()
        self._polling_lock = threading.Lock()
        self.worker: Any = None  # asyncio.Task of the deployment worker, started lazily
        self.bootstrapped: int | None = None  # id() of the store the admin token was checked in

    def __repr__(self) -> str:
        return f"<AmsState server={self.server.profile.name} store={self.server.store!r}>"

    def store(self) -> Store:
        store: Store | None = self.server.store
        if store is None:
            raise ApiError(503, "unavailable", "the store is not open: this server is not serving")
        return store

    def serving(self) -> bool:
        """False once the server stopped serving (long polls end, the worker stops writing)."""
        return self.server.store is not None and self.server.serving

    def commit(self, ops: Sequence[Op], *channels: str) -> Change:
        """Commit (caller holds `lock`), then wake whoever waits on `channels`.

        Inside an admin-API write (an open `audit.AuditContext`) the request's audit entry
        joins its first commit: one transaction, so it replicates, or rolls back, with it."""
        ctx = audit.current()
        if ctx is not None and not ctx.written:
            ops = [*ops, ctx.entry(now_iso(), "accepted", list(ops))]
        try:
            change = self.store().commit(ops)
        except StoreError as exc:
            log.error("store commit failed: %s", exc)
            raise ApiError(503, "store_error", f"the store refused the write: {exc}") from exc
        if ctx is not None:
            ctx.written = True
        if channels:
            self.hub.notify(*channels)
        return change

    def record(self, ctx: audit.AuditContext, status: str, **extra: object) -> None:
        """Commit `ctx`'s entry on its own (a write that committed nothing); once per request."""
        with self.lock:
            if ctx.written:
                return
            self.store().commit([ctx.entry(now_iso(), status, None, **extra)])
            ctx.written = True

    # gateways held in a long poll right now count as live (they are being seen)
    def poll_started(self, env: str, name: str) -> None:
        with self._polling_lock:
            self._polling[(env, name)] += 1

    def poll_ended(self, env: str, name: str) -> None:
        with self._polling_lock:
            self._polling[(env, name)] -= 1
            if self._polling[(env, name)] <= 0:
                del self._polling[(env, name)]

    def polling_now(self, env: str) -> set[str]:
        with self._polling_lock:
            return {name for (e, name), n in self._polling.items() if e == env and n > 0}
