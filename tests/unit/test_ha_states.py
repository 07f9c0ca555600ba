"""The transition tables are data: every listed edge is legal, everything else raises."""

from __future__ import annotations

import itertools

import pytest

from tandem.ha.states import (
    HOLDING,
    NOT_HOLDING,
    REPLICATED_TRANSITIONS,
    SERVING,
    SHARED_TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
    transitions,
)

S = State
EDGES = [("shared", a, b) for a, b in sorted(SHARED_TRANSITIONS)] + [
    ("replicated", a, b) for a, b in sorted(REPLICATED_TRANSITIONS)
]


@pytest.mark.parametrize(("mode", "old", "new"), EDGES, ids=[f"{m}:{a}->{b}" for m, a, b in EDGES])
def test_every_listed_edge_is_legal(mode: str, old: State, new: State) -> None:
    check_transition(mode, old, new)


NON_EDGES = [
    ("shared", S.PASSIVE, S.ACTIVE),  # must go through Activating (takeover wait)
    ("shared", S.PASSIVE, S.STANDALONE),
    ("shared", S.STARTING, S.ACTIVE),
    ("shared", S.ACTIVE, S.ACTIVATING),
    ("shared", S.ACTIVE, S.WAITING),
    ("shared", S.PASSIVE, S.WAITING),
    ("shared", S.STARTING, S.PASSIVE_SYNC),
    ("shared", S.ACTIVE, S.ACTIVE_SYNC),
    ("shared", S.STOPPED, S.PASSIVE),
    ("replicated", S.WAITING, S.ACTIVE),  # rule 5: never straight to serving
    ("replicated", S.WAITING, S.STANDALONE),
    ("replicated", S.PASSIVE, S.ACTIVE),
    ("replicated", S.PASSIVE, S.STANDALONE),
    ("replicated", S.PASSIVE_SYNC, S.ACTIVATING),  # a passive mid-catch-up never activates
    ("replicated", S.PASSIVE_SYNC, S.ACTIVE),
    ("replicated", S.STARTING, S.ACTIVE),
    ("replicated", S.STARTING, S.STANDALONE),
    ("replicated", S.STARTING, S.ACTIVE_SYNC),
    ("replicated", S.ACTIVE, S.ACTIVATING),
    ("replicated", S.ACTIVE, S.PASSIVE_SYNC),  # a holder steps down to Passive/Waiting first
    ("replicated", S.STANDALONE, S.STARTING),
    ("replicated", S.STOPPED, S.STARTING),
]


@pytest.mark.parametrize(("mode", "old", "new"), NON_EDGES, ids=[f"{m}:{a}->{b}" for m, a, b in NON_EDGES])
def test_non_edges_raise(mode: str, old: State, new: State) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(mode, old, new)
    assert (info.value.mode, info.value.old, info.value.new) == (mode, old, new)
    assert str(info.value) == f"illegal {mode} transition {old} -> {new}"


@pytest.mark.parametrize("mode", ["shared", "replicated"])
def test_starting_never_jumps_to_serving(mode: str) -> None:
    for target in SERVING:
        with pytest.raises(IllegalTransition):
            check_transition(mode, S.STARTING, target)


@pytest.mark.parametrize("mode", ["shared", "replicated"])
def test_staying_put_and_stopping_are_always_legal(mode: str) -> None:
    for s in State:
        check_transition(mode, s, s)
        check_transition(mode, s, S.STOPPED)


@pytest.mark.parametrize("mode", ["shared", "replicated"])
def test_the_table_is_exactly_the_set_of_legal_moves(mode: str) -> None:
    legal = set()
    for a, b in itertools.permutations(State, 2):
        try:
            check_transition(mode, a, b)
        except IllegalTransition:
            continue
        legal.add((a, b))
    assert legal == set(transitions(mode)) | {(a, S.STOPPED) for a in State if a != S.STOPPED}


def test_shared_mode_never_reaches_replicated_only_states() -> None:
    replicated_only = {S.STANDALONE, S.WAITING, S.PASSIVE_SYNC, S.ACTIVE_SYNC}
    touched = {s for edge in SHARED_TRANSITIONS for s in edge}
    assert not touched & replicated_only
    reach, todo = {S.STARTING}, [S.STARTING]
    while todo:
        cur = todo.pop()
        for a, b in SHARED_TRANSITIONS:
            if a == cur and b not in reach:
                reach.add(b)
                todo.append(b)
    assert reach == {S.STARTING, S.PASSIVE, S.ACTIVATING, S.ACTIVE}


@pytest.mark.parametrize("mode", ["shared", "replicated"])
def test_serving_is_only_entered_from_activating_or_another_serving_state(mode: str) -> None:
    for a, b in transitions(mode):
        if b in SERVING:
            assert a in SERVING | {S.ACTIVATING}, (a, b)
        if b == S.ACTIVATING:
            assert a in NOT_HOLDING, (a, b)


def test_state_sets_partition_the_live_states() -> None:
    assert SERVING < HOLDING
    assert HOLDING | NOT_HOLDING == set(State) - {S.STOPPED}
    assert not HOLDING & NOT_HOLDING
    assert transitions("shared") is SHARED_TRANSITIONS
    assert transitions("replicated") is REPLICATED_TRANSITIONS
    assert S.ACTIVE_SYNC == "ActiveSync" and S.PASSIVE_SYNC == "PassiveSync"  # names shown in /ha/status
