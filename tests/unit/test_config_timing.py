"""The timing rules of `tandem.config.validate`: one case per rule, each breaking only that rule."""

from __future__ import annotations

import dataclasses

import pytest

from tandem.config import HASection, check_timing, timing_violations
from tandem.errors import TimingError

# the cases below are written against these timings, not the (tunable) model defaults
BASE = HASection(LockVerifyInterval=100, LockIOTimeout=80, TakeoverWait=250, LockRetryInterval=50,
                 HeartbeatInterval=100, HeartbeatMisses=3, WatchdogTimeout=1500, ProbeInterval=500,
                 ProbeTimeout=300)


def test_model_defaults_satisfy_every_rule() -> None:
    assert timing_violations(HASection()) == []
    check_timing("x", HASection())


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"TakeoverWait": 180},
            "LockVerifyInterval (100) + LockIOTimeout (80) = 180 must be < TakeoverWait (180)",
        ),
        (
            {"LockIOTimeout": 100, "TakeoverWait": 1000},
            "LockIOTimeout (100) must be < LockVerifyInterval (100)",
        ),
        (
            {"LockRetryInterval": 251, "HeartbeatInterval": 200},
            "LockRetryInterval (251) must be <= TakeoverWait (250)",
        ),
        ({"HeartbeatMisses": 1, "HeartbeatInterval": 100}, "HeartbeatMisses (1) must be >= 2"),
        ({"WatchdogTimeout": 200}, "WatchdogTimeout (200) must be > 2 * LockVerifyInterval (100)"),
        ({"ProbeTimeout": 500}, "ProbeTimeout (500) must be < ProbeInterval (500)"),
        (
            {"HeartbeatInterval": 10, "HeartbeatMisses": 4},
            "HeartbeatInterval (10) * HeartbeatMisses (4) = 40 must be >= LockRetryInterval (50)",
        ),
    ],
)
def test_each_rule_names_its_keys_and_values(changes: dict[str, int], expected: str) -> None:
    ha = dataclasses.replace(BASE, **changes)
    broken = timing_violations(ha)
    assert len(broken) == 1 and expected in broken[0]  # only the rule under test
    with pytest.raises(TimingError) as info:
        check_timing("haprofile1/primary/AMS", ha)
    assert str(info.value).startswith("haprofile1/primary/AMS: [ha] timing: ")
    assert expected in str(info.value)


def test_several_broken_rules_are_all_reported_on_one_line() -> None:
    ha = dataclasses.replace(BASE, ProbeTimeout=900, WatchdogTimeout=100)
    with pytest.raises(TimingError) as info:
        check_timing("p", ha)
    message = str(info.value)
    assert "ProbeTimeout (900)" in message and "WatchdogTimeout (100)" in message and "\n" not in message
