"""cache: the request bypass and response freshness rules, the LRU store, the builder's checks."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.ags.policies.cache import (
    MAX_BYTES,
    CacheConf,
    Entry,
    Store,
    directives,
    freshness,
    request_bypasses,
)
from tandem.ags.policies.chain import Consumers, Context, Services, compile_chain

CONF = CacheConf({"type": "cache", "ttl": 60, "vary": ["Accept"], "max_body_bytes": 100})


def fresh(status: int = 200, *lines: tuple[bytes, bytes], conf: CacheConf = CONF) -> tuple[float, float] | None:
    got: tuple[float, float] | None = freshness(status, [[n, v] for n, v in lines], conf)
    return got


def test_directives() -> None:
    assert directives([b"public, max-age=30", b'S-MaxAge="10", no-transform']) == {
        b"public": None, b"max-age": b"30", b"s-maxage": b"10", b"no-transform": None}
    assert directives([b" , ,"]) == {}


@pytest.mark.parametrize(("lines", "has_auth", "bypass"), [
    ([], False, False),
    ([(b"Accept", b"*/*")], False, False),
    ([(b"Cache-Control", b"no-cache")], False, True),
    ([(b"cache-control", b"max-age=0, No-Store")], False, True),
    ([(b"Cache-Control", b"max-age=0")], False, False),
    ([(b"Pragma", b"no-cache")], False, True),
    ([(b"Pragma", b"no-cache"), (b"Cache-Control", b"max-age=5")], False, False),  # Cache-Control wins
    ([(b"Authorization", b"Bearer x")], False, True),
    ([(b"Authorization", b"Bearer x")], True, False),  # an auth policy checked it: shared
    ([(b"Range", b"bytes=0-1")], True, True),
])
def test_request_bypass(lines: list[tuple[bytes, bytes]], has_auth: bool, bypass: bool) -> None:
    assert request_bypasses(lines, has_auth) is bypass


def test_storable_statuses_and_lifetimes() -> None:
    assert fresh(200) == (60.0, 0.0)
    assert fresh(404) is None, "not in status_codes"
    conf = CacheConf({"ttl": 60, "status_codes": [200, 206, 304, 404]})
    assert fresh(404, conf=conf) == (60.0, 0.0)
    assert fresh(206, conf=conf) is None and fresh(304, conf=conf) is None
    assert fresh(200, (b"Cache-Control", b"max-age=10")) == (10.0, 0.0)
    assert fresh(200, (b"Cache-Control", b"max-age=600")) == (60.0, 0.0), "never longer than ttl"
    assert fresh(200, (b"Cache-Control", b"max-age=5, s-maxage=20")) == (20.0, 0.0), "s-maxage first"
    assert fresh(200, (b"Cache-Control", b"max-age=10"), (b"Age", b"4")) == (10.0, 4.0)
    assert fresh(200, (b"Cache-Control", b"max-age=10"), (b"Age", b"10")) is None, "already stale"
    assert fresh(200, (b"Cache-Control", b"max-age=0")) is None
    assert fresh(200, (b"Cache-Control", b"max-age=junk")) == (60.0, 0.0)


@pytest.mark.parametrize("line", [
    (b"Cache-Control", b"no-store"), (b"Cache-Control", b"public, no-cache"), (b"cache-control", b"Private"),
    (b"Set-Cookie", b"a=1"), (b"Vary", b"*"), (b"Vary", b"Accept, Cookie"), (b"Content-Length", b"101"),
    (b"Content-Length", b"nope"),
])
def test_not_storable(line: tuple[bytes, bytes]) -> None:
    assert fresh(200, line) is None


def test_storable_with_policy_vary_and_small_body() -> None:
    assert fresh(200, (b"Vary", b"accept"), (b"Content-Length", b"100")) == (60.0, 0.0)


def test_builder_checks() -> None:
    for bad in ({}, {"ttl": 0}, {"ttl": "60"}, {"ttl": True}, {"ttl": 5, "max_entries": -1}):
        with pytest.raises((ValueError, TypeError)):
            CacheConf(bad)
    c = CacheConf({"ttl": 5})
    assert c.methods == {b"GET", b"HEAD"} and c.status_codes == {200} and c.vary == []
    assert (c.max_body_bytes, c.max_entries) == (1_048_576, 10_000)
    assert c.max_bytes == MAX_BYTES, "10000 x 1 MiB is capped"
    assert CacheConf({"ttl": 5, "max_entries": 3, "max_body_bytes": 10}).max_bytes == 30


def _entry(body: bytes, now: float = 0.0, ttl: float = 10.0) -> Entry:
    return Entry(200, [b"Content-Type: text/plain\r\n"], body, now, now + ttl, None)


def test_store_expiry_and_lru_by_entries_and_bytes() -> None:
    conf = CacheConf({"ttl": 10, "max_entries": 2, "max_body_bytes": 1000})
    s = Store("sig")
    s.put(b"a", _entry(b"1"), conf)
    s.put(b"b", _entry(b"2"), conf)
    assert s.get(b"a", 1.0) is not None  # a is now the most recently used
    s.put(b"c", _entry(b"3"), conf)
    assert list(s.entries) == [b"a", b"c"] and s.evictions == 1
    assert s.get(b"a", 10.0) is None and list(s.entries) == [b"c"], "expired entries go at lookup"
    assert s.bytes == s.entries[b"c"].size
    # bytes: max_entries * max_body_bytes = 2000 here; a 1500-byte body pushes the others out
    s.put(b"c2", _entry(b"x" * 300), conf)
    s.put(b"big", _entry(b"x" * 1500), conf)
    assert list(s.entries) == [b"big"] and s.bytes == s.entries[b"big"].size
    s.put(b"huge", _entry(b"x" * 2500), conf)
    assert b"huge" not in s.entries, "an entry larger than the whole budget is not stored"
    s.put(b"big", _entry(b"y"), conf)
    assert s.entries[b"big"].body == b"y" and s.bytes == s.entries[b"big"].size


def _chain(policies: list[dict[str, Any]], services: Services, targets: str = "http://127.0.0.1:9") -> Any:
    project = {"name": "p", "context_path": "/p", "targets": [{"url": targets, "weight": 1}], "policies": policies}
    chain, refusal = compile_chain(project, Consumers([]), services)
    assert refusal is None and chain is not None
    return chain


def test_entries_survive_an_unchanged_redeploy_only() -> None:
    services = Services()
    pol = {"type": "cache", "ttl": 30}
    first = _chain([pol], services).cache
    first.store.put(b"k", _entry(b"v"), first.conf)
    assert _chain([dict(pol)], services).cache.store.entries, "same policy: kept"
    assert not _chain([{**pol, "ttl": 31}], services).cache.store.entries, "changed policy: emptied"
    again = _chain([pol], services).cache
    again.store.put(b"k", _entry(b"v"), again.conf)
    assert not _chain([pol], services, "http://127.0.0.1:10").cache.store.entries, "changed targets: emptied"
    assert len([v for v in services.values() if isinstance(v, Store)]) == 1, "one store per project"


def test_a_bad_cache_policy_refuses_the_project() -> None:
    project = {"name": "p", "context_path": "/p", "targets": [{"url": "http://h", "weight": 1}],
               "policies": [{"type": "cache"}]}
    chain, refusal = compile_chain(project, Consumers([]), Services())
    assert chain is None and refusal is not None and "ttl" in refusal


def test_context_has_auth_shares_entries() -> None:
    ctx = Context({"name": "p", "policies": [{"type": "api-key"}, {"type": "cache", "ttl": 1}]}, Consumers([]),
                  Services(), 1)
    assert ctx.has_auth
