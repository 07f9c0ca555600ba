"""/api/v1/users, their tokens, /api/v1/whoami and the audit trail /api/v1/audit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from tandem.ams.access import Need, Principal, needs
from tandem.ams.api_errors import CONFLICT, NOT_FOUND
from tandem.ams.models import (
    NAME_PATTERN,
    AuditPage,
    CreatedUser,
    IssuedToken,
    TokenIn,
    UserIn,
    UserOut,
    UserUpdate,
    WhoAmI,
)
from tandem.ams.routes import services
from tandem.ams.services import Services
from tandem.ams.services.audit import check_time

router = APIRouter(prefix="/api/v1", tags=["users"], responses={**NOT_FOUND, **CONFLICT})
Svc = Annotated[Services, Depends(services)]
UserName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]


@router.get("/whoami", response_model=WhoAmI, openapi_extra=needs(Need.VIEWER))
def whoami(request: Request) -> Any:
    """The caller: user name (or gateway), role and the id of the token it used."""
    principal: Principal = request.scope["state"]["principal"]
    return {"actor": principal.actor, "role": principal.role, "token": principal.token_id}


@router.get("/users", response_model=list[UserOut], openapi_extra=needs(Need.VIEWER))
def list_users(svc: Svc) -> Any:
    """Every user with its role and tokens (ids, names, expiry, last use; never a token)."""
    return svc.users.list()


@router.post("/users", status_code=201, response_model=CreatedUser, openapi_extra=needs(Need.ADMIN, "user.create"))
def create_user(user: UserIn, svc: Svc) -> Any:
    """Create a user with a role; the response holds its first token, shown once."""
    return svc.users.create(user)


@router.get("/users/{name}", response_model=UserOut, openapi_extra=needs(Need.VIEWER))
def get_user(name: UserName, svc: Svc) -> Any:
    return svc.users.get(name)


@router.put("/users/{name}", response_model=UserOut, openapi_extra=needs(Need.ADMIN, "user.update"))
def update_user(name: UserName, update: UserUpdate, svc: Svc) -> Any:
    """Change a user's role and description (its tokens stay); 409 for the built-in `admin`."""
    return svc.users.update(name, update)


@router.delete("/users/{name}", status_code=204, openapi_extra=needs(Need.ADMIN, "user.delete"))
def delete_user(name: UserName, svc: Svc) -> Response:
    """Delete a user and revoke all its tokens; 409 for the built-in `admin`."""
    svc.users.delete(name)
    return Response(status_code=204)


@router.post("/users/{name}/tokens", status_code=201, response_model=IssuedToken,
             openapi_extra=needs(Need.ADMIN, "token.issue"))
def issue_token(name: UserName, svc: Svc, spec: TokenIn | None = None) -> Any:
    """Issue another token for a user (shown once; the old ones keep working until revoked)."""
    return svc.users.issue_token(name, spec or TokenIn())


@router.delete("/users/{name}/tokens/{token_id}", status_code=204, openapi_extra=needs(Need.ADMIN, "token.revoke"))
def revoke_token(name: UserName, token_id: Annotated[str, Path(max_length=64)], svc: Svc) -> Response:
    svc.users.revoke_token(name, token_id)
    return Response(status_code=204)


@router.get("/audit", response_model=AuditPage, tags=["audit"], openapi_extra=needs(Need.VIEWER))
def audit_trail(
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    since: Annotated[str | None, Query(max_length=64, description="ISO 8601 time: entries at or after it")] = None,
    before: Annotated[str | None, Query(max_length=64, description="an entry id (a page's `next_before`) "
                                                                   "or an ISO time: entries strictly older")] = None,
    actor: Annotated[str | None, Query(max_length=140)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    """The audit trail, newest first: one entry per admin-API write, accepted or refused."""
    return svc.audit.page(limit, check_time("since", since), check_time("before", before), actor, action)
