"""Request and response bodies of the admin API that are not domain documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.ams.models import Name, Project, Strict


class EnvironmentRequest(Strict):
    environment: Name = "default"


class GatewayStatus(BaseModel):
    name: str
    pair: str | None
    state: str | None
    applied: int | None
    last_seen: str
    status: Literal["applied", "pending"]


class Deployment(BaseModel):
    id: str
    project: str
    environment: str
    action: Literal["deploy", "undeploy"]
    status: Literal["pending", "in_progress", "deployed", "failed"]
    revision: int | None
    error: str | None
    created_at: str
    updated_at: str
    gateways: list[GatewayStatus] = Field(default_factory=list)


class Redrive(BaseModel):
    """`POST /projects/{name}/messages/redrive`: accepted; the gateways act on it when they apply `revision`."""

    project: str
    environment: str
    redrive: int = Field(description="the project's redrive counter in the environment, after this request")
    revision: int = Field(description="the environment's new revision, which carries the counter to the gateways")


class Gateway(BaseModel):
    name: str
    environment: str
    pair: str | None
    state: str | None
    applied: int | None
    last_seen: str
    queued: int = Field(0, description="messages waiting or in delivery on that gateway, as it last reported")
    dead: int = Field(0, description="dead messages on that gateway, as it last reported")
    live: bool = Field(description="seen within the last 30 s, or in a long poll now")
    revision: int = Field(description="the environment's current revision")
    in_sync: bool


class GatewayTokenRequest(Strict):
    name: Name = Field(description="which gateway (or pair) uses it: letters, digits, '.', '_', '-'; at most 64")


class GatewayToken(BaseModel):
    id: str
    name: str
    created_at: str


class IssuedGatewayToken(GatewayToken):
    token: str = Field(description="the clear token: shown once, only its sha256 is stored")


class FeedProject(Project):
    """A deployed project as the feed carries it: the snapshot, plus its redrive counter if it has one."""

    redrive: int | None = Field(None, ge=1, description="the project's redrive counter in the environment "
                                                        "(absent until the first redrive): redrive the "
                                                        "project's dead messages when it grows")


class ConfigDocument(BaseModel):
    """The feed's 200 body (docs/config-feed.md)."""

    model_config = ConfigDict(extra="allow")
    environment: str
    revision: int
    generated_at: str
    projects: list[FeedProject]
    consumers: list[dict[str, Any]]
    digest: str


class ImportResult(BaseModel):
    projects: int
    consumers: int
    gateway_tokens: int
    environments: int
    lsn: int
