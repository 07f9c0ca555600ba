"""/api/v1/consumers and their API keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from tandem.ams.access import Need, needs
from tandem.ams.api_errors import CONFLICT, NOT_FOUND
from tandem.ams.models import NAME_PATTERN, ConsumerIn, ConsumerOut, ConsumerUpdate, IssuedKey
from tandem.ams.routes import services
from tandem.ams.services import Services

router = APIRouter(prefix="/api/v1", tags=["consumers"], responses={**NOT_FOUND, **CONFLICT})
Svc = Annotated[Services, Depends(services)]
ConsumerName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]


@router.get("/consumers", response_model=list[ConsumerOut], openapi_extra=needs(Need.VIEWER))
def list_consumers(svc: Svc) -> Any:
    return svc.consumers.list()


@router.post("/consumers", status_code=201, response_model=ConsumerOut,
             openapi_extra=needs(Need.OPERATOR, "consumer.create"))
def create_consumer(consumer: ConsumerIn, svc: Svc) -> Any:
    return svc.consumers.create(consumer)


@router.get("/consumers/{name}", response_model=ConsumerOut, openapi_extra=needs(Need.VIEWER))
def get_consumer(name: ConsumerName, svc: Svc) -> Any:
    return svc.consumers.get(name)


@router.put("/consumers/{name}", response_model=ConsumerOut, openapi_extra=needs(Need.OPERATOR, "consumer.replace"))
def replace_consumer(name: ConsumerName, update: ConsumerUpdate, svc: Svc) -> Any:
    """Replace description and credentials; API keys are kept."""
    return svc.consumers.replace(name, update)


@router.delete("/consumers/{name}", status_code=204, openapi_extra=needs(Need.OPERATOR, "consumer.delete"))
def delete_consumer(name: ConsumerName, svc: Svc) -> Response:
    svc.consumers.delete(name)
    return Response(status_code=204)


@router.post("/consumers/{name}/keys", status_code=201, response_model=IssuedKey,
             openapi_extra=needs(Need.OPERATOR, "key.issue"))
def issue_key(name: ConsumerName, svc: Svc) -> Any:
    """Issue an API key. The clear key is in this response only; the AMS keeps its sha256."""
    return svc.consumers.issue_key(name)


@router.delete("/consumers/{name}/keys/{key_id}", status_code=204, openapi_extra=needs(Need.OPERATOR, "key.revoke"))
def revoke_key(name: ConsumerName, key_id: Annotated[str, Path(max_length=64)], svc: Svc) -> Response:
    svc.consumers.revoke_key(name, key_id)
    return Response(status_code=204)
