"""Fuzzing in `make test` (issue 18): short, derandomized runs of the strategies and rules of
tests/support/fuzz.py (bench/fuzz.py runs them for longer), and the findings of those runs kept as
regression cases: each answer is well formed, no 5xx but the documented ones, no hang, no error on
the gateway's loop; a config-feed document is refused with a reason or compiles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tandem.ags.compiled_config import ConfigRejected, validate_document
from tandem.model.document import build_document, document_digest
from tests.support import fuzz

SHORT = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gateway() -> Iterator[fuzz.FuzzGateway]:
    with fuzz.FuzzGateway() as gw:
        yield gw


def _clean(gw: fuzz.FuzzGateway, data: bytes) -> fuzz.Outcome:
    before = len(gw.errors)
    out = fuzz.HeadProbe(gw).run(data)
    assert not out.problems, f"{data!r}: {out.summary()}: {out.problems}"
    assert gw.errors[before:] == []
    return out


# ---- findings of the fuzz runs, kept ----

@pytest.mark.parametrize("data, status", [
    (b"HEAD /pets/x HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"HEAD /pets/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"HEAD /pets/" + b"a" * (fuzz.LIMITS.max_url_bytes + 10) + b" HTTP/1.1\r\nHost: api.test\r\n\r\n", 414),
    (b"HEAD /pets/x HTTP/1.1\r\nHost: api.test\r\nX-Pad: " + b"p" * (fuzz.LIMITS.max_header_bytes + 10)
     + b"\r\n\r\n", 431),
    (b"HEAD http://api.t", 408),  # the head never ends
])
def test_a_refused_head_request_gets_no_body(gateway: fuzz.FuzzGateway, data: bytes, status: int) -> None:
    out = _clean(gateway, data)
    assert [r.status for r in out.responses] == [status]
    assert out.responses[0].body == b"" and out.eof  # and nothing after it: the next bytes would be garbage


@pytest.mark.parametrize("raw, reason", [
    (b'{"environment":"default","revision":1,"projects":[],"consumers":' + b"[" * 100_000 + b"]" * 100_000
     + b',"digest":"0"}', "not JSON"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "not JSON"),
    (b'{"environment":"default","revision":NaN,"projects":[],"consumers":[],"digest":""}', "NaN is not JSON"),
])
def test_hostile_document_text_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ConfigRejected, match=reason):
        validate_document(raw, "default")


@pytest.mark.parametrize("consumer, where", [
    ({"name": "a", "keys": [], "credentials": 18446744073709551616}, "consumers[0]: credentials"),
    ({"name": "a", "keys": [], "credentials": []}, "consumers[0]: credentials"),
    ({"name": "a", "keys": 1.5}, "consumers[0]: keys"),
    ({"name": "a", "keys": [{"id": "k"}]}, "consumers[0]: keys[0]"),
    ({"name": "a", "credentials": {"basic_auth": True}}, "consumers[0]: credentials.basic_auth"),
    ({"name": "a", "credentials": {"jwt": [{"key": 1}]}}, "consumers[0]: credentials.jwt[0]"),
    ({"keys": []}, "consumers[0]: name"),
])
def test_a_consumer_not_in_the_feed_shape_is_refused_naming_it(consumer: dict, where: str) -> None:
    doc = build_document("default", 1, {}, [], "2026-12-01T00:00:00Z")
    doc["consumers"] = [consumer]
    doc["digest"] = document_digest(doc)  # a whole document: only the consumer's shape is wrong
    with pytest.raises(ConfigRejected, match=where.replace("[", r"\[").replace("]", r"\]")):
        validate_document(json.dumps(doc).encode(), "default")


# ---- the short runs ----

def test_fuzz_request_heads(gateway: fuzz.FuzzGateway) -> None:
    @SHORT
    @given(data=fuzz.request_inputs())
    def one(data: bytes) -> None:
        _clean(gateway, data)
    one()


def test_fuzz_raw_bytes(gateway: fuzz.FuzzGateway) -> None:
    @SHORT
    @given(data=fuzz.raw_inputs())
    def one(data: bytes) -> None:
        _clean(gateway, data)
    one()
    assert gateway.problems() == []  # sane after both runs: serves, nothing left open, no 500 counted


def test_fuzz_feed_documents() -> None:
    target = fuzz.DocumentTarget()
    try:
        @settings(SHORT, max_examples=300)
        @given(raw=fuzz.document_inputs())
        def one(raw: bytes) -> None:
            assert target.problem(raw) is None
        one()
    finally:
        target.close()
