"""Consumers (applications), their credentials and API keys.

An API key is `tk_` + 32 random bytes (url-safe base64) from `secrets`; it is
returned once, and only its sha256 hex is stored. Basic-auth passwords are
stored as scrypt hashes (`tandem.passwords`: `scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`,
about 50 ms each, computed before the AMS lock is taken); older
`sha256$<salt>$<hex>` hashes still verify. Every consumer change bumps every
environment's revision in the same commit, so gateways learn a new or
revoked key at their next poll.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_CONSUMERS, AmsState, now_iso
from tandem.ams.models import ConsumerIn, ConsumerUpdate, CredentialsIn
from tandem.ams.services.environments import bump_all
from tandem.passwords import hash_password as hash_password  # re-exported: the AMS hashes here
from tandem.passwords import verify_password
from tandem.store import Op, Store

KEY_PREFIX = "tk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_password(password: str, stored: str) -> bool:
    """Does `password` match a stored hash (scrypt, or an older sha256 one)? Slow: not on an event loop."""
    return verify_password(password, stored)


def stored_credentials(creds: CredentialsIn) -> dict[str, Any]:
    return {
        "basic_auth": [{"username": c.username, "password_hash": hash_password(c.password)}
                       for c in creds.basic_auth],
        "jwt": [c.model_dump(mode="json") for c in creds.jwt],
    }


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """A consumer as the API shows it: no hashes, no secrets."""
    creds = record.get("credentials", {})
    return {
        "name": record["name"],
        "description": record.get("description", ""),
        "credentials": {
            "basic_auth": [{"username": c["username"]} for c in creds.get("basic_auth", [])],
            "jwt": [{"key": c["key"], "algorithm": c["algorithm"]} for c in creds.get("jwt", [])],
        },
        "keys": [{"id": k["id"], "created_at": k["created_at"]} for k in record.get("keys", [])],
    }


class ConsumerService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    def _record(self, store: Store, name: str) -> dict[str, Any]:
        record = store.get(NS_CONSUMERS, name)
        if record is None:
            raise ApiError(404, "not_found", f"no consumer named {name!r}")
        return dict(record)

    def _commit(self, store: Store, op: Op) -> None:
        ops, channels = bump_all(store)
        self.state.commit([op, *ops], *channels)

    def list(self) -> list[dict[str, Any]]:
        return [public_view(v) for _, v in self.state.store().scan(NS_CONSUMERS)]

    def get(self, name: str) -> dict[str, Any]:
        return public_view(self._record(self.state.store(), name))

    def create(self, consumer: ConsumerIn) -> dict[str, Any]:
        record = {"name": consumer.name, "description": consumer.description,
                  "credentials": stored_credentials(consumer.credentials), "keys": []}
        with self.state.lock:
            store = self.state.store()
            if store.get(NS_CONSUMERS, consumer.name) is not None:
                raise ApiError(409, "exists", f"consumer {consumer.name!r} already exists", "name")
            self._check_credentials_unique(store, consumer.name, record)
            self._commit(store, Op(NS_CONSUMERS, consumer.name, record))
        return public_view(record)

    def replace(self, name: str, update: ConsumerUpdate) -> dict[str, Any]:
        """Replace description and credentials; API keys are kept."""
        credentials = stored_credentials(update.credentials)  # the slow hashes, outside the lock
        with self.state.lock:
            store = self.state.store()
            record = self._record(store, name)
            record.update(description=update.description, credentials=credentials)
            self._check_credentials_unique(store, name, record)
            self._commit(store, Op(NS_CONSUMERS, name, record))
        return public_view(record)

    def _check_credentials_unique(self, store: Store, name: str, record: dict[str, Any]) -> None:
        """A basic-auth username or JWT key identifies one consumer on the gateway."""
        mine = record["credentials"]
        if not any(mine.get(kind) for kind in ("basic_auth", "jwt")):
            return  # nothing that could clash: no scan of every consumer on every write
        for other_name, other in store.scan(NS_CONSUMERS):
            if other_name == name:
                continue
            theirs = other.get("credentials", {})
            for kind, field in (("basic_auth", "username"), ("jwt", "key")):
                clash = {c[field] for c in mine.get(kind, [])} & {c[field] for c in theirs.get(kind, [])}
                if clash:
                    raise ApiError(422, "invalid", f"credentials.{kind}: {field} {sorted(clash)[0]!r} already "
                                                   f"belongs to consumer {other_name!r}", f"credentials.{kind}")

    def delete(self, name: str) -> None:
        with self.state.lock:
            store = self.state.store()
            self._record(store, name)
            self._commit(store, Op(NS_CONSUMERS, name, None))

    def issue_key(self, name: str) -> dict[str, Any]:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        entry = {"id": "k_" + secrets.token_hex(8), "sha256": hash_key(key), "created_at": now_iso()}
        with self.state.lock:
            store = self.state.store()
            record = self._record(store, name)
            record["keys"] = [*record.get("keys", []), entry]
            self._commit(store, Op(NS_CONSUMERS, name, record))
        return {"id": entry["id"], "consumer": name, "key": key, "created_at": entry["created_at"]}

    def revoke_key(self, name: str, key_id: str) -> None:
        with self.state.lock:
            store = self.state.store()
            record = self._record(store, name)
            keys = record.get("keys", [])
            remaining = [k for k in keys if k["id"] != key_id]
            if len(remaining) == len(keys):
                raise ApiError(404, "not_found", f"consumer {name!r} has no key {key_id!r}")
            record["keys"] = remaining
            self._commit(store, Op(NS_CONSUMERS, name, record))
