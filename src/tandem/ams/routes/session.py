"""/api/v1/session (console sign-in and sign-out) and /api/v1/ha (the pairs, and switchover)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from tandem.ams import audit
from tandem.ams.access import Need, Principal, needs
from tandem.ams.api_errors import ApiError
from tandem.ams.routes import services
from tandem.ams.services import Services
from tandem.ams.services.sessions import COOKIE, SESSION_SECONDS, SessionService, csrf_for

if TYPE_CHECKING:
    from tandem.server.client_service import ServiceHost

log = logging.getLogger("tandem.ams.console")
router = APIRouter(prefix="/api/v1", tags=["console"])
Svc = Annotated[Services, Depends(services)]


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=512, description="a user token (never stored, never logged)")


class SessionOut(BaseModel):
    actor: str
    role: Literal["viewer", "operator", "admin"] | None
    token: str = Field(description="the id of the token the session acts for")
    csrf: str | None = Field(description="send as X-CSRF-Token with every write through the session cookie")
    expires_at: str | None


class SwitchoverOut(BaseModel):
    requested: bool
    source: str
    message: str


def _cookie(request: Request, value: str, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"


@router.post("/session", response_model=SessionOut, openapi_extra=needs(Need.PUBLIC),
             responses={401: {"description": "an unknown, expired or gateway token"}})
async def sign_in(body: SignIn, request: Request, svc: Svc) -> Any:
    """Sign in to the console: exchanges a user token for the `tandem_session` cookie (HttpOnly,
    SameSite=Strict); the answer holds the CSRF token for the session's writes. Audited."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise ApiError(415, "unsupported_media_type", "send the token as application/json")
    sessions = SessionService(svc.state)

    def create() -> tuple[str, Principal, str]:
        return sessions.create(body.token)

    session_id, principal, expires = await anyio.to_thread.run_sync(create)
    ctx = audit.AuditContext(principal.actor, principal.token_id, "session.create", "/api/v1/session",
                             request.scope["state"]["request_id"])
    await anyio.to_thread.run_sync(lambda: svc.state.record(ctx, "accepted"))
    out = {"actor": principal.actor, "role": principal.role, "token": principal.token_id,
           "csrf": csrf_for(session_id), "expires_at": expires}
    return JSONResponse(out, headers={"Set-Cookie": _cookie(request, session_id, SESSION_SECONDS)})


@router.get("/session", response_model=SessionOut, openapi_extra=needs(Need.VIEWER))
def current_session(request: Request, svc: Svc) -> Any:
    """Who the session (or bearer token) acts for, and the session's CSRF token (null for a bearer)."""
    principal: Principal = request.scope["state"]["principal"]
    session = request.scope["state"].get("session")
    record = SessionService(svc.state).get(session) if session else None
    return {"actor": principal.actor, "role": principal.role, "token": principal.token_id,
            "csrf": csrf_for(session) if session else None,
            "expires_at": record["expires_at"] if record else None}


@router.delete("/session", status_code=204, openapi_extra=needs(Need.VIEWER, "session.delete"))
def sign_out(request: Request, svc: Svc) -> Response:
    """Sign out: the session ends on both halves of the pair (it is stored); the cookie is cleared."""
    session = request.scope["state"].get("session")
    if session is None:
        raise ApiError(400, "no_session", "this request has no console session to end (it used a bearer token)")
    SessionService(svc.state).delete(session)
    return Response(status_code=204, headers={"Set-Cookie": _cookie(request, "", 0)})


@router.get("/ha", openapi_extra=needs(Need.VIEWER))
async def ha_view(svc: Svc) -> Any:
    """Every HA pair this AMS knows: its own pair (both halves, the peer asked on its HA port) and
    the gateway pairs (from their reports), with the recent state changes and their reasons."""
    gateways = await anyio.to_thread.run_sync(svc.registry.listing)
    return await svc.ha_view.view(gateways)


@router.post("/ha/switchover", status_code=202, response_model=SwitchoverOut,
             openapi_extra=needs(Need.ADMIN, "ha.switchover"),
             responses={409: {"description": "the pair cannot hand over now (no passive in sync)"}})
async def switchover(request: Request, svc: Svc) -> Any:
    """Hand the AMS pair's active role to its in-sync passive, as `tandem ha switchover` does. The
    answer (202) goes out first; then this server asks its own HA port to hand over and steps down,
    and the console follows the new active. A refusal at that point is in the server's log and the
    HA view shows no change."""
    server = svc.state.server
    ha = server.profile.ha
    if ha.Type == "none":
        raise ApiError(409, "no_pair", "this AMS is standalone: there is no passive to hand over to")
    status = server.ha_status()
    peer_state = (status.get("peer") or {}).get("state")
    if ha.Type == "replicated" and peer_state != "Passive":
        raise ApiError(409, "peer_not_ready", f"the peer is {peer_state or 'unknown'}, not an in-sync Passive: "
                                              "a switchover now could lose writes")
    ctx = audit.current()
    actor = ctx.actor if ctx is not None else "?"
    return JSONResponse({"requested": True, "source": str(status.get("server")),
                         "message": "handing over to the peer: this server steps down"},
                        status_code=202, background=BackgroundTask(_hand_over, server, actor))


def _hand_over(server: ServiceHost, actor: str) -> None:
    """Detached from the request: the step-down drains this server's requests, this one included."""
    asyncio.get_running_loop().create_task(_ask_ha_port(server, actor))


async def _ask_ha_port(server: ServiceHost, actor: str) -> None:
    refused = await server.switchover(f"console:{actor}")
    if refused is not None:
        log.warning("console switchover by %s refused: %s", actor, refused)
    else:
        log.info("console switchover by %s: handed over", actor)
