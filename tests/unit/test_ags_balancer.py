"""Weighted round robin (smooth, nginx order) with passive health."""

from __future__ import annotations

from collections import Counter

from tandem.ags.balancer import Balancer, Target


def test_smooth_weighted_round_robin() -> None:
    a, b, c = Target("http://a", 5), Target("http://b", 1), Target("http://c", 1)
    bal = Balancer([a, b, c])
    seq = [bal.pick(0.0) for _ in range(7)]
    assert Counter(t.host for t in seq if t) == {"a": 5, "b": 1, "c": 1}
    assert [t.host for t in seq if t] == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's smooth order


def test_weight_zero_is_drained_and_gcd_reduced() -> None:
    a, b, z = Target("http://a", 200), Target("http://b", 100), Target("http://z", 0)
    bal = Balancer([a, b, z])
    assert len(bal.cycle) == 3
    assert all(t is not z for t in (bal.pick(0.0) for _ in range(30)))
    assert Balancer([z]).pick(0.0) is None


def test_failed_target_is_skipped_until_its_timeout() -> None:
    a, b = Target("http://a", 1), Target("http://b", 1)
    bal = Balancer([a, b])
    Balancer.failed(a, now=100.0, fail_timeout=10.0)
    assert {bal.pick(105.0).host for _ in range(6)} == {"b"}  # type: ignore[union-attr]
    assert {bal.pick(111.0).host for _ in range(6)} == {"a", "b"}  # type: ignore[union-attr]
    Balancer.succeeded(a)
    assert a.down_until == 0.0


def test_all_down_still_probes_but_a_retry_does_not_loop() -> None:
    a, b = Target("http://a", 1), Target("http://b", 1)
    bal = Balancer([a, b])
    Balancer.failed(a, 0.0, 10.0)
    Balancer.failed(b, 0.0, 10.0)
    assert bal.pick(1.0) in (a, b)  # a real attempt is the probe
    assert bal.pick(1.0, tried={a}) is None  # within one request: do not retry down targets


def test_target_url_parsing() -> None:
    t = Target("https://api.example.com/base", 1)
    assert (t.host, t.port, t.base_path, t.host_header) == ("api.example.com", 443, b"/base", b"api.example.com")
    t = Target("http://[::1]:8080", 1)
    assert (t.host, t.port, t.host_header) == ("::1", 8080, b"[::1]:8080")
