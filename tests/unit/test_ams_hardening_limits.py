"""The admin port's JSON depth check on raw bytes (tandem.ams.limits): it must agree
with a real parse on what is too deep, never be fooled by brackets inside strings,
and leave malformed JSON to the parser."""

from __future__ import annotations

import json
import time

import pytest

from tandem.ams.limits import MAX_NODES, json_depth, json_too_deep


def nest(depth: int, inner: str = "1") -> str:
    return "".join("[" if i % 2 else '{"k":' for i in range(depth)) + inner + "".join(
        "]" if i % 2 else "}" for i in reversed(range(depth)))


@pytest.mark.parametrize("depth", [0, 1, 2, 63, 64, 65, 66, 200])
def test_bytes_check_agrees_with_a_parse(depth: int) -> None:
    text = nest(depth)
    assert json_depth(json.loads(text), 64) == depth or depth > 64
    assert (json_too_deep(text.encode(), 64) is not None) == (depth > 64), depth


@pytest.mark.parametrize("body", [
    b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
    b'["\\"' + b"[" * 100 + b'"]',
    b"[" * 30 + b'"]]]]"' + b"]" * 30,
    b"[[[",  # malformed: the parser's 400, not a depth refusal
    b"]]]",
    b"",
])
def test_not_too_deep(body: bytes) -> None:
    assert json_too_deep(body, 64) is None


def test_a_wide_document_is_fine_and_a_deep_one_is_found_quickly() -> None:
    wide = json.dumps([{"a": [1, {"b": "x" * 10}]}] * 100_000).encode()
    assert json_too_deep(wide, 64) is None
    t0 = time.monotonic()
    assert json_too_deep(b"[" * 4_000_000 + b"]" * 4_000_000, 64) is not None
    assert time.monotonic() - t0 < 1.0


def test_shared_yaml_subtrees_are_bounded_by_the_node_budget() -> None:
    leaf: list[object] = ["x"] * 9
    for _ in range(8):
        leaf = [leaf] * 9  # 9**8 containers reachable, 9 distinct
    assert json_depth(leaf, 64) == 65, f"more than {MAX_NODES} containers count as too deep"
