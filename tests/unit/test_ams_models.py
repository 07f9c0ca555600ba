"""Pure parts of the AMS: policy and project models, error field names, the feed
digest, OpenAPI-to-project mapping, and the client's URL list and output."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from tandem.ams.api_errors import field_name, format_errors
from tandem.ams.models import Project, check_context_path, check_target_url, routes_conflict
from tandem.ams.openapi_import import project_from_openapi, slug
from tandem.ams.services.consumers import check_password, hash_password
from tandem.client import split_urls
from tandem.client.output import print_result, table
from tandem.model.document import build_document, canonical_json, verify_document
from tandem.model.policies import POLICY_MODELS, POLICY_TYPES, parse_policy

MINIMAL: dict[str, dict[str, Any]] = {
    "api-key": {}, "jwt": {}, "basic-auth": {}, "rate-limit": {"limit": 5}, "quota": {"limit": 1000},
    "ip-filter": {"allow": ["10.0.0.0/8"]}, "cors": {}, "request-headers": {"set": {"X-A": "1"}},
    "response-headers": {"remove": ["Server"]}, "cache": {"ttl": 60}, "timeout": {}, "retry": {},
    "delivery": {},
}


def test_every_policy_type_has_a_strict_model() -> None:
    assert set(POLICY_TYPES) == set(MINIMAL) and len(POLICY_MODELS) == 13
    for ptype, params in MINIMAL.items():
        policy = parse_policy({"type": ptype, **params})
        assert policy.model_dump()["type"] == ptype
        with pytest.raises(ValidationError) as err:
            parse_policy({"type": ptype, **params, "surprise": True})
        assert err.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(("policy", "loc_end"), [
    ({"type": "rate-limit"}, "limit"),
    ({"type": "rate-limit", "limit": 0}, "limit"),
    ({"type": "rate-limit", "limit": "5"}, "limit"),  # strict: no string-to-int coercion
    ({"type": "rate-limit", "limit": 5, "scope": "planet"}, "scope"),
    ({"type": "ip-filter"}, None),
    ({"type": "ip-filter", "deny": ["not-an-ip"]}, "deny"),
    ({"type": "cors", "allow_credentials": True}, None),
    ({"type": "request-headers", "set": {"bad header": "x"}}, "set"),
    ({"type": "request-headers", "set": {"X-A": "line\r\nbreak"}}, "set"),
    ({"type": "delivery", "backoff_initial": 10, "backoff_max": 1}, None),
    ({"type": "cache", "ttl": 0}, "ttl"),
    ({"type": "retry", "on_status": [404]}, "on_status"),
    ({"type": "jwt", "algorithms": ["none"]}, "algorithms"),
    ({"type": "jwt", "jwks_url": "file:///etc/keys"}, "jwks_url"),
    ({"type": "rate-limit", "limit": 5, "window": 1441, "unit": "minute"}, None),
    ({"type": "rate-limit", "limit": 5, "scope": "cluster"}, None),
    ({"type": "rate-limit", "limit": 5, "redis_url": "redis://h:0"}, "redis_url"),
    ({"type": "retry", "methods": ["POST"]}, "methods"),
    ({"type": "request-headers", "rename": {"X-A": "a b"}}, "rename"),
    ({"type": "ip-filter", "allow": ["10.0.0.0/8"], "trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies"),
])
def test_bad_policy_parameters(policy: dict[str, Any], loc_end: str | None) -> None:
    with pytest.raises(ValidationError) as err:
        parse_policy(policy)
    loc = err.value.errors()[0]["loc"]
    if loc_end is not None:
        assert loc_end in loc, loc


def test_field_names_drop_the_discriminator_tag() -> None:
    assert field_name(("body", "policies", 0, "rate-limit", "limit")) == "policies[0].limit"
    assert field_name(("body", "targets", 2, "url")) == "targets[2].url"
    assert field_name(("body",)) == "body"
    assert field_name(("query", "wait")) == "wait"
    try:
        Project.model_validate({"name": "a", "context_path": "/a", "targets": [{"url": "http://h"}],
                                "policies": [{"type": "zzz"}]})
    except ValidationError as exc:
        (item,) = format_errors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        assert item["field"] == "policies[0].type" and "zzz" in item["msg"]
    else:
        raise AssertionError("unknown policy type accepted")


@pytest.mark.parametrize("url", ["http://h", "https://api.example.com:8443/v1/", "http://[::1]:80/x"])
def test_good_target_urls(url: str) -> None:
    assert check_target_url(url) == url


@pytest.mark.parametrize("url", ["ftp://h", "http://", "http://h:0", "http://h:99999", "http://h/?q=1",
                                 "http://h/#f", "http://u:p@h", "http://h/a b", "h:80"])
def test_bad_target_urls(url: str) -> None:
    with pytest.raises(ValueError):
        check_target_url(url)


def test_context_paths() -> None:
    assert check_context_path("/pets/") == "/pets" and check_context_path("/") == "/"
    assert check_context_path("/a/b.c/{x}") == "/a/b.c/{x}"
    for bad in ("pets", "/a//b", "/a/../b", "/./a", "/a?b", "/a b", "/a\\b"):
        with pytest.raises(ValueError):
            check_context_path(bad)


def test_routes_conflict_by_path_and_hosts() -> None:
    a = {"context_path": "/x", "hosts": []}
    assert routes_conflict(a, {"context_path": "/x", "hosts": ["h"]})
    assert not routes_conflict(a, {"context_path": "/x/y", "hosts": []})
    assert not routes_conflict({"context_path": "/x", "hosts": ["a"]}, {"context_path": "/x", "hosts": ["b"]})
    assert routes_conflict({"context_path": "/x", "hosts": ["a", "b"]}, {"context_path": "/x", "hosts": ["b"]})


def test_feed_digest_is_the_documented_canonical_json() -> None:
    projects = {"b": {"name": "b", "x": "é"}, "a": {"name": "a"}}
    doc = build_document("default", 7, projects, [{"name": "c", "keys": [{"id": "k", "sha256": "00",
                                                                          "created_at": "t"}]}], "now")
    assert [p["name"] for p in doc["projects"]] == ["a", "b"]
    assert doc["consumers"] == [{"name": "c", "keys": [{"id": "k", "sha256": "00"}], "credentials": {}}]
    body = {k: doc[k] for k in ("environment", "revision", "projects", "consumers")}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert doc["digest"] == expected == hashlib.sha256(canonical_json(body)).hexdigest()
    assert verify_document(doc) is None
    assert verify_document(json.loads(json.dumps(doc))) is None, "survives a JSON round trip"
    assert "missing" in (verify_document({k: v for k, v in doc.items() if k != "digest"}) or "")
    assert verify_document([]) is not None


def test_passwords_are_salted_hashes() -> None:
    h1, h2 = hash_password("hunter22"), hash_password("hunter22")
    assert h1 != h2 and "hunter22" not in h1 and h1.startswith("scrypt$")
    assert check_password("hunter22", h1) and not check_password("hunter23", h1)
    assert not check_password("x", "garbage")
    old = "sha256$00$" + hashlib.sha256(b"\x00hunter22").hexdigest()  # written by earlier versions
    assert check_password("hunter22", old) and not check_password("hunter23", old)


def test_limits_cross_checks() -> None:
    ok = parse_policy({"type": "rate-limit", "limit": 5, "window": 24, "unit": "hour", "scope": "cluster",
                       "redis_url": "redis://127.0.0.1:6379/0"})
    assert ok.model_dump()["fail"] == "local"
    base = {"name": "a", "context_path": "/a", "targets": [{"url": "http://h"}]}
    for auth in ("api-key", "basic-auth", "jwt"):
        Project.model_validate({**base, "policies": [{"type": "quota", "limit": 1}, {"type": auth}]})
    Project.model_validate({**base, "policies": [{"type": "quota", "limit": 1, "by": "ip"}]})
    with pytest.raises(ValidationError):
        Project.model_validate({**base, "policies": [{"type": "quota", "limit": 1}]})


def test_jwt_credentials() -> None:
    from tandem.ams.models import JwtCredential

    assert JwtCredential.model_validate({"key": "k", "algorithm": "RS256"}).secret is None  # JWKS-identified
    assert JwtCredential.model_validate({"key": "k"}).algorithm == "HS256"
    for bad in ({"key": "k", "algorithm": "RS256", "secret": "0123456789abcdef"},
                {"key": "k", "algorithm": "HS256", "public_key": "pk"},
                {"key": "k", "algorithm": "HS256", "secret": "0123456789abcdef", "public_key": "pk"}):
        with pytest.raises(ValidationError):
            JwtCredential.model_validate(bad)


def test_openapi_mapping() -> None:
    doc = {"openapi": "3.1.0", "info": {"title": "  Order Service API!", "version": 2},
           "servers": [{"url": "/relative"}, {"url": "http://orders:8080/api"}],
           "paths": {"/orders": {"get": {"operationId": "list"}, "parameters": [], "post": {}}}}
    p = project_from_openapi(doc)
    assert p["name"] == "order-service-api" and p["version"] == "2" and p["context_path"] == "/order-service-api"
    assert p["targets"] == [{"url": "http://orders:8080/api", "weight": 1}]
    assert [(r["method"], r["path"]) for r in p["resources"]] == [("GET", "/orders"), ("POST", "/orders")]
    Project.model_validate(p)
    p = project_from_openapi(doc, name="o", context_path="/o", target="http://t")
    assert (p["name"], p["context_path"], p["targets"]) == ("o", "/o", [{"url": "http://t", "weight": 1}])
    assert slug("Swagger Petstore - OpenAPI 3.0") == "swagger-petstore-openapi-3.0"


def test_client_url_lists() -> None:
    assert split_urls("http://a:1; http://b:2/ ;") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a"]) == ["http://a"]
    for bad in ("", ";", "a:1", ["ftp://x"]):
        with pytest.raises(ValueError):
            split_urls(bad)


def test_tables_for_people_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": "pets", "version": "1", "context_path": "/pets", "targets": [{"url": "http://t"}],
             "policies": [{"type": "api-key"}], "hosts": []}]
    lines = table(rows).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "CONTEXT_PATH", "TARGETS", "POLICIES"]
    assert lines[1].split() == ["pets", "1", "/pets", "http://t", "api-key"]
    print_result(argparse.Namespace(json=True), rows)
    assert json.loads(capsys.readouterr().out) == rows
