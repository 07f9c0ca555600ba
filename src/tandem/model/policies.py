"""The policy schema: one strict pydantic model per policy `type`, shared by the AMS and the gateway.

A project's `policies` is a list of `{"type": ..., ...}` objects. The AMS
validates them with these models before anything is stored (a bad one is a
422 naming `policies[i].<field>`); the gateway validates each policy of a
configuration with the same models when it applies it, and builds its steps
from the validated model (its typed attributes, the model's defaults), so
both sides agree on every parameter. `Policy` is the discriminated union,
`parse_policy(dict)` validates one, `POLICY_TYPES` lists the known types,
`POLICY_MODELS_BY_TYPE` maps a type to its model. Every model forbids
unknown keys and coerces nothing (`strict`). Durations are in seconds
unless the name says otherwise.

Checks that need more than one field of a policy raise `FieldError` naming
the field to blame, so a 422 says `policies[0].redis_url`, not `policies[0]`
(and `describe_errors` names it in the gateway's refusal). Checks across
policies of a project (a `by = "consumer"` limit needs an auth policy) live
in `tandem.ams.models.Project`.

This module imports neither side (`tandem.ams`, `tandem.ags`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"  # an RFC 9110 token
HTTP_METHOD = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
_HEADER_RE = re.compile(HEADER_NAME)

HeaderName = Annotated[str, Field(pattern=HEADER_NAME)]
HeaderValue = Annotated[str, Field(max_length=4096, pattern=r"^[^\r\n\x00]*$")]
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
AUTH_TYPES = frozenset({"api-key", "basic-auth", "jwt"})  # a by-consumer limit needs one of these
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"]
JWT_ALGORITHMS: tuple[str, ...] = get_args(JwtAlgorithm)
QuotaPeriod = Literal["minute", "hour", "day", "week", "month"]
QUOTA_PERIODS: tuple[str, ...] = get_args(QuotaPeriod)
# list defaults, named because the gateway also serves an empty list (which the model accepts) as them
CORS_DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
RETRY_DEFAULT_STATUS = (502, 503, 504)
RETRY_DEFAULT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")


class FieldError(ValueError):
    """A model-level check that blames one field: the app's error formatter appends
    `path` to the location pydantic reports, so the response names the field."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path


def _check_url(v: str, schemes: tuple[str, ...]) -> str:
    """An absolute URL of one of `schemes` with a host (and a valid port, no whitespace)."""
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if parts.scheme not in schemes:
        raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("port must be 1-65535")
    if any(c.isspace() for c in v):
        raise ValueError("must not contain whitespace")
    return v


def _check_cidrs(v: list[str]) -> list[str]:
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
    return v


class PolicyModel(BaseModel):
    """The base of every policy model: strict, no unknown keys, immutable once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ApiKeyPolicy(PolicyModel):
    """Require a consumer's API key, from a header or (if set) a query parameter."""

    type: Literal["api-key"]
    header: HeaderName = "X-API-Key"
    query_param: str | None = Field(default=None, min_length=1, max_length=128)
    hide_credentials: bool = True


class JwtPolicy(PolicyModel):
    """Require a JWT (Bearer); the consumer is the one whose jwt credential `key` equals `key_claim`.

    Without `jwks_url` a token is verified with its consumer credential's `secret`
    or `public_key`. With `jwks_url` the signing keys come from that JWKS document
    (by the token's `kid`, refetched after `jwks_cache_seconds`), and a consumer
    credential may carry no key material at all: it only names the consumer."""

    type: Literal["jwt"]
    header: HeaderName = "Authorization"
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: ["HS256", "RS256"],  # type: ignore[arg-type]
                                           min_length=1)
    key_claim: str = Field(default="iss", min_length=1, max_length=64)
    issuer: str | None = None
    audience: str | None = None
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    leeway: float = Field(default=0, ge=0, le=3600)
    jwks_url: str | None = Field(default=None, max_length=2048)
    jwks_cache_seconds: int = Field(default=300, ge=1, le=86_400)
    hide_credentials: bool = False

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("http", "https"))


class BasicAuthPolicy(PolicyModel):
    """Require HTTP Basic credentials of a consumer."""

    type: Literal["basic-auth"]
    realm: str = Field(default="tandem", min_length=1, max_length=128, pattern=r'^[^"\r\n]*$')
    hide_credentials: bool = True


class RateLimitPolicy(PolicyModel):
    """At most `limit` requests per `window` `unit`s (at most a day) per consumer or client IP.

    `scope = "node"` counts on each gateway; `"cluster"` shares counters across
    the gateways of the environment in Redis at `redis_url` (required then).
    `fail` says what a cluster limit does when Redis does not answer within
    `redis_timeout`: `open` lets the request through, `closed` refuses it,
    `local` counts on this node meanwhile. `headers`: send `RateLimit-*`."""

    type: Literal["rate-limit"]
    limit: int = Field(ge=1, le=1_000_000_000)
    window: int = Field(default=1, ge=1, le=86_400)
    unit: Literal["second", "minute", "hour"] = "second"
    by: Literal["consumer", "ip"] = "ip"
    scope: Literal["node", "cluster"] = "node"
    fail: Literal["open", "closed", "local"] = "local"
    redis_url: str | None = Field(default=None, max_length=2048)
    redis_timeout: float = Field(default=0.1, ge=0.001, le=5)
    headers: bool = True

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("redis", "rediss"))

    @model_validator(mode="after")
    def _window_and_redis(self) -> RateLimitPolicy:
        if self.window * UNIT_SECONDS[self.unit] > 86_400:
            raise FieldError(("window",), f"{self.window} {self.unit}(s) is longer than a day (86400 s); "
                                          "use a quota for longer periods")
        if self.scope == "cluster" and self.redis_url is None:
            raise FieldError(("redis_url",), "required when scope is 'cluster' (the counters are shared in Redis)")
        return self


class QuotaPolicy(PolicyModel):
    """At most `limit` requests per calendar `period` per consumer or IP; counters survive failover."""

    type: Literal["quota"]
    limit: int = Field(ge=1, le=10**12)
    period: QuotaPeriod = "day"
    by: Literal["consumer", "ip"] = "consumer"


class IpFilterPolicy(PolicyModel):
    """Allow or deny client addresses by CIDR; deny wins; a non-empty allow list denies the rest.

    The client address is the peer's, or, when the peer is in `trusted_proxies`,
    the one `X-Forwarded-For` names."""

    type: Literal["ip-filter"]
    allow: list[str] = Field(default_factory=list, max_length=1000)
    deny: list[str] = Field(default_factory=list, max_length=1000)
    trusted_proxies: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("allow", "deny", "trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)

    @model_validator(mode="after")
    def _not_empty(self) -> IpFilterPolicy:
        if not self.allow and not self.deny:
            raise ValueError("at least one of allow or deny must list an address")
        return self


class CorsPolicy(PolicyModel):
    type: Literal["cors"]
    allow_origins: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    allow_methods: list[HTTP_METHOD] = Field(default_factory=lambda: list(CORS_DEFAULT_METHODS))  # type: ignore[arg-type]
    allow_headers: list[HeaderName] = Field(default_factory=list)
    expose_headers: list[HeaderName] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0, le=86_400)

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> CorsPolicy:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_credentials requires explicit allow_origins, not '*'")
        return self


# header names a request-/response-headers policy may not touch: they frame the message, or the gateway
# writes them itself (tandem.ags.protocol.SKIP_REQUEST + Content-Length for requests; a test keeps them equal).
# The AMS refuses them with 422; a gateway refuses a configuration's project that edits one.
PROTECTED_REQUEST_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "expect", "content-length",
    "proxy-authorization", "x-consumer-name"})
PROTECTED_RESPONSE_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "x-request-id",
    "proxy-connection"})


class _HeadersPolicy(PolicyModel):
    """Edit headers: `remove` first, then `rename` ({old: new}: the values of `old` go on under
    the name `new`), then `set` (replace), then `add` (append)."""

    _protected: frozenset[str] = frozenset()

    set: dict[str, HeaderValue] = Field(default_factory=dict)
    add: dict[str, HeaderValue] = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)
    rename: dict[str, str] = Field(default_factory=dict)

    @field_validator("set", "add")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _HEADER_RE.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return v

    @field_validator("rename")
    @classmethod
    def _rename(cls, v: dict[str, str]) -> dict[str, str]:
        for old, new in v.items():
            for name in (old, new):
                if not _HEADER_RE.match(name):
                    raise ValueError(f"{name!r} is not a valid header name")
        return v

    @model_validator(mode="after")
    def _something(self) -> _HeadersPolicy:
        if not (self.set or self.add or self.remove or self.rename):
            raise ValueError("at least one of set, add, remove or rename must be given")
        for field in ("remove", "rename", "set", "add"):
            value = getattr(self, field)
            names = [*value, *value.values()] if field == "rename" else list(value)
            bad = sorted({n for n in names if n.lower() in self._protected})
            if bad:
                raise FieldError((field,), f"{', '.join(bad)} cannot be edited: the gateway writes it itself")
        return self


class RequestHeadersPolicy(_HeadersPolicy):
    type: Literal["request-headers"]
    _protected = PROTECTED_REQUEST_HEADERS


class ResponseHeadersPolicy(_HeadersPolicy):
    type: Literal["response-headers"]
    _protected = PROTECTED_RESPONSE_HEADERS


class CachePolicy(PolicyModel):
    """Cache responses of `methods` with `status_codes` for `ttl` seconds, per node."""

    type: Literal["cache"]
    ttl: int = Field(ge=1, le=86_400)
    methods: list[Literal["GET", "HEAD"]] = Field(default_factory=lambda: ["GET", "HEAD"],  # type: ignore[arg-type]
                                                   min_length=1)
    status_codes: list[Annotated[int, Field(ge=200, le=599)]] = Field(default_factory=lambda: [200], min_length=1)
    vary: list[HeaderName] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1, le=100 * 1_048_576)
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)


class TimeoutPolicy(PolicyModel):
    """Upstream timeouts; a read that exceeds `read` answers 504."""

    type: Literal["timeout"]
    connect: float = Field(default=5.0, gt=0, le=600)
    read: float = Field(default=30.0, gt=0, le=3600)


class RetryPolicy(PolicyModel):
    """Retry a failed upstream attempt on another target; idempotent methods only."""

    type: Literal["retry"]
    attempts: int = Field(default=2, ge=1, le=10)
    backoff: float = Field(default=0.05, ge=0, le=60)
    on_status: list[Annotated[int, Field(ge=500, le=599)]] = Field(default_factory=lambda: list(RETRY_DEFAULT_STATUS))
    methods: list[HTTP_METHOD] = Field(default_factory=lambda: list(RETRY_DEFAULT_METHODS))  # type: ignore[arg-type]

    @field_validator("methods")
    @classmethod
    def _idempotent(cls, v: list[str]) -> list[str]:
        unsafe = [m for m in v if m not in IDEMPOTENT_METHODS]
        if unsafe:
            raise ValueError(f"{', '.join(unsafe)} {'is' if len(unsafe) == 1 else 'are'} not idempotent: a retry "
                             "could apply the request twice (allowed: GET, HEAD, PUT, DELETE, OPTIONS, TRACE)")
        return v


class DeliveryPolicy(PolicyModel):
    """`mode = "queued"`: the gateway stores the request durably, answers 202 and delivers it later
    (docs/delivery.md). `mode = "direct"` proxies as if the policy were absent."""

    type: Literal["delivery"]
    mode: Literal["direct", "queued"] = "queued"
    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_initial: float = Field(default=0.5, gt=0, le=3600)
    backoff_max: float = Field(default=60.0, gt=0, le=86_400)
    ttl: int = Field(default=86_400, ge=1, le=30 * 86_400)
    retention: int = Field(default=7 * 86_400, ge=1, le=90 * 86_400,
                           description="seconds a delivered or dead message stays readable (and redrivable)")
    concurrency: int = Field(default=16, ge=1, le=1024, description="deliveries in flight per target")
    max_messages: int = Field(default=100_000, ge=1, le=10_000_000,
                              description="messages held (queued, in delivery or dead) before 503 queue_full")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, le=64 * 1024 ** 3,
                           description="body bytes held before 503 queue_full")
    max_body_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024,
                                description="one message's body; larger is 413")
    delivered_statuses: list[int] | None = Field(default=None, min_length=1, max_length=500,
                                                 description="upstream statuses that count as delivered "
                                                             "(default: any 2xx)")
    order_by_header: str | None = Field(default=None, min_length=1, max_length=256,
                                        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                                        description="messages with the same value of this header are "
                                                    "delivered one at a time, in accept order")

    @field_validator("delivered_statuses")
    @classmethod
    def _statuses(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        bad = [s for s in v if not 100 <= s <= 599]
        if bad:
            raise ValueError(f"statuses must be 100-599, got {bad[0]}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _backoff_order(self) -> DeliveryPolicy:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        if self.max_body_bytes > self.max_bytes:
            raise ValueError("max_body_bytes must be <= max_bytes")
        return self



def project_timeouts(policies: list[dict[str, Any]], connect: float, read: float) -> tuple[float, float]:
    """(connect, read) seconds for a project's upstream: each `timeout` policy's fields, in order. A field
    the policy leaves out keeps the gateway's own timeout (ConnectTimeout/ReadTimeout), not the model's
    default: a configuration from the AMS carries both. An invalid policy keeps both (the gateway's
    `compile_chain` refuses the project anyway)."""
    for policy in policies:
        if policy.get("type") != "timeout":
            continue
        try:
            m = TimeoutPolicy.model_validate(policy)
        except ValidationError:
            continue
        given = m.model_fields_set
        connect = float(m.connect) if "connect" in given else connect
        read = float(m.read) if "read" in given else read
    return connect, read

POLICY_MODELS: tuple[type[PolicyModel], ...] = (
    ApiKeyPolicy, JwtPolicy, BasicAuthPolicy, RateLimitPolicy, QuotaPolicy, IpFilterPolicy, CorsPolicy,
    RequestHeadersPolicy, ResponseHeadersPolicy, CachePolicy, TimeoutPolicy, RetryPolicy, DeliveryPolicy,
)
POLICY_TYPES: tuple[str, ...] = tuple(m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
                                      for m in POLICY_MODELS)
POLICY_MODELS_BY_TYPE: dict[str, type[PolicyModel]] = dict(zip(POLICY_TYPES, POLICY_MODELS, strict=True))

Policy = Annotated[
    ApiKeyPolicy | JwtPolicy | BasicAuthPolicy | RateLimitPolicy | QuotaPolicy | IpFilterPolicy | CorsPolicy
    | RequestHeadersPolicy | ResponseHeadersPolicy | CachePolicy | TimeoutPolicy | RetryPolicy | DeliveryPolicy,
    Field(discriminator="type"),
]
# cast: mypy types a discriminated Annotated union differently across pydantic releases
_ADAPTER: TypeAdapter[Any] = TypeAdapter(cast(Any, Policy))


def parse_policy(data: Any) -> PolicyModel:
    """Validate one policy object; raises pydantic.ValidationError naming the bad field."""
    result: PolicyModel = _ADAPTER.validate_python(data)
    return result


def _where(loc: tuple[str | int, ...]) -> str:
    """A location inside one policy, without pydantic's discriminator tag: ('rate-limit', 'limit') -> 'limit'."""
    items = list(loc[1:] if loc and loc[0] in POLICY_MODELS_BY_TYPE else loc)
    out = ""
    for part in items:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_errors(exc: ValidationError) -> str:
    """A one-line reason naming each bad field: "limit: Input should be greater than or equal to 1"."""
    parts = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        ctx = err.get("ctx") or {}
        cause = ctx.get("error") if isinstance(ctx, dict) else None
        if isinstance(cause, FieldError):
            loc += cause.path
            msg = str(cause)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = _where(loc)
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
