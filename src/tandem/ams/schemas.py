"""Request and response bodies of the admin API that are not domain documents."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.ams.models import NAME_PATTERN, Name, Project, Strict
from tandem.ams.services.reports import LATENCY_COUNTS


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
    ha: dict[str, Any] | None = Field(None, description="the HA status of the gateway's last report (POST "
                                                        "/gateway/report), null when none came in the last 10 s")
    reported_at: str | None = Field(None, description="when its last report came (null: never, or not since "
                                                      "this AMS became active)")


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


# ---- gateway reports (POST /gateway/report, GET /traffic: tandem.ams.services.reports) ----

ReportProjectName = Annotated[str, Field(pattern=rf"{NAME_PATTERN}|^_no_route$",
                                         description="a project name, or `_no_route` (requests no project matched)")]
ErrorCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Count = Annotated[int, Field(ge=0, le=10**15)]
Text = Annotated[str, Field(max_length=256)]


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer gateway may say more: what the AMS knows is checked


class ReportLock(_Report):
    held: bool | None = None
    path: str | None = Field(None, max_length=4096)
    holder: Text | None = None
    verified_ms_ago: float | None = None
    in_sync: bool | None = None


class ReportPeer(_Report):
    state: Text | None = None
    address: Text | None = None
    client_address: Text | None = None
    epoch: int | None = None
    lag: float | None = None
    replicated_lsn: int | None = None


class ReportChange(_Report):
    """One HA state change of the gateway's server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)
    at: Text
    from_: Text = Field(alias="from")
    to: Text
    epoch: int | None = None
    reason: str = Field("", max_length=2048)


class ReportHA(_Report):
    """The gateway server's `/ha/status`, as much of it as the console shows."""

    server: Text | None = None
    role: Text | None = None
    type: Text | None = None
    mode: Text | None = None
    state: Text | None = None
    epoch: int | None = None
    lsn: int | None = None
    serving: bool | None = None
    since: Text | None = None
    reason: str | None = Field(None, max_length=2048)
    waiting_reason: str | None = Field(None, max_length=2048)
    isolated: bool | None = None
    lock: ReportLock | None = None
    peer: ReportPeer | None = None
    history: list[ReportChange] = Field(default_factory=list, max_length=200)
    client_url: str | None = Field(None, max_length=2048)


class ReportProjectTraffic(_Report):
    requests: Count
    classes: dict[Literal["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"], Count] = Field(default_factory=dict)
    errors: dict[ErrorCode, Count] = Field(default_factory=dict, max_length=100,
                                           description="the gateway's own error answers, by JSON `code`")
    latency: list[Count] = Field(min_length=LATENCY_COUNTS, max_length=LATENCY_COUNTS,
                                 description="requests per latency bucket (tandem.ags.metrics.BUCKETS, then above)")


class ReportBucket(_Report):
    start: int = Field(ge=0, multiple_of=10, description="unix seconds, a multiple of 10")
    projects: dict[ReportProjectName, ReportProjectTraffic] = Field(default_factory=dict, max_length=2000)


class ReportTraffic(_Report):
    interval: Literal[10] = 10
    buckets: list[ReportBucket] = Field(default_factory=list, max_length=40,
                                        description="complete buckets newer than the last `known`, oldest "
                                                    "first, then the partial current one (the newest)")


class GatewayReport(_Report):
    """`POST /api/v1/gateway/report`: one AGS half's HA status and traffic (docs/config-feed.md "Reports")."""

    environment: Name
    gateway: Name
    pair: str | None = Field(None, max_length=128)
    ha: ReportHA
    applied: int | None = Field(None, ge=0)
    traffic: ReportTraffic = Field(default_factory=ReportTraffic)


class ReportAnswer(BaseModel):
    known: int = Field(description="start of the newest complete bucket the AMS holds for this gateway (0: "
                                   "none): the next report sends only newer ones, plus the partial one")


class TrafficStep(BaseModel):
    requests: int
    rps: float
    p50_ms: float | None = Field(description="null without requests; interpolated in the histogram bucket")
    p99_ms: float | None
    classes: dict[str, int]
    errors: dict[str, int]


class TrafficPoint(TrafficStep):
    start: int = Field(description="unix seconds; the last point is the current, partial 10 s")


class TrafficProject(BaseModel):
    project: str
    series: list[TrafficPoint]
    totals: TrafficStep


class Traffic(BaseModel):
    interval: int
    minutes: int
    projects: list[TrafficProject]
