"""may_acknowledge(), table-driven and by property: when may a committed write be answered 2xx?"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.ha.durability import AckObservations, Verdict, may_acknowledge

V = Verdict
#: a healthy sync active streaming to a live passive that is named in sync; the write is not acked yet
BASE: dict[str, Any] = dict(sync=True, peer_acked=False, streaming=True, peer_alive=True, timed_out=False,
                            holds_verified=True, lock_epoch=7, write_epoch=7, peer_in_record=True)


def obs(**kw: Any) -> AckObservations:
    return AckObservations(**{**BASE, **kw})


CASES: list[tuple[str, dict[str, Any], Verdict]] = [
    ("acked", {"peer_acked": True}, V.ACK),
    ("acked-even-when-stepping-down", {"peer_acked": True, "holds_verified": False, "streaming": False}, V.ACK),
    ("streaming-waits", {}, V.WAIT),
    ("streaming-waits-while-stepping-down", {"holds_verified": False}, V.WAIT),  # the ack may still come
    ("timed-out-drops-the-peer", {"timed_out": True}, V.DROP_PEER),
    ("peer-dead-drops-the-peer", {"peer_alive": False}, V.DROP_PEER),
    ("no-session-but-named-drops", {"streaming": False}, V.DROP_PEER),
    ("timed-out-named-not-verified-refuses", {"timed_out": True, "holds_verified": False}, V.REFUSE),
    # the race found by the fault runs: the session ended as the server stepped down, the
    # record still names the peer in sync: never acknowledged without the peer
    ("stepping-down-no-session-refuses", {"streaming": False, "holds_verified": False}, V.REFUSE),
    ("stepping-down-out-of-record-refuses", {"streaming": False, "holds_verified": False,
                                             "peer_in_record": False}, V.REFUSE),
    ("new-epoch-refuses", {"streaming": False, "peer_in_record": False, "lock_epoch": 8}, V.REFUSE),
    ("recorded-out-of-sync-acks", {"streaming": False, "peer_in_record": False}, V.ACK),
    ("recorded-out-of-sync-timed-out-acks", {"timed_out": True, "peer_in_record": False}, V.ACK),
    ("async-acks-at-once", {"sync": False}, V.ACK),
    ("async-peer-dead-drops-first", {"sync": False, "peer_alive": False}, V.DROP_PEER),
    ("async-not-verified-refuses", {"sync": False, "holds_verified": False}, V.REFUSE),
    ("async-out-of-record-acks", {"sync": False, "peer_alive": False, "peer_in_record": False}, V.ACK),
]


@pytest.mark.parametrize(("case", "kw", "want"), CASES, ids=[c[0] for c in CASES])
def test_table(case: str, kw: dict[str, Any], want: Verdict) -> None:
    verdict, why = may_acknowledge(obs(**kw))
    assert verdict is want, why
    assert why


observations = st.builds(
    AckObservations, sync=st.booleans(), peer_acked=st.booleans(), streaming=st.booleans(),
    peer_alive=st.booleans(), timed_out=st.booleans(), holds_verified=st.booleans(),
    lock_epoch=st.integers(0, 3), write_epoch=st.integers(0, 3), peer_in_record=st.booleans())


@given(observations)
def test_ack_only_when_safe(o: AckObservations) -> None:
    """Rule 4: a write is acknowledged only if the passive has it, or this server holds a
    verified lock at the write's epoch and the record no longer counts on the passive
    (async: or the passive is alive and named, the documented async trade-off)."""
    verdict, _ = may_acknowledge(o)
    if verdict is Verdict.ACK and not o.peer_acked:
        assert o.holds_verified and o.lock_epoch == o.write_epoch
        assert not o.peer_in_record or (not o.sync and o.peer_alive)


@given(observations)
def test_only_a_verified_holder_changes_the_record(o: AckObservations) -> None:
    verdict, _ = may_acknowledge(o)
    if verdict is Verdict.DROP_PEER:
        assert o.holds_verified and o.peer_in_record and o.lock_epoch == o.write_epoch and not o.peer_acked


@given(observations)
def test_waits_are_bounded(o: AckObservations) -> None:
    """A wait ends: once timed out, or once the session stops or the peer dies, no WAIT."""
    verdict, _ = may_acknowledge(o)
    if verdict is Verdict.WAIT:
        assert o.sync and o.streaming and o.peer_alive and not o.timed_out


@given(observations)
def test_after_dropping_the_peer_the_write_is_answered(o: AckObservations) -> None:
    """DROP_PEER then asking again (the record no longer names the peer) gives ACK: no loop."""
    verdict, _ = may_acknowledge(o)
    if verdict is Verdict.DROP_PEER:
        again, _ = may_acknowledge(AckObservations(**{**o.__dict__, "peer_in_record": False, "streaming": False}))
        assert again is Verdict.ACK
