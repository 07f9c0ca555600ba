"""Console sessions: a user token exchanged for an HttpOnly cookie.

A person signs in to the console with a user token (`POST /api/v1/session`).
The AMS stores a session keyed by the sha256 of a random session id and sets
the id as the `tandem_session` cookie (HttpOnly, SameSite=Strict, Secure over
HTTPS); the token itself never reaches the page again. Sessions live in the
store, so they replicate with the rest and a page that follows a failover to
the peer stays signed in.

A session does not copy the token's rights: it names the token (by its hash),
and every request through the session is authorised as that token is *now*,
so revoking the token, deleting the user or changing its role applies to the
session at once. A session ends at `expires_at` (SESSION_SECONDS after sign-in,
never later than the token's own expiry) or at sign-out.

CSRF: every write made with the cookie must carry `X-CSRF-Token`, an HMAC of
the session id. It is derived, not stored: only a holder of the cookie value
(the server) can compute it, and the page learns it from `GET /api/v1/session`,
which a cross-site page cannot read (no CORS).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from tandem.ams.access import Principal
from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_SESSIONS, AmsState, now_iso, parse_iso
from tandem.ams.services.users import UserService, sha256_hex
from tandem.store import Op

COOKIE = "tandem_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000  # past it the oldest sessions are dropped at sign-in


def csrf_for(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"tandem-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_id: str, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(csrf_for(session_id), offered)


class SessionService:
    def __init__(self, state: AmsState) -> None:
        self.state = state

    def create(self, token: str) -> tuple[str, Principal, str]:
        """Sign in with a user `token`: (session id, its principal, expires_at ISO). A gateway token
        or an unknown one is refused with 401; an expired one with the users' 401."""
        digest = sha256_hex(token)
        principal = UserService(self.state).principal(digest)
        if principal is None:
            raise ApiError(401, "unauthorized", "invalid token: sign in with a user token")
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + SESSION_SECONDS
        token_expiry = UserService(self.state).token_expiry(digest)
        if token_expiry is not None:
            expires = min(expires, token_expiry)
        record = {"user": principal.actor, "token": digest, "token_id": principal.token_id,
                  "created_at": now_iso(now), "expires_at": now_iso(expires)}
        with self.state.lock:
            ops = [Op(NS_SESSIONS, sha256_hex(session_id), record), *self._pruned(now)]
            self.state.commit(ops)
        return session_id, principal, record["expires_at"]

    def _pruned(self, now: float) -> list[Op]:
        """Delete ops for expired sessions, and for the oldest past MAX_SESSIONS."""
        found = list(self.state.store().scan(NS_SESSIONS))
        dead = [k for k, v in found if parse_iso(v["expires_at"]) <= now]
        alive = sorted((v["created_at"], k) for k, v in found if parse_iso(v["expires_at"]) > now)
        dead += [k for _, k in alive[:max(0, len(alive) + 1 - MAX_SESSIONS)]]
        return [Op(NS_SESSIONS, k, None) for k in dead]

    def get(self, session_id: str) -> dict[str, Any] | None:
        record = self.state.store().get(NS_SESSIONS, sha256_hex(session_id))
        if record is None or parse_iso(record["expires_at"]) <= time.time():
            return None
        return dict(record)

    def principal(self, session_id: str) -> Principal | None:
        """Who `session_id` acts for now: its token's principal; None when the session ended or its
        token no longer opens anything."""
        record = self.get(session_id)
        if record is None:
            return None
        return UserService(self.state).principal(str(record["token"]))

    def delete(self, session_id: str) -> None:
        with self.state.lock:
            self.state.commit([Op(NS_SESSIONS, sha256_hex(session_id), None)])
