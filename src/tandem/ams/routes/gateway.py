"""The config feed an AGS long-polls, the reports every AGS half posts, the gateway registry, the
gateways' traffic, and gateway tokens."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse

from tandem.ams.access import Need, needs
from tandem.ams.api_errors import NOT_FOUND
from tandem.ams.app_state import NS_CONSUMERS, now_iso
from tandem.ams.models import NAME_PATTERN
from tandem.ams.routes import services
from tandem.ams.schemas import (
    ConfigDocument,
    Gateway,
    GatewayReport,
    GatewayToken,
    GatewayTokenRequest,
    IssuedGatewayToken,
    ReportAnswer,
    Traffic,
)
from tandem.ams.services import Services
from tandem.ams.services.environments import channel, get_env, redrive_counters
from tandem.ams.services.reports import INTERVAL, WINDOW
from tandem.model.document import build_document

router = APIRouter(prefix="/api/v1", tags=["gateways"], responses=NOT_FOUND)
Svc = Annotated[Services, Depends(services)]
MAX_WAIT = 30.0
SLICE = 0.5  # a held poll re-checks that this server still serves this often


def _document(svc: Services, env: str) -> dict[str, Any]:
    with svc.state.lock:  # writers hold it: revision, projects and consumers from one moment
        store = svc.state.store()
        record = get_env(store, env)
        consumers = [v for _, v in store.scan(NS_CONSUMERS)]
    return build_document(env, int(record["revision"]), record["projects"], consumers, now_iso(),
                          redrive=redrive_counters(record))


def _revision(svc: Services, env: str) -> int:
    return int(get_env(svc.state.store(), env)["revision"])


@router.get("/gateway/config", response_model=ConfigDocument, openapi_extra=needs(Need.GATEWAY),
            responses={304: {"description": "the revision did not change within `wait` seconds"}})
async def gateway_config(
    svc: Svc,
    environment: Annotated[str, Query(pattern=NAME_PATTERN, max_length=64)] = "default",
    revision: Annotated[int, Query(ge=0, description="the revision the gateway has; 0 for none")] = 0,
    wait: Annotated[float, Query(ge=0, le=3600, description="seconds to hold the poll (at most 30)")] = MAX_WAIT,
    gateway: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64)] = None,
    pair: Annotated[str | None, Query(max_length=128)] = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
    applied: Annotated[int | None, Query(ge=0)] = None,
    queued: Annotated[int | None, Query(ge=0, description="messages waiting or in delivery on the gateway")] = None,
    dead: Annotated[int | None, Query(ge=0, description="dead messages on the gateway")] = None,
) -> Response:
    """Long poll (docs/config-feed.md): 200 with the whole document as soon as the environment's
    revision differs from `revision`, else 304 after `wait` seconds. Registers the gateway."""
    if gateway is not None:
        await anyio.to_thread.run_sync(svc.registry.register, environment, gateway, pair, state, applied,
                                       queued, dead)
        svc.state.poll_started(environment, gateway)
    deadline = time.monotonic() + min(wait, MAX_WAIT)
    try:
        with svc.state.hub.subscribe([channel(environment)]) as sub:
            while True:
                current = await anyio.to_thread.run_sync(_revision, svc, environment)
                if current != revision:
                    doc = await anyio.to_thread.run_sync(_document, svc, environment)
                    return JSONResponse(doc)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not svc.state.serving():
                    return Response(status_code=304)
                await sub.wait(min(remaining, SLICE))
    finally:
        if gateway is not None:
            svc.state.poll_ended(environment, gateway)


@router.post("/gateway/report", response_model=ReportAnswer, openapi_extra=needs(Need.GATEWAY))
async def gateway_report(body: GatewayReport, svc: Svc) -> Any:
    """One AGS half's HA status and traffic, about every second (docs/config-feed.md "Reports"). Kept in
    memory only (live telemetry, not a change: no store write, no audit entry). Answers `known`."""
    return {"known": svc.reports.receive(body.model_dump())}


@router.get("/traffic", response_model=Traffic, openapi_extra=needs(Need.VIEWER))
def traffic(
    svc: Svc,
    minutes: Annotated[int, Query(ge=1, le=WINDOW // 60, description="how far back, in minutes")] = 5,
    project: Annotated[str | None, Query(max_length=64, description="only this project")] = None,
    environment: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64)] = None,
) -> Any:
    """Traffic per project over the last `minutes`, summed over every gateway that reported it: 10 s
    steps (oldest first, zero-filled, the current partial step last) and totals; most requests first."""
    return {"interval": INTERVAL, "minutes": minutes,
            "projects": svc.reports.traffic(minutes, project=project, environment=environment)}


@router.get("/gateways", response_model=list[Gateway], openapi_extra=needs(Need.VIEWER))
def list_gateways(svc: Svc) -> Any:
    """Every AGS that pulls configuration or reports: pair, HA state, applied revision, last seen, the
    queued and dead messages it last reported (refreshed in the registry at least every 10 s of polling),
    and the HA status of its last report (`ha`, null when stale)."""
    return svc.registry.listing()


@router.post("/gateway-tokens", status_code=201, response_model=IssuedGatewayToken,
             openapi_extra=needs(Need.ADMIN, "gateway_token.issue"))
def issue_gateway_token(body: GatewayTokenRequest, svc: Svc) -> Any:
    """A token for an AGS (its profile's `[gateway] Token`); shown once, opens only the config feed."""
    return svc.tokens.issue(body.name)


@router.get("/gateway-tokens", response_model=list[GatewayToken], openapi_extra=needs(Need.VIEWER))
def list_gateway_tokens(svc: Svc) -> Any:
    return svc.tokens.list()


@router.delete("/gateway-tokens/{token_id}", status_code=204, openapi_extra=needs(Need.ADMIN, "gateway_token.revoke"))
def revoke_gateway_token(token_id: Annotated[str, Path(max_length=64)], svc: Svc) -> Response:
    svc.tokens.revoke(token_id)
    return Response(status_code=204)

