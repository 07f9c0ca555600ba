"""Users of the admin API, their roles and their tokens.

A user has a role (`viewer`, `operator`, `admin`: `tandem.ams.access`) and any
number of named tokens, each `tu_` + 32 random bytes (url-safe base64) from
`secrets`, shown once; the store keeps its sha256 hex only, as the key of
`ams.user-tokens` (one lookup per request), with its user, name, creation
time, optional expiry and last use. The last use is written at most once a
minute per token (`LAST_USE_EVERY`), so reads do not each cost a replicated
commit.

The built-in user `admin` owns the first admin token (`tandem.ams.auth`, id
`bootstrap`); it cannot be deleted or demoted and its bootstrap token cannot be
revoked (it can have more tokens, like any user). Deleting a user revokes its
tokens in the same commit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from tandem.ams.access import Principal, Role
from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_SETTINGS, NS_USER_TOKENS, NS_USERS, AmsState, now_iso, parse_iso
from tandem.ams.models import TokenIn, UserIn, UserUpdate
from tandem.store import Op, Store

TOKEN_PREFIX = "tu_"
BUILTIN = "admin"
BOOTSTRAP_ID = "bootstrap"
ADMIN_TOKEN_KEY = "admin_token"  # the NS_SETTINGS record of the first admin token (tandem.ams.auth)
LAST_USE_EVERY = 60.0  # s


def sha256_hex(token: str) -> str:
    """How every token (user, bootstrap, gateway) is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_view(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("id", "name", "created_at", "expires_at", "last_used_at")}


class UserService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    # -- reads --------------------------------------------------------------------------------
    def _tokens(self, store: Store) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for _, record in store.scan(NS_USER_TOKENS):
            out.setdefault(record["user"], []).append(token_view(record))
        for tokens in out.values():
            tokens.sort(key=lambda t: (t["created_at"], t["id"]))
        return out

    def _builtin(self, store: Store) -> dict[str, Any]:
        boot = store.get(NS_SETTINGS, ADMIN_TOKEN_KEY) or {}
        return {"name": BUILTIN, "role": Role.ADMIN.value, "description": "built-in: owns the first admin token",
                "builtin": True, "created_at": boot.get("created_at", ""),
                "tokens": [{"id": BOOTSTRAP_ID, "name": "admin.token", "created_at": boot.get("created_at", ""),
                            "expires_at": None, "last_used_at": boot.get("last_used_at")}]}

    def _view(self, record: dict[str, Any], tokens: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {"name": record["name"], "role": record["role"], "description": record.get("description", ""),
                "builtin": False, "created_at": record["created_at"], "tokens": tokens.get(record["name"], [])}

    def list(self) -> list[dict[str, Any]]:
        store = self.state.store()
        tokens = self._tokens(store)
        builtin = self._builtin(store)
        builtin["tokens"] += tokens.get(BUILTIN, [])
        return [builtin, *(self._view(v, tokens) for _, v in store.scan(NS_USERS))]

    def get(self, name: str) -> dict[str, Any]:
        for user in self.list():
            if user["name"] == name:
                return user
        raise ApiError(404, "not_found", f"no user named {name!r}")

    # -- writes -------------------------------------------------------------------------------
    def _user(self, store: Store, name: str) -> dict[str, Any]:
        record = store.get(NS_USERS, name)
        if record is None:
            raise ApiError(404, "not_found", f"no user named {name!r}")
        return dict(record)

    def _not_builtin(self, name: str, what: str) -> None:
        if name == BUILTIN:
            raise ApiError(409, "builtin", f"the built-in user {BUILTIN!r} cannot be {what}")

    def create(self, user: UserIn) -> dict[str, Any]:
        """Create a user and its first token (named `token_name`), returned once."""
        record = {"name": user.name, "role": user.role, "description": user.description, "created_at": now_iso()}
        with self.state.lock:
            store = self.state.store()
            if user.name == BUILTIN or store.get(NS_USERS, user.name) is not None:
                raise ApiError(409, "exists", f"user {user.name!r} already exists", "name")
            token, op, token_record = self._new_token(user.name, TokenIn(name=user.token_name,
                                                                          expires_at=user.expires_at))
            self.state.commit([Op(NS_USERS, user.name, record), op])
        return {**self._view(record, {user.name: [token_view(token_record)]}), "token": token}

    def update(self, name: str, update: UserUpdate) -> dict[str, Any]:
        self._not_builtin(name, "changed")
        with self.state.lock:
            store = self.state.store()
            record = self._user(store, name)
            record.update(role=update.role, description=update.description)
            self.state.commit([Op(NS_USERS, name, record)])
            return self._view(record, self._tokens(store))

    def delete(self, name: str) -> None:
        self._not_builtin(name, "deleted")
        with self.state.lock:
            store = self.state.store()
            self._user(store, name)
            ops = [Op(NS_USER_TOKENS, digest, None) for digest, t in store.scan(NS_USER_TOKENS) if t["user"] == name]
            self.state.commit([Op(NS_USERS, name, None), *ops])

    def _new_token(self, user: str, spec: TokenIn) -> tuple[str, Op, dict[str, Any]]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = {"id": "ut_" + secrets.token_hex(8), "user": user, "name": spec.name, "created_at": now_iso(),
                  "expires_at": spec.expires_at, "last_used_at": None}
        return token, Op(NS_USER_TOKENS, sha256_hex(token), record), record

    def issue_token(self, name: str, spec: TokenIn) -> dict[str, Any]:
        with self.state.lock:
            store = self.state.store()
            if name != BUILTIN:
                self._user(store, name)
            token, op, record = self._new_token(name, spec)
            self.state.commit([op])
        return {**token_view(record), "user": name, "token": token}

    def revoke_token(self, name: str, token_id: str) -> None:
        if name == BUILTIN and token_id == BOOTSTRAP_ID:
            raise ApiError(409, "builtin", "the bootstrap admin token cannot be revoked (set another admin's "
                                           "token up first, then keep admin.token offline)")
        with self.state.lock:
            store = self.state.store()
            if name != BUILTIN:
                self._user(store, name)
            for digest, record in store.scan(NS_USER_TOKENS):
                if record["user"] == name and record["id"] == token_id:
                    self.state.commit([Op(NS_USER_TOKENS, digest, None)])
                    return
        raise ApiError(404, "not_found", f"user {name!r} has no token {token_id!r}")

    # -- authentication -----------------------------------------------------------------------
    def token_expiry(self, digest: str) -> float | None:
        """When the user token hashing to `digest` expires (unix time); None for never or unknown."""
        record = self.state.store().get(NS_USER_TOKENS, digest)
        expires = record.get("expires_at") if record is not None else None
        return parse_iso(expires) if expires is not None else None

    def principal(self, digest: str) -> Principal | None:
        """The user whose token hashes to `digest`; None if there is none. Raises 401 for an expired
        token. Records the token's last use (at most once a minute; a failure there is not the caller's)."""
        store = self.state.store()
        now = time.time()
        boot = store.get(NS_SETTINGS, ADMIN_TOKEN_KEY)
        if boot is not None and hmac.compare_digest(str(boot.get("sha256", "")), digest):
            self._touch(store, NS_SETTINGS, ADMIN_TOKEN_KEY, boot, now)
            return Principal(BUILTIN, BOOTSTRAP_ID, Role.ADMIN)
        record = store.get(NS_USER_TOKENS, digest)
        if record is None:
            return None
        expires = record.get("expires_at")
        if expires is not None and parse_iso(expires) <= now:
            raise ApiError(401, "unauthorized", f"token {record['id']!r} of user {record['user']!r} expired at "
                                                f"{expires}", headers={"WWW-Authenticate": "Bearer"})
        if record["user"] == BUILTIN:
            role = Role.ADMIN
        else:
            user = store.get(NS_USERS, record["user"])
            if user is None:  # a user deleted by an import that kept its tokens: no access
                return None
            role = Role(user["role"])
        self._touch(store, NS_USER_TOKENS, digest, record, now)
        return Principal(record["user"], record["id"], role)

    def _touch(self, store: Store, ns: str, key: str, record: dict[str, Any], now: float) -> None:
        last = record.get("last_used_at")
        if last is not None and now - parse_iso(last) < LAST_USE_EVERY:
            return
        with self.state.lock:
            current = store.get(ns, key)
            if current is None:
                return
            try:
                store.commit([Op(ns, key, {**current, "last_used_at": now_iso(now)})])
            except Exception:  # noqa: BLE001 - a store that cannot write fails the request elsewhere
                return
