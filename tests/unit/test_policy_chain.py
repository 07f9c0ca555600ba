"""The policy chain's pure parts: order, header edits, consumer index, client address, query handling."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from tandem.ags.policies import Consumers, Services, compile_chain
from tandem.ags.policies.api_key import query_value, query_without
from tandem.ags.policies.base import RequestEdit
from tandem.ags.policies.chain import edit_response, split_lines
from tandem.ags.policies.ip_filter import client_address, networks, parse_ip
from tests.support.ags import project


def _chain(*policies: dict[str, object]):  # type: ignore[no-untyped-def]
    return compile_chain(project("p", "/p", "http://h", policies=list(policies)), Consumers([]), Services())


def test_steps_run_in_phase_order_whatever_the_list_order() -> None:
    chain, refusal = _chain({"type": "request-headers", "set": {"X-A": "1"}}, {"type": "api-key"},
                            {"type": "ip-filter", "deny": ["10.0.0.0/8"]}, {"type": "cors"},
                            {"type": "timeout", "read": 1})
    assert refusal is None and chain is not None
    assert [s.kind for s in chain.steps] == ["cors", "ip-filter", "api-key", "request-headers"]
    assert not chain.hooks  # nothing to do on the way back


def test_no_chain_without_per_request_policies_and_refusals() -> None:
    assert _chain() == (None, None)
    assert _chain({"type": "timeout", "read": 2}) == (None, None)
    chain, refusal = _chain({"type": "made-up"})
    assert chain is None and refusal is not None and "'made-up'" in refusal
    chain, refusal = _chain({"type": "response-headers", "remove": ["Transfer-Encoding"]})
    assert chain is None and refusal is not None and "Transfer-Encoding" in refusal
    chain, refusal = _chain({"type": "retry", "methods": ["POST"]})
    assert chain is None and refusal is not None and "idempotent" in refusal
    chain, _ = _chain({"type": "response-headers", "set": {"X-A": "1"}}, {"type": "retry"})
    assert chain is not None and chain.steps == [] and chain.hooks and chain.retry is not None


def test_request_edit_order_and_case() -> None:
    e = RequestEdit()
    e.remove(b"x-drop")
    e.rename(b"X-OLD", b"X-New")
    e.set(b"X-Set", b"s")
    e.add(b"X-Add", b"2")
    lines = [[b"X-Drop", b"1"], [b"x-old", b"o"], [b"X-SET", b"a"], [b"X-Set", b"b"], [b"X-Add", b"1"]]
    assert e.apply(lines) == [[b"X-New", b"o"], [b"X-Add", b"1"], [b"X-Set", b"s"], [b"X-Add", b"2"]]


def test_response_parts_split_and_edit_both_shapes() -> None:
    parts = [b"HTTP/1.1 200 OK\r\n", b"Server", b": ", b"x", b"\r\n", b"Vary: Origin\r\n", b"ETag", b": ",
             b'"1"', b"\r\n"]
    assert split_lines(parts) == [[b"Server", b"x"], [b"Vary", b"Origin"], [b"ETag", b'"1"']]
    e = RequestEdit()
    e.remove(b"server")
    out = b"".join(edit_response(e, parts))
    assert out == b'HTTP/1.1 200 OK\r\nVary: Origin\r\nETag: "1"\r\n'


def test_consumers_index() -> None:
    c = Consumers([{"name": "a", "keys": [{"id": "1", "sha256": "AB"}],
                    "credentials": {"basic_auth": [{"username": "u", "password_hash": "h"}],
                                    "jwt": [{"key": "iss-a", "algorithm": "HS256", "secret": "s"}]}},
                   {"name": "b", "keys": [], "credentials": {}}, "garbage"])  # type: ignore[list-item]
    assert c.by_key_hash == {"ab": "a"} and c.basic == {"u": ("a", "h")} and c.jwt["iss-a"][0] == "a"
    assert c.names == {"a", "b"}
    assert Consumers([]).digest != c.digest


@pytest.mark.parametrize("peer, xff, expected", [
    (b"192.0.2.1", [b"10.0.0.1"], "192.0.2.1"),  # untrusted peer: its own address
    (b"127.0.0.1", [b"10.0.0.1"], "10.0.0.1"),
    (b"127.0.0.1", [b"10.0.0.1, 127.0.0.2"], "10.0.0.1"),  # trusted hops skipped from the right
    (b"127.0.0.1", [b"6.6.6.6, 10.0.0.1"], "10.0.0.1"),  # a forged left part is not believed
    (b"127.0.0.1", [b"garbage"], "127.0.0.1"),
    (b"127.0.0.1", [], "127.0.0.1"),
    (b"127.0.0.1", [b"[2001:db8::5]:443"], "2001:db8::5"),
    (b"::ffff:127.0.0.1", [b"10.0.0.9"], "10.0.0.9"),  # v4-mapped peer
])
def test_client_address(peer: bytes, xff: list[bytes], expected: str) -> None:
    trusted = networks(["127.0.0.0/8"])
    assert client_address(peer, xff, trusted) == ipaddress.ip_address(expected)


def test_parse_ip_rejects_garbage() -> None:
    assert parse_ip(b"not-an-ip") is None and parse_ip(b"1.2.3.4:80") == ipaddress.ip_address("1.2.3.4")


def test_query_param_read_and_removed() -> None:
    q = b"?a=1&api%5Fkey=k%2B1&b=2"
    assert query_value(q, b"api_key") == b"k+1"
    assert query_without(q, b"api_key") == b"?a=1&b=2"
    assert query_without(b"?api_key=x", b"api_key") == b""
    assert query_value(b"?a=1", b"api_key") is None


def test_api_key_hashes_match_the_ams() -> None:
    from tandem.ams.services.consumers import hash_key

    assert hash_key("tk_x") == hashlib.sha256(b"tk_x").hexdigest()


def test_protected_header_lists_match_what_the_gateway_writes() -> None:
    from tandem.ags.protocol import SKIP_REQUEST
    from tandem.model.policies import PROTECTED_REQUEST_HEADERS

    assert {n.encode() for n in PROTECTED_REQUEST_HEADERS} == SKIP_REQUEST | {b"content-length"}
