"""One policy schema for both sides (`tandem.model.policies`): the AMS refuses with it (422), the gateway
validates with it when it applies a configuration and builds its steps from the validated models, with the
same defaults."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tandem.ags.compiled_config import Project as GatewayProject
from tandem.ags.policies import BUILDERS, Consumers, Services, compile_chain
from tandem.ags.policies.api_key import ApiKeyStep
from tandem.ags.policies.basic_auth import BasicAuthStep
from tandem.ags.policies.cache import CacheStep
from tandem.ags.policies.cors import CorsStep
from tandem.ags.policies.delivery import QueueStep
from tandem.ags.policies.headers import RequestHeadersStep
from tandem.ags.policies.ip_filter import IpFilterStep
from tandem.ags.policies.jwt import JwtStep
from tandem.ags.policies.quota import QuotaStep
from tandem.ags.policies.rate_limit import RateLimitStep
from tandem.ags.policies.retry import RetryStep
from tandem.ams.api_errors import format_errors
from tandem.ams.models import Project as AmsProject
from tandem.model import policies as schema

SRC = Path(__file__).resolve().parents[2] / "src" / "tandem"

# the smallest valid policy of each type (what a person writes; the model fills in the rest)
MINIMAL: dict[str, dict[str, Any]] = {
    "api-key": {}, "basic-auth": {}, "jwt": {}, "rate-limit": {"limit": 5}, "quota": {"limit": 1000},
    "ip-filter": {"allow": ["10.0.0.0/8"]}, "cors": {}, "request-headers": {"set": {"X-A": "1"}},
    "response-headers": {"remove": ["Server"]}, "cache": {"ttl": 60}, "timeout": {}, "retry": {},
    "delivery": {},
}
# what the gateway does with a type that has no builder
NO_BUILDER = {"timeout": "sets the project's upstream timeouts"}


def _project(*policies: dict[str, Any]) -> dict[str, Any]:
    return {"name": "p", "version": "1", "context_path": "/p", "targets": [{"url": "http://127.0.0.1:9", "weight": 1}],
            "hosts": [], "methods": [], "resources": [], "policies": list(policies)}


def _gateway(*policies: dict[str, Any], consumers: list[dict[str, Any]] | None = None) -> GatewayProject:
    """A project as the gateway compiles it when it applies a configuration (7 s / 9 s: its own timeouts)."""
    return GatewayProject(_project(*policies), lambda t: None, None, 7.0, 9.0, Consumers(consumers or []), Services())


def _model(kind: str) -> Any:
    return schema.parse_policy({"type": kind, **MINIMAL[kind]})


# ---- (a) one list of types ----

def test_the_schema_and_the_gateway_agree_on_the_policy_types() -> None:
    assert set(MINIMAL) == set(schema.POLICY_TYPES) == set(schema.POLICY_MODELS_BY_TYPE)
    assert set(BUILDERS) <= set(schema.POLICY_TYPES), "a gateway builder for a type the schema does not know"
    assert set(schema.POLICY_TYPES) - set(BUILDERS) == set(NO_BUILDER), "an AMS policy type without a builder"
    assert schema.AUTH_TYPES <= set(BUILDERS)
    # the AMS validates with the same models: its project model's policies are the schema's union
    from tandem.ams.models import Project

    assert Project.model_fields["policies"].annotation == list[schema.Policy]


def test_the_gateway_validates_every_builder_type_with_its_model() -> None:
    for kind in BUILDERS:
        model = _model(kind)
        assert type(model) is schema.POLICY_MODELS_BY_TYPE[kind]
        chain, refusal = compile_chain(_project({"type": kind, **MINIMAL[kind]}), Consumers([]), Services())
        assert refusal is None and chain is not None, (kind, refusal)
        assert chain.kinds == [kind]


# ---- (b) the same defaults, the same refusals ----

def _only_step(kind: str, **params: Any) -> Any:
    p = _gateway({"type": kind, **MINIMAL[kind], **params})
    assert p.refusal is None and p.chain is not None, p.refusal
    if kind == "retry":
        return p.chain.retry
    if kind == "response-headers":
        return p.chain.resp_edit
    if kind == "delivery":
        return p.chain.queue
    (step,) = p.chain.steps
    return step


def _check_api_key(s: ApiKeyStep, m: schema.ApiKeyPolicy) -> None:
    assert isinstance(s, ApiKeyStep)
    assert (s.header, s.query_param, s.hide) == (m.header.encode(), None, m.hide_credentials)
    assert (m.header, m.hide_credentials) == ("X-API-Key", True)


def _check_basic_auth(s: BasicAuthStep, m: schema.BasicAuthPolicy) -> None:
    assert isinstance(s, BasicAuthStep)
    assert s.challenge == [b'WWW-Authenticate: Basic realm="%s", charset="UTF-8"\r\n' % m.realm.encode()]
    assert s.hide is m.hide_credentials is True and m.realm == "tandem"


def _check_jwt(s: JwtStep, m: schema.JwtPolicy) -> None:
    assert isinstance(s, JwtStep)
    assert s.header == m.header.encode() == b"Authorization"
    assert s.allowed == frozenset(m.algorithms) == {"HS256", "RS256"}
    assert (s.key_claim, s.issuer, s.audience) == (m.key_claim, m.issuer, m.audience) == ("iss", None, None)
    assert s.required == tuple(m.required_claims) == ("exp",)
    assert s.leeway == m.leeway == 0 and s.hide is m.hide_credentials is False
    assert s.jwks is None and s.jwks_cache_seconds == m.jwks_cache_seconds == 300


def _check_rate_limit(s: RateLimitStep, m: schema.RateLimitPolicy) -> None:
    assert isinstance(s, RateLimitStep)
    assert s.limit == m.limit == 5
    assert s.length == m.window * schema.UNIT_SECONDS[m.unit] == 1
    assert s.by_consumer is (m.by == "consumer") is False and s.headers is m.headers is True
    assert s.redis is None and m.scope == "node"
    assert (s.fail, s.timeout) == (m.fail, m.redis_timeout) == ("local", 0.1)


def _check_quota(s: QuotaStep, m: schema.QuotaPolicy) -> None:
    assert isinstance(s, QuotaStep)
    assert (s.limit, s.period, s.by_consumer) == (m.limit, m.period, m.by == "consumer") == (1000, "day", True)
    assert s.identity == "consumer.day"


def _check_ip_filter(s: IpFilterStep, m: schema.IpFilterPolicy) -> None:
    assert isinstance(s, IpFilterStep)
    assert [str(n) for n in s.allow] == m.allow and s.deny == () == tuple(m.deny)
    assert s.trusted == () == tuple(m.trusted_proxies)


def _check_cors(s: CorsStep, m: schema.CorsPolicy) -> None:
    assert isinstance(s, CorsStep)
    assert s.any_origin and m.allow_origins == ["*"] and s.origins == frozenset()
    assert s.methods == {x.encode() for x in m.allow_methods} == {b"GET", b"HEAD", b"POST", b"PUT", b"PATCH",
                                                                  b"DELETE"}
    assert s.methods_line == b"Access-Control-Allow-Methods: " + ", ".join(m.allow_methods).encode() + b"\r\n"
    assert s.allow_headers == frozenset() and s.headers_line is None and m.allow_headers == []
    assert s.expose_line is None and m.expose_headers == []
    assert s.credentials is m.allow_credentials is False
    assert s.max_age_line == b"Access-Control-Max-Age: %d\r\n" % m.max_age == b"Access-Control-Max-Age: 600\r\n"


def _check_request_headers(s: RequestHeadersStep, m: schema.RequestHeadersPolicy) -> None:
    assert isinstance(s, RequestHeadersStep)
    assert len(s.ops) == len(m.set) == 1 and not (m.add or m.remove or m.rename)


def _check_response_headers(e: Any, m: schema.ResponseHeadersPolicy) -> None:
    assert len(e.ops) == len(m.remove) == 1 and not (m.add or m.set or m.rename)


def _check_cache(s: CacheStep, m: schema.CachePolicy) -> None:
    assert isinstance(s, CacheStep)
    c = s.conf
    assert c.ttl == m.ttl == 60
    assert c.methods == {x.encode() for x in m.methods} == {b"GET", b"HEAD"}
    assert c.status_codes == set(m.status_codes) == {200} and c.vary == m.vary == []
    assert (c.max_body_bytes, c.max_entries) == (m.max_body_bytes, m.max_entries) == (1_048_576, 10_000)


def _check_retry(s: RetryStep, m: schema.RetryPolicy) -> None:
    assert isinstance(s, RetryStep)
    assert (s.attempts, s.backoff) == (m.attempts, m.backoff) == (2, 0.05)
    assert s.on_status == set(m.on_status) == {502, 503, 504}
    assert s.methods == {x.encode() for x in m.methods} == {b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"}


def _check_delivery(s: QueueStep, m: schema.DeliveryPolicy) -> None:
    assert isinstance(s, QueueStep) and s.queued and m.mode == "queued"
    assert s.max_body_bytes == m.max_body_bytes == 1_048_576 and s.order_header is None and m.order_by_header is None


CHECKS = {"api-key": _check_api_key, "basic-auth": _check_basic_auth, "jwt": _check_jwt,
          "rate-limit": _check_rate_limit, "quota": _check_quota, "ip-filter": _check_ip_filter, "cors": _check_cors,
          "request-headers": _check_request_headers, "response-headers": _check_response_headers,
          "cache": _check_cache, "retry": _check_retry, "delivery": _check_delivery}


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_the_gateway_applies_the_models_defaults(kind: str) -> None:
    check: Any = CHECKS[kind]
    check(_only_step(kind), _model(kind))


def test_every_builder_has_a_defaults_check() -> None:
    assert set(CHECKS) == set(BUILDERS)


def test_timeout_fields_left_out_keep_the_gateways_own_timeouts() -> None:
    """The one default that differs: the model says 5 s / 30 s, a gateway without the field uses its own
    settings (ConnectTimeout/ReadTimeout). A configuration from the AMS always carries both fields."""
    m = _model("timeout")
    assert (m.connect, m.read) == (5.0, 30.0)
    p = _gateway({"type": "timeout"})
    assert (p.connect_timeout, p.read_timeout, p.refusal, p.chain) == (7.0, 9.0, None, None)
    p = _gateway({"type": "timeout", "read": 2})
    assert (p.connect_timeout, p.read_timeout) == (7.0, 2.0)
    stored = schema.parse_policy({"type": "timeout"}).model_dump(mode="json")  # what the AMS stores
    p = _gateway(stored)
    assert (p.connect_timeout, p.read_timeout) == (5.0, 30.0)


def test_empty_lists_the_gateway_serves_as_the_default() -> None:
    """The AMS accepts these empty lists; the gateway has always served them as the default list."""
    cors = _only_step("cors", allow_methods=[])
    assert cors.methods == {x.encode() for x in schema.CORS_DEFAULT_METHODS}
    retry = _only_step("retry", on_status=[], methods=[])
    assert retry.on_status == set(schema.RETRY_DEFAULT_STATUS)
    assert retry.methods == {x.encode() for x in schema.RETRY_DEFAULT_METHODS}


# one bad value per type, and the field both sides must name
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("api-key", {"header": "bad header"}, "header"),
    ("api-key", {"query_param": ""}, "query_param"),
    ("basic-auth", {"realm": 'a"b'}, "realm"),
    ("jwt", {"leeway": -1}, "leeway"),
    ("jwt", {"algorithms": ["PS256"]}, "algorithms"),
    ("jwt", {"jwks_url": "ftp://keys"}, "jwks_url"),
    ("rate-limit", {"limit": 0}, "limit"),
    ("rate-limit", {"scope": "cluster"}, "redis_url"),
    ("rate-limit", {"redis_timeout": 7}, "redis_timeout"),
    ("quota", {"period": "year"}, "period"),
    ("quota", {"limit": "5"}, "limit"),
    ("ip-filter", {"deny": ["not-an-ip"]}, "deny"),
    ("cors", {"max_age": -1}, "max_age"),
    ("request-headers", {"remove": ["Host"]}, "remove"),
    ("response-headers", {"set": {"Content-Length": "1"}}, "set"),
    ("cache", {"ttl": 0}, "ttl"),
    ("cache", {"ttl": 1.5}, "ttl"),
    ("retry", {"attempts": 0}, "attempts"),
    ("retry", {"methods": ["POST"]}, "methods"),
    ("timeout", {"read": 0}, "read"),
    ("api-key", {"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("kind", "bad", "field"), BAD, ids=[f"{k}-{f}" for k, _, f in BAD])
def test_a_bad_value_is_refused_naming_the_field_at_the_ams_and_at_the_gateway(
        kind: str, bad: dict[str, Any], field: str) -> None:
    policy = {"type": kind, **MINIMAL[kind], **bad}
    # the AMS: a 422 naming policies[0].<field> (the same formatting the admin API's error handler uses)
    with pytest.raises(ValidationError) as err:
        AmsProject.model_validate(_project(policy))
    fields = [e["field"] for e in format_errors(err.value.errors())]
    assert re.fullmatch(rf"policies\[0\]\.{field}(\[\d+\])?", fields[0]), fields  # (or one item of it)
    # the gateway, applying a configuration with it: the project fails closed, the reason names the field
    p = _gateway(policy)
    assert p.chain is None and p.refusal is not None
    assert f"this API's {kind!r} policy is invalid" in p.refusal and field in p.refusal, p.refusal


def test_a_delivery_policy_is_enforced_by_the_gateway() -> None:
    """queued: the chain keeps the queue step (the request is stored, not proxied); direct: no chain."""
    AmsProject.model_validate(_project({"type": "delivery"}))
    p = _gateway({"type": "delivery"})
    assert p.refusal is None and p.chain is not None and p.chain.queue is not None
    assert p.chain.queue.max_body_bytes == 1024 * 1024
    direct = _gateway({"type": "delivery", "mode": "direct"})
    assert direct.refusal is None and direct.chain is None


def test_the_gateway_builds_from_models_not_raw_dicts() -> None:
    """The registered builders get the validated model (typed attributes); a dict handed to a builder
    directly is validated with the same model first."""
    key = hashlib.sha256(b"k").hexdigest()
    consumers = Consumers([{"name": "c", "keys": [{"id": "1", "sha256": key}], "credentials": {}}])
    from tandem.ags.policies.chain import Context

    model = schema.parse_policy({"type": "api-key", "header": "X-Key"})
    ctx = Context(_project(model.model_dump(mode="json")), consumers, Services(), 0)
    step = BUILDERS["api-key"](model, ctx)
    assert isinstance(step, ApiKeyStep) and step.header == b"X-Key" and step.keys == {key: "c"}
    from tandem.ags.policies.api_key import build

    with pytest.raises(ValidationError):
        build({"type": "api-key", "header": 5}, ctx)


# ---- (c) the gateway does not depend on the AMS ----

def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):  # every import, also inside functions and TYPE_CHECKING blocks
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "<relative>." + base
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def test_the_gateway_imports_nothing_from_the_ams() -> None:
    files = sorted((SRC / "ags").rglob("*.py"))
    assert len(files) > 20
    offending = []
    for path in files:
        for line, name in _imports(ast.parse(path.read_text(), str(path))):
            if name == "tandem.ams" or name.startswith("tandem.ams.") or name.startswith("<relative>"):
                offending.append(f"{path.relative_to(SRC)}:{line}: {name}")
    assert offending == []


def test_the_import_walk_sees_imports_inside_functions() -> None:
    tree = ast.parse("def f():\n    from tandem.ams.policies import X\n    import tandem.ams\n")
    assert [n for _, n in _imports(tree)] == ["tandem.ams.policies", "tandem.ams.policies.X", "tandem.ams"]


def test_the_shared_module_imports_neither_side() -> None:
    for path in sorted((SRC / "model").rglob("*.py")):
        names = [n for _, n in _imports(ast.parse(path.read_text(), str(path)))]
        assert not [n for n in names if n.startswith(("tandem.ams", "tandem.ags"))], path
