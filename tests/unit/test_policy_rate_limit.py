"""rate-limit: window math, the node counter, headers, the builder's checks, fail modes, RESP parsing."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.ags.policies import Consumers, Services, compile_chain
from tandem.ags.policies.base import Answer
from tandem.ags.policies.chain import Context
from tandem.ags.policies.rate_limit import RateLimitStep, WindowCounts, build, window_of
from tandem.ags.policies.redis_counter import RedisCounter, ReplyError, command, parse, parse_url
from tests.support.ags import StepExchange

Ex = StepExchange


def _project(*policies: dict[str, Any], name: str = "pets") -> dict[str, Any]:
    return {"name": name, "context_path": "/pets", "targets": [], "policies": list(policies)}


def _step(policy: dict[str, Any], services: Services | None = None, now: float = 7200.25) -> RateLimitStep:
    policy = {"type": "rate-limit", **policy}
    step = build(policy, Context(_project(policy), Consumers([]), services or Services(), 0))
    assert isinstance(step, RateLimitStep)
    step.clock = lambda: now
    return step


def test_windows_are_aligned_to_their_length_in_epoch_seconds() -> None:
    assert window_of(7200.0, 3600) == (2, 3600)  # a window starts: the whole length is left
    assert window_of(7200.9, 3600) == (2, 3600)
    assert window_of(10799.99, 3600) == (2, 1)  # never 0: Retry-After is at least 1
    assert window_of(10800.0, 3600) == (3, 3600)
    assert window_of(59.5, 60) == (0, 1) and window_of(60.0, 60) == (1, 60)
    assert window_of(1_700_000_000.4, 1) == (1_700_000_000, 1)
    for t in range(0, 400, 7):
        index, reset = window_of(t + 0.5, 60)
        assert 1 <= reset <= 60 and index * 60 <= t < (index + 1) * 60 and t + reset == (index + 1) * 60


def test_window_counts_keep_only_the_current_window() -> None:
    c = WindowCounts()
    assert c.hit(b"a", 5) == (1, 5) and c.hit(b"a", 5) == (2, 5) and c.hit(b"b", 5) == (1, 5)
    assert c.hit(b"a", 6) == (1, 6)
    assert c.counts == {b"a": 1}  # window 5 is gone: memory stays bounded by one window's subjects
    assert c.hit(b"a", 5) == (2, 6)  # the clock stepped back: still counted, in the newer window


def test_exactly_limit_pass_per_window_with_headers() -> None:
    step = _step({"limit": 100, "window": 1, "unit": "hour"}, now=7200.25)
    answers = []
    for i in range(1000):
        ex = Ex()
        r = step.request(ex)
        answers.append(r)
        h = ex.headers()
        assert h["RateLimit-Limit"] == "100" and h["RateLimit-Reset"] == "3600"
        assert h["RateLimit-Remaining"] == str(max(0, 100 - (i + 1)))
    assert sum(r is None for r in answers) == 100 and all(r is None for r in answers[:100])
    over = answers[100]
    assert isinstance(over, Answer) and (over.status, over.code) == (429, "rate_limited")
    assert over.headers == [b"Retry-After: 3600\r\n"]
    assert over.message == "rate limit exceeded: 100 requests per hour"
    step.clock = lambda: 10800.0  # the next window
    assert step.request(Ex()) is None


def test_subjects_ip_and_consumer_with_ip_fallback() -> None:
    by_ip = _step({"limit": 1})
    assert by_ip.request(Ex(b"1.1.1.1", "alice")) is None
    assert by_ip.request(Ex(b"1.1.1.1", "bob")) is not None  # same address, whoever it is
    assert by_ip.request(Ex(b"2.2.2.2", "alice")) is None
    by_consumer = _step({"limit": 1, "by": "consumer"})
    assert by_consumer.request(Ex(b"1.1.1.1", "alice")) is None
    assert by_consumer.request(Ex(b"1.1.1.1", "bob")) is None
    assert by_consumer.request(Ex(b"2.2.2.2", "alice")) is not None  # alice from anywhere
    assert by_consumer.request(Ex(b"1.1.1.1")) is None  # nobody identified: the address counts
    assert by_consumer.request(Ex(b"1.1.1.1")) is not None


def test_headers_off_and_retry_after_at_the_end_of_a_window() -> None:
    step = _step({"limit": 1, "window": 30, "headers": False}, now=89.2)
    ex = Ex()
    assert step.request(ex) is None and ex.resp_extra is None
    over = step.request(Ex())
    assert isinstance(over, Answer) and over.headers == [b"Retry-After: 1\r\n"]
    assert over.message == "rate limit exceeded: 1 requests per 30 seconds"


def test_counts_survive_a_recompile_but_not_another_project_or_policy() -> None:
    services = Services()
    policy = {"type": "rate-limit", "limit": 2, "window": 1, "unit": "hour"}
    chain, refusal = compile_chain(_project(policy), Consumers([]), services)
    assert refusal is None and chain is not None and chain.kinds == ["rate-limit"]
    chain.steps[0].clock = lambda: 7200.5
    assert chain.steps[0].request(Ex()) is None
    again, _ = compile_chain(_project(policy), Consumers([]), services)  # a redeploy
    assert again is not None and again.steps[0] is not chain.steps[0]
    again.steps[0].clock = lambda: 7200.5
    assert again.steps[0].request(Ex()) is None
    assert again.steps[0].request(Ex()) is not None  # third request: the first two were kept
    other, _ = compile_chain(_project(policy, name="cats"), Consumers([]), services)
    assert other is not None
    other.steps[0].clock = lambda: 7200.5
    assert other.steps[0].request(Ex()) is None


@pytest.mark.parametrize(("policy", "error"), [
    ({}, "limit"),
    ({"limit": 0}, "limit"),
    ({"limit": True}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"limit": 1, "window": 0}, "window"),
    ({"limit": 1, "unit": "day"}, "unit"),
    ({"limit": 1, "by": "key"}, "by"),
    ({"limit": 1, "scope": "global"}, "scope"),
    ({"limit": 1, "fail": "maybe"}, "fail"),
    ({"limit": 1, "headers": "yes"}, "headers"),
    ({"limit": 1, "scope": "cluster"}, "redis_url"),
    ({"limit": 1, "scope": "cluster", "redis_url": "http://127.0.0.1:6379"}, "redis_url"),
    ({"limit": 1, "scope": "cluster", "redis_url": "redis://127.0.0.1:6379/x"}, "redis_url"),
    ({"limit": 1, "scope": "cluster", "redis_url": "redis://127.0.0.1:6379", "redis_timeout": 0}, "redis_timeout"),
])
def test_invalid_policies_make_the_project_refuse_requests(policy: dict[str, Any], error: str) -> None:
    chain, refusal = compile_chain(_project({"type": "rate-limit", **policy}), Consumers([]), Services())
    assert chain is None and refusal is not None and error in refusal


def test_cluster_step_shares_one_client_per_url_and_names_its_keys() -> None:
    services = Services()
    url = "redis://:secret@127.0.0.1:6390/2"
    a = _step({"limit": 5, "scope": "cluster", "redis_url": url}, services)
    b = _step({"limit": 7, "scope": "cluster", "redis_url": url, "window": 2}, services)
    assert a.redis is b.redis and a.redis is not None
    assert (a.redis.host, a.redis.port, a.redis.db, a.redis.password) == ("127.0.0.1", 6390, 2, "secret")
    assert a.key_prefix.startswith(b"tandem:rl:pets:") and a.key_prefix != b.key_prefix
    assert (a.fail, a.timeout) == ("local", 0.1)
    assert parse_url("rediss://u:p%40ss@redis.example:7000") == ("redis.example", 7000, 0, "u", "p@ss", True)


def _broken(fail: str, limit: int = 2) -> RateLimitStep:
    step = _step({"limit": limit, "scope": "cluster", "redis_url": "redis://127.0.0.1:1/0", "fail": fail})
    assert step.redis is not None
    step.redis.trip("test: redis is down")  # no loop here: the breaker opens, no probe starts
    assert step.redis.broken
    return step


def test_fail_open_lets_requests_through_uncounted() -> None:
    step = _broken("open")
    for _ in range(10):
        ex = Ex()
        assert step.request(ex) is None
        assert ex.resp_extra is None  # nothing was counted, so no RateLimit-* figures are invented


def test_fail_closed_answers_503_never_401_or_403() -> None:
    step = _broken("closed")
    r = step.request(Ex())
    assert isinstance(r, Answer) and (r.status, r.code) == (503, "rate_limit_unavailable")
    assert r.headers == [b"Retry-After: 1\r\n"]


def test_fail_local_counts_in_memory_meanwhile() -> None:
    step = _broken("local", limit=2)
    results = [step.request(Ex()) for _ in range(3)]
    assert results[:2] == [None, None]
    assert isinstance(results[2], Answer) and results[2].status == 429


def test_resp_parser_handles_every_reply_type_and_partial_input() -> None:
    assert parse(b":12\r\n", 0) == (12, 5)
    assert parse(b"+PONG\r\n", 0) == (b"PONG", 7)
    assert parse(b"$3\r\nabc\r\n", 0) == (b"abc", 9)
    assert parse(b"$-1\r\n", 0) == (None, 5)
    assert parse(b"*2\r\n:5\r\n:3599000\r\n", 0) == ([5, 3599000], 18)
    err = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert err is not None and isinstance(err[0], ReplyError) and str(err[0]).startswith("NOSCRIPT")
    whole = b"*2\r\n:5\r\n:3599000\r\n"
    for cut in range(len(whole)):
        assert parse(whole[:cut], 0) is None
    assert parse(b"$3\r\nab", 0) is None
    with pytest.raises(ValueError):
        parse(b"?what\r\n", 0)
    assert command(b"GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def test_repr_shows_live_state() -> None:
    step = _step({"limit": 3, "window": 1, "unit": "minute", "by": "consumer"})
    assert repr(step) == "<RateLimitStep 3/60s by=consumer node>"
    client = RedisCounter("redis://127.0.0.1:6390/1")
    assert repr(client) == "<RedisCounter 127.0.0.1:6390/1 idle counts=0 failures=0>"
