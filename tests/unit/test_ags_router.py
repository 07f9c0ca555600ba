"""Router: longest prefix first, hosts and methods, dot segments, and cost independent of size."""

from __future__ import annotations

import pytest

from tandem.ags.compiled_config import compile_config
from tandem.ags.router import context_key, normalize_path, split_host
from tests.support.ags import make_document, project


def _router(*projects: dict):  # type: ignore[no-untyped-def]
    cfg = compile_config(make_document(list(projects)), lambda t: None, lambda n: None, 5.0, 60.0)
    return cfg.router


def _name(router, path: bytes, host: bytes = b"", method: bytes = b"GET") -> str | None:  # type: ignore[no-untyped-def]
    r = router.match(path, host, method)
    return r.name if r is not None else None


def test_longest_prefix_wins_and_segments_are_whole() -> None:
    r = _router(project("root", "/", "http://a"), project("api", "/api", "http://a"),
                project("v2", "/api/v2", "http://a"))
    assert _name(r, b"/api/v2/pets") == "v2"
    assert _name(r, b"/api/v2") == "v2"
    assert _name(r, b"/api/v2/") == "v2"
    assert _name(r, b"/api/v3/pets") == "api"
    assert _name(r, b"/api") == "api"
    assert _name(r, b"/apix") == "root"  # "/api" is a segment prefix, not a string prefix
    assert _name(r, b"/") == "root"
    assert _name(r, b"/other/thing") == "root"


def test_no_route_without_root() -> None:
    r = _router(project("api", "/api", "http://a"))
    assert _name(r, b"/") is None
    assert _name(r, b"/apix") is None
    assert _name(r, b"/ap") is None


def test_hosts_and_methods_are_more_specific_and_fall_back() -> None:
    r = _router(project("any", "/svc", "http://a"),
                project("host", "/svc", "http://a", hosts=["api.example.com"]),
                project("wild", "/svc", "http://a", hosts=["*.example.org"]),
                project("post", "/svc", "http://a", methods=["POST"]),
                project("short", "/", "http://a", hosts=["only.example.com"]))
    assert _name(r, b"/svc/x", b"api.example.com") == "host"
    assert _name(r, b"/svc/x", b"a.b.example.org") == "wild"
    assert _name(r, b"/svc/x", b"example.org") == "any"
    assert _name(r, b"/svc/x", b"other", b"POST") == "post"
    assert _name(r, b"/svc/x", b"other", b"GET") == "any"
    assert _name(r, b"/nothing", b"only.example.com") == "short"
    assert _name(r, b"/nothing", b"else.example.com") is None


def test_method_mismatch_falls_back_to_shorter_prefix() -> None:
    r = _router(project("root", "/", "http://a"), project("ro", "/data", "http://a", methods=["GET", "HEAD"]))
    assert _name(r, b"/data/1", method=b"GET") == "ro"
    assert _name(r, b"/data/1", method=b"DELETE") == "root"


def test_configured_host_port_is_ignored_like_the_request_port() -> None:
    r = _router(project("p", "/x", "http://a", hosts=["API.example.com:8443"]))
    assert _name(r, b"/x", split_host(b"api.EXAMPLE.com:8443")) == "p"
    assert _name(r, b"/x", split_host(b"api.example.com")) == "p"


@pytest.mark.parametrize("raw, expected", [
    (b"/a/b", b"/a/b"),
    (b"/a/./b", b"/a/b"),
    (b"/a/../b", b"/b"),
    (b"/a/b/..", b"/a/"),
    (b"/a/%2e%2e/admin", b"/admin"),
    (b"/a/%2E/b", b"/a/b"),
    (b"/..", None),
    (b"/a/../../etc", None),
    (b"a/b", None),
    (b"*", None),
])
def test_normalize_path(raw: bytes, expected: bytes | None) -> None:
    assert normalize_path(raw) == expected


def test_dot_segments_cannot_escape_a_context_path() -> None:
    r = _router(project("public", "/public", "http://a"), project("admin", "/admin", "http://a"))
    path = normalize_path(b"/public/../admin/users")
    assert path is not None
    assert _name(r, path) == "admin"  # routed by what the backend will see, not by the raw text


def test_context_key() -> None:
    assert context_key("/") == b""
    assert context_key("/pets/") == b"/pets"
    assert context_key("/caf\u00e9") == b"/caf%C3%A9"


class _CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts the lookups `Router.match` makes in it."""

    probes = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def,override]
        type(self).probes += 1
        return super().get(key, default)


@pytest.mark.pure_python  # (counts probes with a dict subclass, which compiled code reads past)
def test_lookup_cost_does_not_grow_with_projects() -> None:
    """Counted, not timed: the same number of table lookups among 10 projects as among 10,000
    (O(path depth), not O(projects))."""
    small = _router(*[project(f"p{i}", f"/api{i}/v1", "http://a") for i in range(10)])
    big = _router(*[project(f"p{i}", f"/api{i}/v1", "http://a") for i in range(10_000)])
    path = b"/api7/v1/pets/42/photos"
    assert _name(big, path) == "p7"

    def probes(router) -> int:  # type: ignore[no-untyped-def]
        router.table, router.plain = _CountingDict(router.table), _CountingDict(router.plain)
        _CountingDict.probes = 0
        assert router.match(path, b"", b"GET") is not None
        return _CountingDict.probes

    small_probes, big_probes = probes(small), probes(big)
    assert 0 < big_probes == small_probes <= path.count(b"/") + 1, (small_probes, big_probes)
