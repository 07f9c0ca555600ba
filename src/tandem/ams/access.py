"""Who may call which admin-API route: roles, principals and the route declarations.

Every route of the admin API declares the least role it needs, and for a
write the action name its audit entries carry, with `needs(...)` as its
`openapi_extra` (so `/openapi.json` shows it as `x-tandem-role` and
`x-tandem-action`). `check_routes(app)` refuses to build an app with a route
that declares nothing, so a new route cannot be forgotten; the one check that
uses the declarations is `AuthMiddleware` (`tandem.ams.auth`), before the
request body is read.

Roles (SPEC section 4), each including the ones below it:

- `viewer` reads everything that holds no secret;
- `operator` also deploys and undeploys, manages consumers, their keys and
  queued messages, and reads what holds secrets (the export);
- `admin` may do everything (projects, imports, users, tokens, gateway tokens).

`public` routes need no token (`/api/v1/health`); `gateway` routes (the config
feed and the gateways' reports) open to gateway tokens and admins. A gateway
write route (`POST /gateway/report`) declares no audit action: a report is a
gateway's telemetry, kept in memory, not a change to the configuration.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match

ROLE_KEY = "x-tandem-role"
ACTION_KEY = "x-tandem-action"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
USER_ROLES = tuple(r.value for r in Role)


class Need(enum.StrEnum):
    """What a route declares it needs: a role, no token at all, or a gateway token (or admin)."""

    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    GATEWAY = "gateway"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user (with a role) or a gateway (no role: the feed only)."""

    actor: str            # user name, or "gateway:<token name>"
    token_id: str         # which of its tokens ("bootstrap" for the first admin token)
    role: Role | None     # None for a gateway

    @property
    def is_gateway(self) -> bool:
        return self.role is None


@dataclass(frozen=True)
class Access:
    need: Need
    action: str | None    # the audit action of a write route, None for a read


def needs(need: Need | str, action: str | None = None, **extra: Any) -> dict[str, Any]:
    """The `openapi_extra` of a route: the least role it needs and, for a write, its audit action."""
    out: dict[str, Any] = {**extra, ROLE_KEY: Need(need).value}
    if action is not None:
        out[ACTION_KEY] = action
    return out


def route_access(route: APIRoute) -> Access | None:
    extra = route.openapi_extra or {}
    if ROLE_KEY not in extra:
        return None
    return Access(Need(extra[ROLE_KEY]), extra.get(ACTION_KEY))


# Writes under these paths are admin's alone (SPEC section 4: users, tokens, certificates); a route
# added there that declares less fails check_routes, so the rule holds for routes not written yet.
ADMIN_WRITES = ("/api/v1/users", "/api/v1/certificates")


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Raise if an /api route declares no role, a write route no audit action, or a write under
    `ADMIN_WRITES` less than admin."""
    missing: list[str] = []
    for route in routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/"):
            continue
        access = route_access(route)
        methods = set(route.methods or ())
        label = f"{','.join(sorted(methods))} {route.path}"
        if access is None:
            missing.append(f"{label}: no role declared (openapi_extra=needs(...))")
        elif methods & WRITE_METHODS and access.need not in (Need.PUBLIC, Need.GATEWAY) and access.action is None:
            missing.append(f"{label}: a write route without an audit action")
        elif (methods & WRITE_METHODS and route.path.startswith(ADMIN_WRITES)
              and access.need is not Need.ADMIN):
            missing.append(f"{label}: a write under {route.path.split('/')[3]} needs admin, declares {access.need.value}")
    if missing:
        raise RuntimeError("admin API routes without an access declaration: " + "; ".join(missing))


def match_route(routes: Iterable[BaseRoute], scope: dict[str, Any]) -> APIRoute | None:
    """The route that will serve `scope` (None: 404 or 405 follows)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route if isinstance(route, APIRoute) else None
    return None


def refusal(principal: Principal, need: Need) -> str | None:
    """Why `principal` may not call a route that needs `need`; None when it may."""
    if need is Need.PUBLIC:
        return None
    if principal.role is None:
        return None if need is Need.GATEWAY else "a gateway token opens only the config feed and the gateway report"
    needed = Role(needed_role(need))
    if principal.role.allows(needed):
        return None
    return f"this needs the {needed.value} role; {principal.actor!r} has {principal.role.value}"


def needed_role(need: Need) -> str:
    """The user role a route's need asks for (a gateway route: admin, for users)."""
    return Role.ADMIN.value if need is Need.GATEWAY else need.value
