"""The AMS admin API in-process: the real app on a real sqlite Store, through
FastAPI's TestClient. CRUD round trips, every kind of bad input (422/400 naming
the field, the store's change log not moving), auth, the OpenAPI document,
OpenAPI import, export/import round trip."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.support.ams import InProcessAms

PROJECT: dict[str, Any] = {
    "name": "petstore",
    "version": "1.0.0",
    "context_path": "/petstore",
    "targets": [{"url": "http://127.0.0.1:9000/v1", "weight": 1}],
    "policies": [{"type": "api-key"}, {"type": "rate-limit", "limit": 10, "window": 60, "by": "consumer"}],
}

PETSTORE = """
openapi: 3.0.3
info: {title: Swagger Petstore, version: 1.0.7}
servers: [{url: "https://petstore.example.com/api/v3"}]
paths:
  /pet:
    post: {operationId: addPet, summary: Add a new pet}
    put: {operationId: updatePet}
  /pet/{petId}:
    get: {operationId: getPetById, summary: Find pet by ID}
    delete: {operationId: deletePet}
  /store/inventory:
    get: {operationId: getInventory}
"""


@pytest.fixture
def ams(tmp_path: Path) -> Iterator[InProcessAms]:
    with InProcessAms(tmp_path / "ams") as a:
        # the first request bootstraps the admin token, before any test measures the change log
        assert a.client.get("/api/v1/health").status_code == 200
        yield a


def post(ams: InProcessAms, path: str, body: Any) -> Any:
    return ams.client.post(path, json=body, headers=ams.headers)


def test_admin_token_file_is_private_and_only_its_hash_is_stored(ams: InProcessAms) -> None:
    token = ams.token
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(ams.token_file).st_mode) == 0o600
    dump = json.dumps([ams.store.scan(ns) for ns in ("ams.settings",)])
    assert token not in dump and len(ams.store.scan("ams.settings")) == 1


def test_env_admin_token_is_used_at_first_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_ADMIN_TOKEN", "env-token-0123456789abcdef0123456789")
    with InProcessAms(tmp_path / "a") as ams:
        assert ams.token == "env-token-0123456789abcdef0123456789"
        assert ams.client.get("/api/v1/projects", headers=ams.headers).status_code == 200


def test_401_without_or_with_wrong_token_and_token_never_logged(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with InProcessAms(tmp_path / "a") as ams:
        c = ams.client
        r = c.get("/api/v1/projects")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/api/v1/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/projects", headers={"Authorization": f"Basic {ams.token}"}).status_code == 401
        # unauthenticated garbage learns nothing about the body either
        assert c.post("/api/v1/projects", content=b"{nope").status_code == 401
        assert c.get("/api/v1/projects", headers=ams.headers).status_code == 200
        token = ams.token
    assert "admin token created" in caplog.text
    assert token not in caplog.text


def test_gateway_token_opens_only_the_feed(ams: InProcessAms) -> None:
    issued = post(ams, "/api/v1/gateway-tokens", {"name": "gw1"}).json()
    gw = {"Authorization": f"Bearer {issued['token']}"}
    assert ams.client.get("/api/v1/gateway/config?wait=0", headers=gw).status_code == 304
    assert ams.client.get("/api/v1/projects", headers=gw).status_code == 403
    listed = ams.client.get("/api/v1/gateway-tokens", headers=ams.headers).json()
    assert [t["id"] for t in listed] == [issued["id"]] and "token" not in listed[0]
    assert issued["token"] not in json.dumps(ams.store.scan("ams.gateway-tokens"))
    assert ams.client.delete(f"/api/v1/gateway-tokens/{issued['id']}", headers=ams.headers).status_code == 204
    assert ams.client.get("/api/v1/gateway/config?wait=0", headers=gw).status_code == 401


def test_project_crud_round_trip(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    r = post(ams, "/api/v1/projects", PROJECT)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["policies"][1] == {"type": "rate-limit", "limit": 10, "window": 60, "unit": "second",
                                      "by": "consumer", "scope": "node", "fail": "local", "redis_url": None,
                                      "redis_timeout": 0.1, "headers": True}
    assert c.get("/api/v1/projects/petstore", headers=h).json() == created
    assert [p["name"] for p in c.get("/api/v1/projects", headers=h).json()] == ["petstore"]
    assert post(ams, "/api/v1/projects", PROJECT).status_code == 409
    changed = {**PROJECT, "version": "1.1.0", "hosts": ["API.example.com"]}
    r = c.put("/api/v1/projects/petstore", json=changed, headers=h)
    assert r.status_code == 200 and r.json()["version"] == "1.1.0" and r.json()["hosts"] == ["api.example.com"]
    assert c.get("/api/v1/projects/petstore", headers=h).json()["version"] == "1.1.0"
    r = c.put("/api/v1/projects/petstore", json={**changed, "name": "other"}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert c.delete("/api/v1/projects/petstore", headers=h).status_code == 204
    assert c.get("/api/v1/projects/petstore", headers=h).status_code == 404
    assert c.delete("/api/v1/projects/petstore", headers=h).status_code == 404


BAD_PROJECTS = [
    ("missing name", {k: v for k, v in PROJECT.items() if k != "name"}, 422, "name"),
    ("bad target URL", {**PROJECT, "targets": [{"url": "ftp://x"}]}, 422, "targets[0].url"),
    ("target URL without host", {**PROJECT, "targets": [{"url": "http://"}]}, 422, "targets[0].url"),
    ("unknown policy type", {**PROJECT, "policies": [{"type": "teleport"}]}, 422, "policies[0].type"),
    ("policy without type", {**PROJECT, "policies": [{"limit": 1}]}, 422, "policies[0].type"),
    ("bad policy parameter", {**PROJECT, "policies": [{"type": "rate-limit", "limit": -1}]}, 422,
     "policies[0].limit"),
    ("unknown policy parameter", {**PROJECT, "policies": [{"type": "cors", "bogus": 1}]}, 422,
     "policies[0].bogus"),
    ("bad CIDR", {**PROJECT, "policies": [{"type": "ip-filter", "allow": ["10.0.0.300/8"]}]}, 422,
     "policies[0].allow"),
    ("policy type twice", {**PROJECT, "policies": [{"type": "cors"}, {"type": "cors"}]}, 422, "policies[1].type"),
    ("bad context path", {**PROJECT, "context_path": "/a/../b"}, 422, "context_path"),
    ("unknown field", {**PROJECT, "colour": "red"}, 422, "colour"),
    ("wrong type", {**PROJECT, "targets": "http://x"}, 422, "targets"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_PROJECTS, ids=[b[0] for b in BAD_PROJECTS])
def test_invalid_project_names_the_field_and_changes_nothing(ams: InProcessAms, case: str, body: Any,
                                                             status: int, field: str) -> None:
    before = ams.store.last_lsn()
    r = post(ams, "/api/v1/projects", body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field, err
    assert err["message"].startswith(f"{field}:")
    assert any(d["field"] == field for d in err["detail"])
    assert ams.unchanged_since(before)


def test_malformed_json_is_400_naming_the_body(ams: InProcessAms) -> None:
    before = ams.store.last_lsn()
    r = ams.client.post("/api/v1/projects", content=b'{"name": "x",', headers={
        **ams.headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body" and "malformed JSON" in r.json()["message"]
    assert ams.unchanged_since(before)


def test_duplicate_context_path(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    assert post(ams, "/api/v1/projects", PROJECT).status_code == 201
    before = ams.store.last_lsn()
    r = post(ams, "/api/v1/projects", {**PROJECT, "name": "copy"})
    assert r.status_code == 422 and r.json()["field"] == "context_path" and "petstore" in r.json()["message"]
    assert ams.unchanged_since(before)
    # different hosts may share a path
    a = post(ams, "/api/v1/projects", {**PROJECT, "name": "a", "context_path": "/x", "hosts": ["a.example"]})
    b = post(ams, "/api/v1/projects", {**PROJECT, "name": "b", "context_path": "/x", "hosts": ["b.example"]})
    assert a.status_code == 201 and b.status_code == 201
    # in an environment: petstore deployed with /petstore, then moved to /moved; a new project may take
    # /petstore, but not deploy it where the old snapshot still serves that path
    assert c.post("/api/v1/projects/petstore/deploy", json={"environment": "prod"}, headers=h).status_code == 202
    assert c.put("/api/v1/projects/petstore", json={**PROJECT, "context_path": "/moved"}, headers=h).status_code == 200
    assert post(ams, "/api/v1/projects", {**PROJECT, "name": "newpets"}).status_code == 201
    before = ams.store.last_lsn()
    r = c.post("/api/v1/projects/newpets/deploy", json={"environment": "prod"}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "context_path", r.text
    assert "prod" in r.json()["message"] and ams.unchanged_since(before)
    assert c.post("/api/v1/projects/newpets/deploy", json={"environment": "staging"}, headers=h).status_code == 202


def test_deployed_project_cannot_be_deleted(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    post(ams, "/api/v1/projects", PROJECT)
    assert c.post("/api/v1/projects/petstore/deploy", headers=h).status_code == 202
    r = c.delete("/api/v1/projects/petstore", headers=h)
    assert r.status_code == 409 and "undeploy" in r.json()["message"]
    job = c.post("/api/v1/projects/petstore/undeploy", json={"environment": "default"}, headers=h).json()
    assert job["status"] == "deployed" and job["action"] == "undeploy"
    assert c.post("/api/v1/projects/petstore/undeploy", headers=h).status_code == 409
    assert c.delete("/api/v1/projects/petstore", headers=h).status_code == 204


def test_consumers_and_keys(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    r = post(ams, "/api/v1/consumers", {"name": "acme", "description": "ACME Inc",
                                        "credentials": {"basic_auth": [{"username": "acme", "password": "s3cret-pw"}]}})
    assert r.status_code == 201, r.text
    assert r.json()["credentials"]["basic_auth"] == [{"username": "acme"}]
    assert post(ams, "/api/v1/consumers", {"name": "acme"}).status_code == 409
    assert post(ams, "/api/v1/consumers", {"description": "x"}).json()["field"] == "name"
    k1 = c.post("/api/v1/consumers/acme/keys", headers=h).json()
    k2 = c.post("/api/v1/consumers/acme/keys", headers=h).json()
    assert k1["key"] != k2["key"] and k1["key"].startswith("tk_") and len(k1["key"]) > 40
    stored = json.dumps(ams.store.scan("ams.consumers"))
    assert k1["key"] not in stored and "s3cret-pw" not in stored
    shown = c.get("/api/v1/consumers/acme", headers=h).json()
    assert [k["id"] for k in shown["keys"]] == [k1["id"], k2["id"]] and "sha256" not in json.dumps(shown)
    assert c.delete(f"/api/v1/consumers/acme/keys/{k1['id']}", headers=h).status_code == 204
    assert c.delete(f"/api/v1/consumers/acme/keys/{k1['id']}", headers=h).status_code == 404
    assert [k["id"] for k in c.get("/api/v1/consumers/acme", headers=h).json()["keys"]] == [k2["id"]]
    assert [x["name"] for x in c.get("/api/v1/consumers", headers=h).json()] == ["acme"]
    assert c.post("/api/v1/consumers/nobody/keys", headers=h).status_code == 404


def test_openapi_document_validates(ams: InProcessAms) -> None:
    spec = ams.client.get("/openapi.json").json()
    validate(spec)
    for path in ("/api/v1/projects", "/api/v1/projects/{name}/deploy", "/api/v1/deployments/{deployment_id}",
                 "/api/v1/consumers/{name}/keys", "/api/v1/import/openapi", "/api/v1/gateways",
                 "/api/v1/export", "/api/v1/import", "/api/v1/gateway/config"):
        assert path in spec["paths"], path
    assert ams.client.get("/docs").status_code == 200


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_import_petstore_openapi(ams: InProcessAms, fmt: str) -> None:
    import yaml

    doc = yaml.safe_load(PETSTORE)
    body = PETSTORE.encode() if fmt == "yaml" else json.dumps(doc).encode()
    r = ams.client.post("/api/v1/import/openapi", content=body, headers={
        **ams.headers, "Content-Type": f"application/{fmt}"})
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["name"] == "swagger-petstore" and project["version"] == "1.0.7"
    assert project["targets"] == [{"url": "https://petstore.example.com/api/v3", "weight": 1}]
    assert project["context_path"] == "/swagger-petstore"
    got = {(x["method"], x["path"], x["operation_id"]) for x in project["resources"]}
    assert got == {("POST", "/pet", "addPet"), ("PUT", "/pet", "updatePet"), ("GET", "/pet/{petId}", "getPetById"),
                   ("DELETE", "/pet/{petId}", "deletePet"), ("GET", "/store/inventory", "getInventory")}
    assert ams.client.get("/api/v1/projects/swagger-petstore", headers=ams.headers).json() == project


@pytest.mark.parametrize(("body", "field"), [
    (b"", "body"),
    (b"\xff\xfe garbage", "body"),
    (b"just a string", "body"),
    (b"{]: not: yaml: [", "body"),
    (b'{"swagger": "2.0", "info": {"title": "x", "version": "1"}, "paths": {}}', "openapi"),
    (b'{"openapi": "3.0.0", "paths": {"/a": {"get": {}}}}', "info"),
    (b'{"openapi": "3.0.0", "info": {"title": "x", "version": "1"}, "paths": {}}', "paths"),
    (b'{"openapi": "3.0.0", "info": {"title": "x", "version": "1"}, "paths": {"/a": {"get": {}}}}', "servers"),
    (b'{"openapi": "3.0.0", "info": {"title": "x", "version": "1"}, "servers": [{"url": "ftp://h"}],'
     b' "paths": {"/a": {"get": {}}}}', "servers"),
])
def test_import_openapi_garbage_is_422(ams: InProcessAms, body: bytes, field: str) -> None:
    before = ams.store.last_lsn()
    r = ams.client.post("/api/v1/import/openapi", content=body, headers={
        **ams.headers, "Content-Type": "application/yaml"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert ams.unchanged_since(before)


def _populate(ams: InProcessAms) -> None:
    c, h = ams.client, ams.headers
    post(ams, "/api/v1/projects", PROJECT)
    post(ams, "/api/v1/projects", {**PROJECT, "name": "orders", "context_path": "/orders",
                                   "policies": [{"type": "jwt"}, {"type": "delivery", "mode": "queued"}]})
    post(ams, "/api/v1/consumers", {"name": "acme", "credentials": {
        "basic_auth": [{"username": "acme", "password": "longenough"}],
        "jwt": [{"key": "acme-issuer", "secret": "0123456789abcdef0123"}]}})
    post(ams, "/api/v1/consumers", {"name": "zeta"})
    c.post("/api/v1/consumers/acme/keys", headers=h)
    post(ams, "/api/v1/gateway-tokens", {"name": "gw"})
    c.post("/api/v1/projects/petstore/deploy", json={"environment": "default"}, headers=h)
    c.post("/api/v1/projects/orders/deploy", json={"environment": "prod"}, headers=h)
    # edit after deploying: the environment keeps the deployed snapshot
    c.put("/api/v1/projects/petstore", json={**PROJECT, "version": "2"}, headers=h)


def test_export_import_export_is_identical(ams: InProcessAms, tmp_path: Path) -> None:
    _populate(ams)
    first = ams.client.get("/api/v1/export", headers=ams.headers).json()
    assert [p["name"] for p in first["projects"]] == ["orders", "petstore"]
    envs = {e["name"]: e for e in first["environments"]}
    assert envs["default"]["projects"][0]["version"] == "1.0.0" and first["projects"][1]["version"] == "2"
    with InProcessAms(tmp_path / "fresh") as fresh:
        before = fresh.client.get("/api/v1/export", headers=fresh.headers).json()
        assert before["projects"] == []
        lsn = fresh.store.last_lsn()
        r = fresh.client.post("/api/v1/import", json=first, headers=fresh.headers)
        assert r.status_code == 200, r.text
        assert len(fresh.config_changes(lsn)) == 1, "an import is one commit"
        second = fresh.client.get("/api/v1/export", headers=fresh.headers).json()
        assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)
        # the imported key hashes and gateway tokens work on the new AMS's feed
        doc = fresh.client.get("/api/v1/gateway/config?environment=default&revision=0",
                               headers=fresh.headers).json()
        assert doc["revision"] == envs["default"]["revision"] and doc["projects"][0]["version"] == "1.0.0"


def test_import_is_all_or_nothing(ams: InProcessAms) -> None:
    _populate(ams)
    doc = ams.client.get("/api/v1/export", headers=ams.headers).json()
    before_lsn, before_doc = ams.store.last_lsn(), doc
    bad_docs = [
        ({**doc, "projects": [*doc["projects"], {**doc["projects"][0]}]}, "projects[2].name"),
        ({**doc, "projects": [*doc["projects"], {**doc["projects"][0], "name": "clash"}]},
         "projects[2].context_path"),
        ({**doc, "consumers": [{**doc["consumers"][0], "keys": [{"id": "k", "sha256": "zz", "created_at": "x"}]}]},
         "consumers[0].keys[0].sha256"),
        ({**doc, "projects": [{**doc["projects"][0], "policies": [{"type": "nope"}]}]}, "projects[0].policies[0].type"),
        ({**doc, "format": "kong"}, "format"),
    ]
    for bad, field in bad_docs:
        r = ams.client.post("/api/v1/import", json=bad, headers=ams.headers)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field, (field, r.json())
        assert ams.unchanged_since(before_lsn)
    assert ams.client.get("/api/v1/export", headers=ams.headers).json() == before_doc


def test_import_replaces_the_configuration(ams: InProcessAms) -> None:
    _populate(ams)
    doc = ams.client.get("/api/v1/export", headers=ams.headers).json()
    old_revision = {e["name"]: e["revision"] for e in doc["environments"]}
    slim = {**doc, "projects": [p for p in doc["projects"] if p["name"] == "orders"],
            "consumers": [], "environments": [e for e in doc["environments"] if e["name"] == "prod"]}
    # an import never takes a deployed project off its gateways (docs/ams.md): undeploy it first
    r = ams.client.post("/api/v1/import?prune=true", json=slim, headers=ams.headers)
    assert r.status_code == 409 and r.json()["names"] == ["petstore (default)"], r.text
    assert ams.client.post("/api/v1/projects/petstore/undeploy", json={"environment": "default"},
                           headers=ams.headers).status_code == 202
    deadline = time.monotonic() + 10
    while ams.store.get("ams.environments", "default")["projects"]:  # type: ignore[index]
        assert time.monotonic() < deadline, "the undeployment did not reach the environment within 10 s"
        time.sleep(0.02)
    # what the document leaves out is deleted only with ?prune=true
    r = ams.client.post("/api/v1/import", json=slim, headers=ams.headers)
    assert r.status_code == 409 and r.json()["code"] == "would_delete", r.text
    assert ams.client.post("/api/v1/import?prune=true", json=slim, headers=ams.headers).status_code == 200
    after = ams.client.get("/api/v1/export", headers=ams.headers).json()
    assert [p["name"] for p in after["projects"]] == ["orders"] and after["consumers"] == []
    envs = {e["name"]: e for e in after["environments"]}
    assert envs["default"]["projects"] == [], "an environment absent from the document is emptied"
    assert envs["default"]["revision"] > old_revision["default"]
    assert envs["prod"]["revision"] > old_revision["prod"], "gateways must see a change"


def test_a_closed_store_is_503_not_500(ams: InProcessAms) -> None:
    store = ams.store
    store.close()
    r = ams.client.get("/api/v1/projects", headers=ams.headers)
    assert r.status_code == 503 and r.json()["code"] == "store_error"
    ams.server.store = None  # what the server does when it stops serving
    r = ams.client.get("/api/v1/projects", headers=ams.headers)
    assert r.status_code == 503 and r.json()["code"] == "unavailable"


def test_a_new_active_restores_the_token_file_from_the_environment(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicated pair: the hash arrives by replication, the file never did; with
    TANDEM_ADMIN_TOKEN set on both halves the new active writes it. A different env token
    never replaces the store's."""
    from tandem.ams.app import bootstrap

    monkeypatch.setenv("TANDEM_ADMIN_TOKEN", "pair-token-0123456789abcdefghijkl")
    with InProcessAms(tmp_path / "a") as ams:
        bootstrap(ams.app.state.services)
        assert ams.token_file.read_text().strip() == "pair-token-0123456789abcdefghijkl"
        ams.token_file.unlink()
        ams.app.state.services.state.bootstrapped = None  # as a fresh process would be
        bootstrap(ams.app.state.services)
        assert ams.token_file.read_text().strip() == "pair-token-0123456789abcdefghijkl"
        lsn = ams.store.last_lsn()
        monkeypatch.setenv("TANDEM_ADMIN_TOKEN", "another-token-0123456789abcdefghij")
        ams.token_file.unlink()
        ams.app.state.services.state.bootstrapped = None
        bootstrap(ams.app.state.services)
        assert not ams.token_file.exists() and ams.unchanged_since(lsn)
        r = ams.client.get("/api/v1/projects", headers={"Authorization": "Bearer pair-token-0123456789abcdefghijkl"})
        assert r.status_code == 200
