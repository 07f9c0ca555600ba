"""The delivery decision (ags/delivery/decide.py): a table of cases, the transitions as data, and
properties over any sequence of events (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.ags.delivery.decide import (
    DEAD,
    DELIVERED,
    DELIVERING,
    QUEUED,
    Event,
    IllegalEvent,
    Message,
    Rules,
    backoff,
    decide,
)
from tandem.ags.delivery.states import EVENTS, FINAL, STATES, TRANSITIONS, allowed

R = Rules(max_attempts=3, backoff_initial=1.0, backoff_max=8.0, ttl=100.0)
NOW = 1000.0


def m(state: str, attempts: int = 0, next_at: float = NOW, since: float = NOW - 10) -> Message:
    return Message(state, attempts, next_at, since)


CASES = [
    # (message, event, now, draw) -> (state, attempts, next_at or None to skip, store, reason contains)
    (m(QUEUED), Event("dispatch"), NOW, 0.5, DELIVERING, 0, NOW, False, "dispatched"),
    (m(DELIVERING), Event("outcome", 200), NOW, 0.5, DELIVERED, 1, None, True, "answered 200"),
    (m(DELIVERING), Event("outcome", 204), NOW, 0.5, DELIVERED, 1, None, True, "204"),
    (m(DELIVERING), Event("outcome", 503), NOW, 0.0, QUEUED, 1, NOW + 1.0, True, "answered 503"),
    (m(DELIVERING, 1), Event("outcome", 503), NOW, 1.0, QUEUED, 2, NOW + 2.0, True, "503"),
    (m(DELIVERING, 1), Event("outcome", None, "refused"), NOW, 0.0, QUEUED, 2, NOW + 1.0, True, "refused"),
    (m(DELIVERING, 2), Event("outcome", 503), NOW, 0.5, DEAD, 3, None, True, "3 attempts used up"),
    (m(DELIVERING, 0, since=NOW - 100), Event("outcome", 500), NOW, 0.5, DEAD, 1, None, True, "ttl"),
    (m(DELIVERING, 0, since=NOW - 100), Event("outcome", 200), NOW, 0.5, DELIVERED, 1, None, True, "200"),
    (m(QUEUED, 1, since=NOW - 100), Event("expire"), NOW, 0.5, DEAD, 1, None, True, "ttl"),
    (m(DELIVERING, 2), Event("lost"), NOW, 0.5, QUEUED, 2, NOW, True, "in flight"),
    (m(DEAD, 3, since=NOW - 500), Event("redrive"), NOW, 0.5, QUEUED, 0, NOW, True, "redriven"),
]


@pytest.mark.parametrize("msg,event,now,draw,state,attempts,next_at,store,why", CASES)
def test_the_decision_table(msg: Message, event: Event, now: float, draw: float, state: str, attempts: int,
                            next_at: float | None, store: bool, why: str) -> None:
    d = decide(msg, event, R, now, draw)
    assert (d.state, d.attempts, d.store) == (state, attempts, store)
    if next_at is not None:
        assert d.next_at == pytest.approx(next_at)
    assert why in d.reason
    assert d.state in allowed(msg.state, event.kind)


def test_configured_delivered_statuses_replace_2xx() -> None:
    rules = Rules(max_attempts=5, delivered=frozenset({200, 409}))
    assert decide(m(DELIVERING), Event("outcome", 409), rules, NOW).state == DELIVERED
    assert decide(m(DELIVERING), Event("outcome", 201), rules, NOW).state == QUEUED


@pytest.mark.parametrize("msg,event,now", [
    (m(QUEUED, next_at=NOW + 1), Event("dispatch"), NOW),  # not due
    (m(QUEUED), Event("expire"), NOW),  # ttl not over
    (m(DELIVERED), Event("dispatch"), NOW),
    (m(DELIVERED), Event("redrive"), NOW),  # only the dead are redriven
    (m(QUEUED), Event("outcome", 200), NOW),  # an outcome without a dispatch
    (m(DEAD), Event("dispatch"), NOW),
])
def test_events_that_do_not_apply_are_refused(msg: Message, event: Event, now: float) -> None:
    with pytest.raises(IllegalEvent):
        decide(msg, event, R, now)


def test_the_transitions_are_data_over_the_known_states() -> None:
    for (frm, event), tos in TRANSITIONS.items():
        assert frm in STATES and event in EVENTS and tos and tos <= set(STATES)
    assert not any(frm == DELIVERED for frm, _ in TRANSITIONS), "delivered is final"
    assert FINAL == {DELIVERED, DEAD}


@given(st.integers(1, 80), st.floats(0, 0.999999))
def test_backoff_stays_between_initial_and_max_and_its_cap_grows(attempts: int, draw: float) -> None:
    b = backoff(R, attempts, draw)
    assert R.backoff_initial <= b <= R.backoff_max
    assert b <= min(R.backoff_max, R.backoff_initial * 2 ** (attempts - 1)) + 1e-9


EVENT = st.one_of(
    st.just(Event("dispatch")), st.just(Event("expire")), st.just(Event("lost")), st.just(Event("redrive")),
    st.builds(Event, st.just("outcome"), st.one_of(st.none(), st.integers(100, 599)), st.just("err")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENT, st.floats(0, 50), st.floats(0, 0.999)), max_size=40),
       st.integers(1, 6), st.floats(1, 200))
def test_any_event_sequence_keeps_the_rules(steps: list[tuple[Event, float, float]], max_attempts: int,
                                            ttl: float) -> None:
    """Whatever happens: only listed transitions; attempts never exceed max_attempts and only an outcome
    adds one; delivered is final; a dispatched message was due; only a dispatch is not stored."""
    rules = Rules(max_attempts=max_attempts, backoff_initial=0.5, backoff_max=4.0, ttl=ttl)
    now = 0.0
    msg = Message(QUEUED, 0, 0.0, 0.0)
    for event, dt, draw in steps:
        now += dt
        try:
            d = decide(msg, event, rules, now, draw)
        except IllegalEvent:
            continue
        assert d.state in allowed(msg.state, event.kind)
        assert d.attempts <= max_attempts
        assert d.attempts == (msg.attempts + 1 if event.kind == "outcome" else 0 if event.kind == "redrive"
                              else msg.attempts)
        assert d.store == (event.kind != "dispatch")
        if event.kind == "dispatch":
            assert msg.next_at <= now
        if d.state == QUEUED and event.kind == "outcome":
            assert now + rules.backoff_initial <= d.next_at + 1e-9 <= now + rules.backoff_max + 1e-9
        msg = Message(d.state, d.attempts, d.next_at, d.since)
        if msg.state == DELIVERED:
            for e in (Event("dispatch"), Event("redrive"), Event("expire"), Event("outcome", 200)):
                with pytest.raises(IllegalEvent):
                    decide(msg, e, rules, now + 1000)
            break
