"""The AMS admin API application.

`create_app(server)` is called once per server process; the app is served
whenever the server is active. It reads `server.store` per request, because
the server opens, closes and may swap its store across failovers. Everything
lazy is idempotent: the admin-token bootstrap and the deployment worker run
on the first request, or earlier when the admin service calls
`bootstrap(app.state.services)` on activation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.security import HTTPBearer

from tandem.ams import api_errors as errors
from tandem.ams import console
from tandem.ams.access import Need, check_routes, needs
from tandem.ams.app_state import AmsState
from tandem.ams.auth import AuthMiddleware, ensure_admin_token
from tandem.ams.limits import AdminLimits, AdminStats, BodyLimits
from tandem.ams.routes import config, consumers, gateway, projects, session, users
from tandem.ams.services import Services
from tandem.ams.worker import ensure_worker

if TYPE_CHECKING:
    from tandem.server.client_service import ServiceHost

DESCRIPTION = """Admin API of a Tandem API Management Server.

Every `/api/v1` endpoint but `/api/v1/health` needs `Authorization: Bearer <token>`:
a user's token (the first admin token is created at the first start, in
`<store>/admin.token`) or, for `/api/v1/gateway/config` only, a gateway token.
Each operation names the least role it needs (`x-tandem-role`: viewer, operator,
admin); beyond it a request gets 403 `forbidden` naming the role. Every write,
accepted or refused, leaves an entry in `/api/v1/audit`. Errors are JSON
`{"code", "message", "field"?, "detail"?}`; invalid input is a 422 naming the field,
malformed JSON a 400."""

bearer = HTTPBearer(auto_error=False, description="the admin token, or a gateway token for the feed")


def create_app(server: ServiceHost) -> FastAPI:
    limits = AdminLimits.from_profile(server.profile)
    svc = Services(AmsState(server), limits.audit_retention_days)
    # the middleware authenticates; this dependency only documents the scheme in /openapi.json
    secured = [Depends(bearer)]
    app = FastAPI(title="Tandem AMS admin API", version="1", description=DESCRIPTION,
                  responses=errors.ERROR_RESPONSES)
    app.state.services = svc
    errors.install(app)
    public = APIRouter(tags=["health"])

    @public.get("/api/v1/health", openapi_extra=needs(Need.PUBLIC))
    def health(response: Response) -> dict[str, Any]:
        """Unauthenticated: is this AMS serving (load balancers prefer the HA port's /ha/active).
        Readable cross-origin: the console of the peer AMS asks it to find the new active."""
        response.headers["Access-Control-Allow-Origin"] = "*"
        return {"status": "ok", "server": server.profile.server.Name}

    app.include_router(public)
    routers = (projects.router, consumers.router, gateway.router, config.router, users.router, session.router)
    for router in routers:
        app.include_router(router, dependencies=secured)
    # the routes as their routers declare them (the app's own list nests included routers)
    declared = [route for router in (public, *routers) for route in router.routes]

    console.mount(app)
    check_routes(declared)  # every route declares its role: nothing is open by omission
    app.state.admin_limits, app.state.admin_stats = limits, AdminStats()
    # the last added runs first: a declared length past the limit is refused before anything else;
    # the body is read (counted, depth-checked) only once the request is authenticated
    app.add_middleware(BodyLimits, limits=limits, stats=app.state.admin_stats)
    app.add_middleware(AuthMiddleware, state=svc.state, on_request=lambda: ensure_worker(svc),
                       routes=declared)
    app.add_middleware(BodyLimits, limits=limits, stats=app.state.admin_stats, declared_only=True)
    return app


def bootstrap(svc: Services) -> None:
    """Call on activation (store open, before the client port opens) with the app's
    `app.state.services`: create the admin token if the store has none and start the
    deployment worker, so a deployment the previous active left pending resumes without
    waiting for a request. Idempotent; call from the event loop."""
    ensure_admin_token(svc.state)
    ensure_worker(svc)
