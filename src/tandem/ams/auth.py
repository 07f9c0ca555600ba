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
malformed). Users and their roles: `tandem.ams.services.users`; which route
needs which role: `tandem.ams.access`. Gateway tokens open only the config feed.

A request without a bearer token may carry the console's session cookie
(`tandem.ams.services.sessions`): it acts as the session's token does now,
and a write through it needs the session's `X-CSRF-Token`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.routing import BaseRoute

from tandem.ams import audit
from tandem.ams.access import WRITE_METHODS, Need, Principal, match_route, needed_role, refusal, route_access
from tandem.ams.api_errors import ApiError
from tandem.ams.app_state import NS_GATEWAY_TOKENS, NS_SETTINGS, AmsState, now_iso
from tandem.ams.services.sessions import COOKIE as SESSION_COOKIE
from tandem.ams.services.sessions import CSRF_HEADER, SessionService, csrf_ok
from tandem.ams.services.users import ADMIN_TOKEN_KEY, UserService, sha256_hex
from tandem.config.tokenfile import admin_token_path
from tandem.config.write import write_bytes_atomic
from tandem.errors import StoreError
from tandem.store import Op

if TYPE_CHECKING:
    from tandem.server.client_service import ServiceHost

log = logging.getLogger("tandem.ams.auth")

ENV_ADMIN_TOKEN = "TANDEM_ADMIN_TOKEN"
CSRF_HEADER_B = CSRF_HEADER.encode()

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


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


def authenticate(state: AmsState, token: str) -> Principal | None:
    """The user or gateway `token` belongs to; None for an unknown token; 401 ApiError when expired."""
    ensure_admin_token(state)
    store = state.store()
    digest = sha256_hex(token)
    user = UserService(state).principal(digest)
    if user is not None:
        return user
    gateway = store.get(NS_GATEWAY_TOKENS, digest)
    if gateway is not None:
        return Principal(f"gateway:{gateway.get('name', '')!s}", str(gateway.get("id", "")), None)
    return None


def _header(scope: dict[str, Any], wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


def session_cookie(scope: dict[str, Any]) -> str | None:
    """The console session id from the `tandem_session` cookie, if the request has one."""
    value = _header(scope, b"cookie")
    if value is None:
        return None
    for part in value.split(";"):
        name, _, sid = part.strip().partition("=")
        if name == SESSION_COOKIE and sid:
            return sid
    return None


def bearer_token(scope: dict[str, Any]) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AuthMiddleware:
    """Authentication, the role check of every route, the request id and the audit context.

    Runs before the request body is read: an unauthenticated request learns nothing (not even that
    its JSON is malformed) and a request beyond its role is refused (403 `forbidden` naming the role)
    before any handler runs. A write it lets through runs inside an `audit.AuditContext`; a write it
    refuses for its role gets its audit entry here. Every /api response carries `X-Request-Id`."""

    def __init__(self, app: ASGIApp, state: AmsState, on_request: Callable[[], None],
                 routes: Sequence[BaseRoute]) -> None:
        self.app, self.state, self.on_request, self.routes = app, state, on_request, routes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        self.on_request()
        request_id = audit.new_request_id(_header(scope, b"x-request-id"))
        send = _with_request_id(send, request_id)
        route = match_route(self.routes, scope)
        access = route_access(route) if route is not None else None
        need = access.need if access is not None else Need.VIEWER
        token = bearer_token(scope)
        session = session_cookie(scope) if token is None else None
        principal: Principal | None = None
        try:
            if self.state.bootstrapped != id(self.state.server.store):
                await anyio.to_thread.run_sync(ensure_admin_token, self.state)
            if need is Need.PUBLIC:
                pass
            elif session is not None:
                principal = await anyio.to_thread.run_sync(SessionService(self.state).principal, session)
                if principal is None:
                    raise ApiError(401, "unauthorized", "the console session ended: sign in again")
                if scope.get("method") in WRITE_METHODS and not csrf_ok(session, _header(scope, CSRF_HEADER_B)):
                    raise ApiError(403, "csrf_failed", "a write through the console session needs its "
                                                       "X-CSRF-Token header (GET /api/v1/session)")
                scope.setdefault("state", {})["session"] = session
            elif token is None:
                raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                               headers={"WWW-Authenticate": "Bearer"})
            else:
                principal = await anyio.to_thread.run_sync(authenticate, self.state, token)
                if principal is None:
                    raise ApiError(401, "unauthorized", "invalid token", headers={"WWW-Authenticate": "Bearer"})
        except ApiError as exc:
            await _send_json(send, exc.status, exc.body(), exc.headers)
            return
        except StoreError as exc:  # e.g. the store closed under us while the server stops serving
            await _send_json(send, 503, {"code": "store_error", "message": f"the store failed: {exc}"}, {})
            return
        scope.setdefault("state", {})["principal"] = principal
        scope["state"]["request_id"] = request_id
        ctx = None
        if principal is not None and access is not None and access.action is not None \
                and scope.get("method") in WRITE_METHODS:
            ctx = audit.AuditContext(principal.actor, principal.token_id, access.action,
                                     audit.redact(path), request_id)
        why = refusal(principal, need) if principal is not None else None
        if why is not None:
            role = needed_role(need)
            if ctx is not None:
                await self._record(ctx, "refused", http_status=403, error="forbidden", needs=role)
            await _send_json(send, 403, {"code": "forbidden", "message": why, "role": role}, {})
            return
        if ctx is None:
            await self.app(scope, receive, send)
            return
        marker = audit.begin(ctx)
        try:
            await self.app(scope, receive, self._auditing(ctx, send))
        finally:
            audit.end(marker)

    def _auditing(self, ctx: audit.AuditContext, send: Callable[[Any], Awaitable[None]]) -> Callable[
            [Any], Awaitable[None]]:
        """`send`, recording `ctx`'s entry before the response starts if the handler committed nothing."""
        held: list[Any] = []

        async def auditing_send(message: Any) -> None:
            if ctx.written:
                for m in held:
                    await send(m)
                held.clear()
                await send(message)
                return
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await self._record(ctx, "accepted")
                    await send(message)
                else:
                    held.append(message)  # wait for the body: it names the error code
                return
            if message["type"] == "http.response.body" and held:
                status = held[0]["status"]
                await self._record(ctx, "refused", http_status=status, error=_error_code(message))
                for m in held:
                    await send(m)
                held.clear()
            await send(message)

        return auditing_send

    async def _record(self, ctx: audit.AuditContext, status: str, **extra: object) -> None:
        try:
            await anyio.to_thread.run_sync(lambda: self.state.record(ctx, status, **extra))
        except (ApiError, StoreError) as exc:  # the answer still goes out; the store is failing anyway
            log.error("audit entry for %s %s (request %s) not written: %s", ctx.action, ctx.target,
                      ctx.request_id, exc)


def _error_code(message: Any) -> str | None:
    try:
        body = json.loads(bytes(message.get("body", b"")))
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return str(code)[:64] if isinstance(code, str) else None


def _with_request_id(send: Callable[[Any], Awaitable[None]], request_id: str) -> Callable[[Any], Awaitable[None]]:
    raw = (b"x-request-id", request_id.encode("ascii"))

    async def send_with_id(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), raw]}
        await send(message)

    return send_with_id


async def _send_json(send: Callable[[Any], Awaitable[None]], status: int, body: dict[str, Any],
                     headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
