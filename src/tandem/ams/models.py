"""The AMS domain documents as strict pydantic models: projects and consumers.

What a client sends is validated here before anything reaches the store;
what the store holds is `model_dump(mode="json")` of these models (plus the
server-managed parts of a consumer: hashed credentials and keys). Strings are
kept as given (a target URL is not rewritten) so that export/import round-trips
byte for byte.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tandem.model.document import RESERVED_CONTEXT, reserved_context
from tandem.model.policies import AUTH_TYPES, HTTP_METHOD, Policy, QuotaPolicy, RateLimitPolicy
from tandem.model.policies import (
    FieldError as FieldError,  # re-exported: errors.py and callers import it here
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# every name the admin API takes (projects, consumers, environments, gateway tokens, ...): ASCII
# letters and digits first, then also '.', '_', '-'; 1-64 characters; so never NUL, a newline,
# a space or a '/' (pydantic's regex engine anchors `$` at the very end: "a\n" is refused)
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_', '-'; at most 64")]
# identifiers that are not names (a JWT issuer is often a URL, a username may hold '@'):
# printable, no whitespace or control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def no_control(v: str) -> str:
    if _CONTROL.search(v):
        raise ValueError("must not contain control characters (NUL, newline, tab, ...)")
    return v


Ident = Annotated[str, AfterValidator(no_control)]
HOST_PATTERN = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*(:[0-9]{1,5})?$"
_SEGMENT_BAD = re.compile(r"(^|/)\.{1,2}(/|$)|//|[?#\s\\]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Target(Strict):
    url: str = Field(pattern=r"^https?://", max_length=2048, examples=["http://127.0.0.1:9000/v1"])
    weight: int = Field(default=1, ge=0, le=1000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_target_url(v)


def check_target_url(v: str) -> str:
    """An absolute http(s) URL with a host and no query, fragment or credentials."""
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("port must be 1-65535")
    if parts.query or parts.fragment or "#" in v or "?" in v:
        raise ValueError("must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if any(c.isspace() for c in v):
        raise ValueError("must not contain whitespace")
    return v


def check_context_path(v: str) -> str:
    """A path prefix: starts with '/', no empty, '.' or '..' segments; trailing '/' dropped."""
    if not v.startswith("/"):
        raise ValueError("must start with '/'")
    if _SEGMENT_BAD.search(v.rstrip("/") or "/") and v != "/":
        raise ValueError("must not contain '//', '.' or '..' segments, '?', '#', '\\' or whitespace")
    v = v.rstrip("/") or "/"
    if reserved_context(v):
        raise ValueError(f"{RESERVED_CONTEXT} is reserved for the gateway's own endpoints")
    return v


class Resource(Strict):
    path: str = Field(pattern=r"^/", max_length=2048)
    method: HTTP_METHOD
    operation_id: str | None = Field(default=None, max_length=256)
    summary: str | None = Field(default=None, max_length=1024)


class HealthCheck(Strict):
    """Active health checks of a project's targets (the gateway side: tandem.ags.health)."""

    path: str = Field(default="/", pattern=r"^/[^\s]*$", max_length=2048)
    interval: float = Field(default=5.0, ge=0.1, le=3600)
    timeout: float = Field(default=1.0, ge=0.01, le=60)
    healthy: int = Field(default=2, ge=1, le=100)
    unhealthy: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if self.timeout >= self.interval:
            raise FieldError(("timeout",), f"must be shorter than interval ({self.interval:g} s)")
        return self


class Project(Strict):
    """An API project: what one context path of a gateway serves."""

    name: Name
    version: str = Field(default="1", min_length=1, max_length=64, pattern=r"^[^\s]+$")
    description: str = Field(default="", max_length=4096)
    context_path: str = Field(pattern=r"^/", max_length=512, examples=["/petstore"])
    targets: list[Target] = Field(min_length=1, max_length=100)
    hosts: list[Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]] = Field(default_factory=list,
                                                                                     max_length=100)
    methods: list[HTTP_METHOD] = Field(default_factory=list)
    resources: list[Resource] = Field(default_factory=list, max_length=10_000)
    policies: list[Policy] = Field(default_factory=list, max_length=50)
    health_check: HealthCheck | None = None

    @field_validator("context_path")
    @classmethod
    def _context_path(cls, v: str) -> str:
        return check_context_path(v)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        lowered = [h.lower() for h in v]
        if len(set(lowered)) != len(lowered):
            raise ValueError("hosts must not repeat")
        return lowered

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("methods must not repeat")
        return v

    @model_validator(mode="after")
    def _one_policy_per_type(self) -> Project:
        seen: set[str] = set()
        for i, p in enumerate(self.policies):
            if p.type in seen:
                raise FieldError(("policies", i, "type"), f"a second {p.type!r} policy (one of each type per project)")
            seen.add(p.type)
        if not any(t.weight > 0 for t in self.targets):
            raise FieldError(("targets",), "at least one target needs a weight > 0")
        if not seen & AUTH_TYPES:
            for i, p in enumerate(self.policies):
                if isinstance(p, RateLimitPolicy | QuotaPolicy) and p.by == "consumer":
                    raise FieldError(("policies", i, "by"), f"a {p.type} by consumer needs an auth policy "
                                     "(api-key, basic-auth or jwt) in the same project to identify the consumer")
        return self


def routes_conflict(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two projects cannot be served side by side: same context path and overlapping
    hosts (an empty host list matches every host)."""
    if a.get("context_path") != b.get("context_path"):
        return False
    ha, hb = set(a.get("hosts") or []), set(b.get("hosts") or [])
    return not ha or not hb or bool(ha & hb)


# ---- consumers ----

class BasicAuthCredentialIn(Strict):
    username: Ident = Field(min_length=1, max_length=128, pattern=r"^[^:\s]+$")
    password: str = Field(min_length=8, max_length=1024)


class JwtCredential(Strict):
    """A JWT issuer of this consumer: `key` matches the policy's `key_claim` (default `iss`).

    HS algorithms take a `secret`, RS/ES ones a `public_key`; the wrong kind is
    refused. A credential with neither is a JWKS-identified one: it only names
    the consumer, and the token is verified with the keys of the jwt policy's
    `jwks_url` (on a project whose jwt policy has no `jwks_url` it matches no token)."""

    key: Ident = Field(min_length=1, max_length=256)
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384"] = "HS256"
    secret: str | None = Field(default=None, min_length=16, max_length=4096)
    public_key: str | None = Field(default=None, min_length=1, max_length=16_384)

    @model_validator(mode="after")
    def _key_material(self) -> JwtCredential:
        if self.secret is None and self.public_key is None:
            return self  # JWKS-identified: the keys come from the policy's jwks_url
        if self.algorithm.startswith("HS"):
            if self.public_key is not None:
                raise FieldError(("public_key",), f"{self.algorithm} is verified with a 'secret', not a "
                                                  "'public_key' (or give neither for a JWKS-identified credential)")
        elif self.secret is not None:
            raise FieldError(("secret",), f"{self.algorithm} is verified with a 'public_key', not a 'secret' "
                                          "(or give neither for a JWKS-identified credential)")
        if self.public_key is not None:
            check_public_key(self.algorithm, self.public_key)
        return self


def check_public_key(algorithm: str, text: str) -> None:
    """The gateway must be able to verify with it: a PEM public key (or an X.509
    certificate holding one) of the algorithm's family; else a FieldError on `public_key`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = text.encode("utf-8", "replace")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise FieldError(("public_key",), "not a PEM public key (-----BEGIN PUBLIC KEY-----) or certificate: "
                         f"{exc}") from None
    if algorithm.startswith("RS"):
        if not isinstance(key, rsa.RSAPublicKey):
            raise FieldError(("public_key",), f"{algorithm} needs an RSA public key")
        if key.key_size < 2048:
            raise FieldError(("public_key",), f"an RSA key of {key.key_size} bits is too weak (at least 2048)")
    else:
        curves = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise FieldError(("public_key",), f"{algorithm} needs an EC public key")
        if not isinstance(key.curve, curves[algorithm]):
            raise FieldError(("public_key",), f"{algorithm} needs a key on {curves[algorithm].name}, "
                                              f"not {key.curve.name}")


class CredentialsIn(Strict):
    basic_auth: list[BasicAuthCredentialIn] = Field(default_factory=list, max_length=20)
    jwt: list[JwtCredential] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _unique(self) -> CredentialsIn:
        for field, values in (("basic_auth", [c.username for c in self.basic_auth]),
                              ("jwt", [c.key for c in self.jwt])):
            if len(set(values)) != len(values):
                raise FieldError((field,), "the same username/key twice")
        return self


class ConsumerIn(Strict):
    """A consumer (application) as a client creates or replaces it. Passwords are
    stored salted and hashed; API keys are issued separately."""

    name: Name
    description: str = Field(default="", max_length=4096)
    credentials: CredentialsIn = Field(default_factory=CredentialsIn)


class ConsumerUpdate(Strict):
    description: str = Field(default="", max_length=4096)
    credentials: CredentialsIn = Field(default_factory=CredentialsIn)


class KeyOut(Strict):
    id: str
    created_at: str


class ConsumerOut(Strict):
    name: str
    description: str
    credentials: dict[str, list[dict[str, str]]] = Field(
        description="usernames and JWT keys; passwords and secrets are never shown")
    keys: list[KeyOut]


class IssuedKey(Strict):
    id: str
    consumer: str
    key: str = Field(description="the clear API key: shown once, only its sha256 is stored")
    created_at: str


# -- users and their tokens (tandem.ams.services.users) ----------------------------------------
UserRole = Literal["viewer", "operator", "admin"]
MAX_TOKEN_LIFETIME_S = 10 * 366 * 86400


def _future_iso(value: str) -> str:
    """An ISO 8601 time with a zone, in the future, at most 10 years ahead -> '...Z' (UTC, microseconds)."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 date and time: {value!r}") from exc
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (add 'Z' for UTC)")
    delta = when.timestamp() - datetime.now(UTC).timestamp()
    if delta <= 0:
        raise ValueError(f"{value!r} is in the past")
    if delta > MAX_TOKEN_LIFETIME_S:
        raise ValueError(f"{value!r} is more than 10 years ahead")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


ExpiresAt = Annotated[Annotated[str, Field(max_length=64), AfterValidator(_future_iso)] | None,
                      Field(description="ISO 8601 time with a zone, e.g. 2027-01-31T00:00:00Z; none: never expires")]


class TokenIn(Strict):
    name: Name = "default"
    expires_at: ExpiresAt = None


class UserIn(Strict):
    """A user as an admin creates it; the response carries its first token, shown once."""

    name: Name
    role: UserRole
    description: str = Field(default="", max_length=4096)
    token_name: Name = "default"
    expires_at: ExpiresAt = None


class UserUpdate(Strict):
    role: UserRole
    description: str = Field(default="", max_length=4096)


class TokenOut(Strict):
    id: str
    name: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class UserOut(Strict):
    name: str
    role: UserRole
    description: str
    builtin: bool = Field(description="the built-in user 'admin' (owns the first admin token)")
    created_at: str
    tokens: list[TokenOut] = Field(description="the user's tokens; a token's clear text is never shown again")


class CreatedUser(UserOut):
    token: str = Field(description="the clear token: shown once, only its sha256 is stored")


class IssuedToken(TokenOut):
    user: str
    token: str = Field(description="the clear token: shown once, only its sha256 is stored")


class AuditEntry(BaseModel):
    id: str
    at: str
    actor: str
    token: str = Field(description="the id of the token the actor used (never the token)")
    action: str
    target: str
    status: Literal["accepted", "refused"]
    request_id: str
    http_status: int | None = None
    error: str | None = None
    needs: str | None = Field(default=None, description="the role a 403 lacked")
    changes: list[str] | None = None
    more_changes: int | None = None


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_before: str | None = Field(description="pass as ?before= for the next (older) page; null at the end")


class WhoAmI(BaseModel):
    actor: str
    role: UserRole | None
    token: str
