"""Bearer-token authentication and the admin token's first-start bootstrap.

Only sha256 hashes of tokens are stored (replicated with the rest of the
configuration). The admin token is created the first time a serving AMS
finds none in its store: `TANDEM_ADMIN_TOKEN` if set, else a random one; its
clear text goes to `<store dir>/admin.token` (mode 0600; for a PostgreSQL
store `<profile folder>/admin.token`) and never to a log. The file is written
before the hash is committed, so a crash in between costs a regenerated
token, never a token nobody knows.

Authentication runs as ASGI middleware, before the request body is parsed,
so an unauthenticated request learns nothing (not even that its JSON is
malformed). Gateway tokens open only the config feed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_GATEWAY_TOKENS, NS_SETTINGS, AmsState, now_iso
from tandem.config.tokenfile import admin_token_path
from tandem.config.write import write_bytes_atomic
from tandem.errors import StoreError
from tandem.store import Op

if TYPE_CHECKING:
    from tandem.server.client_service import ServiceHost

log = logging.getLogger("tandem.ams.auth")

ADMIN_TOKEN_KEY = "admin_token"
ENV_ADMIN_TOKEN = "TANDEM_ADMIN_TOKEN"
FEED_PATH = "/api/v1/gateway/config"
PUBLIC_PATHS = frozenset({"/api/v1/health"})

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def server_token_path(server: ServiceHost) -> Path:
    location = str(server.db_location)
    return admin_token_path(location, Path(server.profile.folder))


def write_secret_file(path: Path, text: str) -> None:
    """Atomically write `text` to `path`, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"), mode=0o600)


def ensure_admin_token(state: AmsState) -> None:
    """Create the admin token if this store has none; idempotent and cheap after the first call."""
    store = state.store()
    if state.bootstrapped == id(store):
        return
    with state.lock:
        record = store.get(NS_SETTINGS, ADMIN_TOKEN_KEY)
        path = server_token_path(state.server)
        env_token = os.environ.get(ENV_ADMIN_TOKEN) or None
        if record is None:
            token = env_token or secrets.token_urlsafe(32)
            write_secret_file(path, token)
            state.commit([Op(NS_SETTINGS, ADMIN_TOKEN_KEY, {"sha256": sha256_hex(token), "created_at": now_iso()})])
            source = ENV_ADMIN_TOKEN if env_token else "random"
            log.info("admin token created (%s); the clear token is in %s", source, path)
        elif env_token is not None and not hmac.compare_digest(sha256_hex(env_token), record["sha256"]):
            log.warning("%s is set but differs from this store's admin token; the store's token stays",
                        ENV_ADMIN_TOKEN)
        elif env_token is not None and not path.exists():
            # e.g. the passive half of a pair took over: its disk never had the file
            write_secret_file(path, env_token)
            log.info("admin token file restored from %s at %s", ENV_ADMIN_TOKEN, path)
        state.bootstrapped = id(store)


def authenticate(state: AmsState, token: str) -> str | None:
    """'admin', 'gateway:<name>' or None."""
    ensure_admin_token(state)
    store = state.store()
    digest = sha256_hex(token)
    record = store.get(NS_SETTINGS, ADMIN_TOKEN_KEY)
    if record is not None and hmac.compare_digest(str(record.get("sha256", "")), digest):
        return "admin"
    gateway = store.get(NS_GATEWAY_TOKENS, digest)
    if gateway is not None:
        return f"gateway:{gateway.get('name', '')!s}"
    return None


def bearer_token(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, state: AmsState, on_request: Callable[[], None]) -> None:
        self.app, self.state, self.on_request = app, state, on_request

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        self.on_request()
        token = bearer_token(scope)
        principal: str | None = None
        try:
            if self.state.bootstrapped != id(self.state.server.store):
                await anyio.to_thread.run_sync(ensure_admin_token, self.state)
            if path in PUBLIC_PATHS:
                pass
            elif token is None:
                raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                               headers={"WWW-Authenticate": "Bearer"})
            else:
                principal = await anyio.to_thread.run_sync(authenticate, self.state, token)
                if principal is None:
                    raise ApiError(401, "unauthorized", "invalid token", headers={"WWW-Authenticate": "Bearer"})
                if principal != "admin" and path != FEED_PATH:
                    raise ApiError(403, "forbidden", "a gateway token opens only the config feed")
        except ApiError as exc:
            await _send_json(send, exc.status, exc.body(), exc.headers)
            return
        except StoreError as exc:  # e.g. the store closed under us while the server stops serving
            await _send_json(send, 503, {"code": "store_error", "message": f"the store failed: {exc}"}, {})
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _send_json(send: Callable[[Any], Awaitable[None]], status: int, body: dict[str, Any],
                     headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
