"""/api/v1/projects (with their deployments and message redrive) and /api/v1/deployments."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from tandem.ams.access import Need, needs
from tandem.ams.api_errors import CONFLICT, NOT_FOUND
from tandem.ams.models import NAME_PATTERN, Project
from tandem.ams.routes import services
from tandem.ams.schemas import Deployment, EnvironmentRequest, Redrive
from tandem.ams.services import Services

router = APIRouter(prefix="/api/v1", tags=["projects"], responses={**NOT_FOUND, **CONFLICT})
Svc = Annotated[Services, Depends(services)]
ProjectName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]
EnvBody = Annotated[EnvironmentRequest | None, Body(examples=[{"environment": "default"}])]


@router.get("/projects", response_model=list[Project], openapi_extra=needs(Need.VIEWER))
def list_projects(svc: Svc) -> Any:
    return svc.projects.list()


@router.post("/projects", status_code=201, response_model=Project, openapi_extra=needs(Need.ADMIN, "project.create"))
def create_project(project: Project, svc: Svc) -> Any:
    """Create an API project; 409 if the name exists, 422 naming the field for invalid input."""
    return svc.projects.create(project)


@router.get("/projects/{name}", response_model=Project, openapi_extra=needs(Need.VIEWER))
def get_project(name: ProjectName, svc: Svc) -> Any:
    return svc.projects.get(name)


@router.put("/projects/{name}", response_model=Project, openapi_extra=needs(Need.ADMIN, "project.replace"))
def replace_project(name: ProjectName, project: Project, svc: Svc) -> Any:
    """Replace a project (the body's name must be the path's). Gateways see it at the next deploy."""
    return svc.projects.replace(name, project)


@router.delete("/projects/{name}", status_code=204, openapi_extra=needs(Need.ADMIN, "project.delete"))
def delete_project(name: ProjectName, svc: Svc) -> Response:
    """Delete a project; 409 while it is deployed anywhere."""
    svc.projects.delete(name)
    return Response(status_code=204)


def _accepted(job: dict[str, Any], response: Response) -> dict[str, Any]:
    response.headers["Location"] = f"/api/v1/deployments/{job['id']}"
    return {k: v for k, v in job.items() if k != "snapshot"}


@router.post("/projects/{name}/deploy", status_code=202, response_model=Deployment, tags=["deployments"],
             openapi_extra=needs(Need.OPERATOR, "project.deploy"))
def deploy(name: ProjectName, response: Response, svc: Svc, body: EnvBody = None) -> Any:
    """Start deploying the project as it is now to an environment (default `default`)."""
    env = (body or EnvironmentRequest()).environment
    return _accepted(svc.deployments.start(name, env, "deploy"), response)


@router.post("/projects/{name}/undeploy", status_code=202, response_model=Deployment, tags=["deployments"],
             openapi_extra=needs(Need.OPERATOR, "project.undeploy"))
def undeploy(name: ProjectName, response: Response, svc: Svc, body: EnvBody = None) -> Any:
    """Start removing the project from an environment; 409 if it is not deployed there."""
    env = (body or EnvironmentRequest()).environment
    return _accepted(svc.deployments.start(name, env, "undeploy"), response)


@router.post("/projects/{name}/messages/redrive", status_code=202, response_model=Redrive, tags=["messages"],
             openapi_extra=needs(Need.OPERATOR, "messages.redrive"))
def redrive_messages(name: ProjectName, svc: Svc, body: EnvBody = None) -> Any:
    """Put the project's dead queued messages back in the queue on every gateway of an environment
    (default `default`): adds one to the project's redrive counter there and bumps the environment's
    revision; each gateway redrives when it applies the document. 409 `not_deployed` if the project
    is not deployed there. The counter survives a redeploy and is dropped by an undeploy."""
    env = (body or EnvironmentRequest()).environment
    return svc.messages.redrive(name, env)


@router.get("/deployments", response_model=list[Deployment], tags=["deployments"],
             openapi_extra=needs(Need.VIEWER))
def list_deployments(svc: Svc, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """The newest deployments first (without per-gateway detail)."""
    return svc.deployments.list(limit)


@router.get("/deployments/{deployment_id}", response_model=Deployment, tags=["deployments"],
             openapi_extra=needs(Need.VIEWER))
def get_deployment(deployment_id: Annotated[str, Path(max_length=64)], svc: Svc) -> Any:
    """`pending`, `in_progress`, `deployed` or `failed`, with each live gateway's status."""
    return svc.deployments.view(deployment_id)
