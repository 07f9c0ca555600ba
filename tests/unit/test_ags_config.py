"""Validation of feed documents (digest, schema) and compilation (reuse, policies)."""

from __future__ import annotations

import json

import pytest

from tandem.ags.compiled_config import ConfigRejected, compile_config, validate_document
from tests.support.ags import make_document, project


def _doc(**changes: object) -> dict:
    doc = make_document([project("pets", "/pets", "http://127.0.0.1:9000/v1")], revision=3)
    doc.update(changes)
    return doc


def test_a_good_document_validates_from_bytes_and_dict() -> None:
    doc = _doc()
    assert validate_document(json.dumps(doc).encode(), "default")["revision"] == 3
    assert validate_document(doc, "default") is doc


@pytest.mark.parametrize("raw, reason", [
    (b"<html>", "not JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"revision": 1}', "missing field"),
])
def test_garbage_is_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ConfigRejected, match=reason):
        validate_document(raw, "default")


def test_partial_document_fails_the_digest() -> None:
    doc = _doc()
    doc["projects"] = []  # a document cut short: the digest no longer matches
    with pytest.raises(ConfigRejected, match="digest mismatch"):
        validate_document(doc, "default")


def test_other_environment_is_rejected() -> None:
    doc = make_document([], environment="staging")
    with pytest.raises(ConfigRejected, match="environment 'staging'"):
        validate_document(doc, "default")


@pytest.mark.parametrize("bad, reason", [
    ({"context_path": "pets"}, "context_path"),
    ({"targets": [{"url": "ftp://x"}]}, "target url"),
    ({"targets": [{"url": "http://x", "weight": -1}]}, "weight"),
    ({"name": ""}, "name"),
    ({"policies": [{"no": "type"}]}, "policies"),
    ({"hosts": "example.com"}, "hosts"),
])
def test_bad_project_rejects_the_whole_document(bad: dict, reason: str) -> None:
    p = project("pets", "/pets", "http://127.0.0.1:9000")
    p.update(bad)
    with pytest.raises(ConfigRejected, match=reason):
        validate_document(make_document([p]), "default")


def test_duplicate_route_is_rejected() -> None:
    doc = make_document([project("a", "/x", "http://h"), project("b", "/x/", "http://h")])
    with pytest.raises(ConfigRejected, match="same context_path"):
        validate_document(doc, "default")


def _compile(doc: dict, previous=None):  # type: ignore[no-untyped-def]
    return compile_config(doc, lambda t: ("pool", t.host, t.port), lambda name: name, 5.0, 60.0, previous)


def test_unchanged_projects_are_reused_changed_ones_rebuilt() -> None:
    a, b = project("a", "/a", "http://h:1"), project("b", "/b", "http://h:2")
    first = _compile(make_document([a, b], 1))
    b2 = dict(b, targets=[{"url": "http://h:3", "weight": 1}])
    second = _compile(make_document([a, b2], 2), first)
    assert second.projects["a"] is first.projects["a"]
    assert second.projects["b"] is not first.projects["b"]
    assert second.projects["b"].balancer.targets[0].port == 3
    assert second.revision == 2


def test_policies_compiled_or_refused() -> None:
    doc = make_document([
        project("t", "/t", "http://h", policies=[{"type": "timeout", "connect": 1.5, "read": 2}]),
        project("k", "/k", "http://h", policies=[{"type": "api-key"}]),
        project("u", "/u", "http://h", policies=[{"type": "made-up"}]),
        project("n", "/n", "http://h"),
    ])
    cfg = _compile(validate_document(doc, "default"))
    t, k, u, n = (cfg.projects[n] for n in "tkun")
    assert (t.connect_timeout, t.read_timeout, t.refusal, t.chain) == (1.5, 2.0, None, None)
    assert k.refusal is None and k.chain is not None and k.chain.kinds == ["api-key"]
    assert u.refusal is not None and "'made-up'" in u.refusal  # fail closed: never serve it unprotected
    assert (n.chain, n.refusal) == (None, None)  # no policy: nothing on the hot path


def test_target_paths_are_joined() -> None:
    cfg = _compile(make_document([project("p", "/p", "http://h/v1", "http://h/v2/", "http://h")]))
    t1, t2, t3 = cfg.projects["p"].balancer.targets
    assert t1.upstream_path(b"/pets") == b"/v1/pets"
    assert t1.upstream_path(b"") == b"/v1"
    assert t2.upstream_path(b"/pets") == b"/v2/pets"
    assert t2.upstream_path(b"") == b"/v2/"
    assert t3.upstream_path(b"") == b"/"
    assert t3.host_header == b"h"
