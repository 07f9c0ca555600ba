"""/api/v1/export, /api/v1/import and /api/v1/import/openapi."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request

from tandem.ams.access import Need, needs
from tandem.ams.api_errors import CONFLICT
from tandem.ams.export import ExportDocument, export_document, import_document
from tandem.ams.models import NAME_PATTERN, Project
from tandem.ams.openapi_import import parse_document, project_from_openapi
from tandem.ams.routes import services
from tandem.ams.schemas import ImportResult
from tandem.ams.services import Services

router = APIRouter(prefix="/api/v1", tags=["configuration"], responses=CONFLICT)
Svc = Annotated[Services, Depends(services)]

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "an OpenAPI 3 document, JSON or YAML",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "object"}},
        },
    }
}


@router.get("/export", response_model=ExportDocument, response_model_exclude_unset=True,
            openapi_extra=needs(Need.OPERATOR))
def export_configuration(
    svc: Svc,
    audit: Annotated[bool, Query(description="also the audit trail (oldest first)")] = False,
) -> Any:
    """The whole configuration as one declarative document (sorted; no timestamps of activity).
    Operator or admin: it holds credential hashes and JWT secrets."""
    return export_document(svc.state, audit)


@router.post("/import", response_model=ImportResult, openapi_extra=needs(Need.ADMIN, "config.import"))
def import_configuration(
    doc: ExportDocument,
    svc: Svc,
    prune: Annotated[bool, Query(description="also delete what the document leaves out (never a "
                                             "deployed project)")] = False,
) -> Any:
    """Make the configuration equal to the document, in one change, or change nothing.

    `format` and `version` are required. A document that would remove a deployed project is a 409
    (undeploy it first); one that would delete anything else is a 409 unless `?prune=true`."""
    return import_document(svc.state, doc, prune)


@router.post("/import/openapi", status_code=201, response_model=Project,
             openapi_extra=needs(Need.ADMIN, "project.import_openapi", **OPENAPI_BODY))
async def import_openapi(
    request: Request,
    svc: Svc,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=64)] = None,
    context_path: Annotated[str | None, Query(max_length=512)] = None,
    target: Annotated[str | None, Query(max_length=2048)] = None,
) -> Any:
    """Create a project from an OpenAPI 3 document: one resource per path and operation."""
    limit = request.app.state.admin_limits.max_json_depth
    # YAML is parsed in pure Python: never on the event loop (it runs the HA work)
    doc = await anyio.to_thread.run_sync(parse_document, await request.body(), limit)
    project = Project.model_validate(project_from_openapi(doc, name, context_path, target))
    return await anyio.to_thread.run_sync(svc.projects.create, project)
