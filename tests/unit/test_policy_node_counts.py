"""The node-scope rate-limit table shared by a gateway's worker processes (`policies.node_counts`):
atomic across real processes, slots freed by the end of their window, never one subject's count
clobbered by another's, and a full probe run counted locally instead of refused."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.ags.policies.node_counts import PROBES, SLOT, SLOTS, SharedTable, SharedWindow, create_table

HITS = 50_000  # enough for the processes to overlap: without the locks most increments are lost
COUNTER = r"""
import sys
from tandem.ags.policies.node_counts import SharedTable
t = SharedTable(int(sys.argv[1]))
sys.stdin.readline()  # start together
print(" ".join(str(t.add(77, 2_000_000_000, 1_000)) for _ in range(int(sys.argv[2]))))
"""


@pytest.fixture
def table() -> Iterator[SharedTable]:
    t = SharedTable(create_table())
    yield t
    t.close()
    os.close(t.fd)


def test_increments_from_several_processes_are_atomic(table: SharedTable) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(table.fd), str(HITS)], pass_fds=(table.fd,),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        seen = [int(n) for p in procs for n in p.communicate(timeout=60)[0].split()]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # every request got its own number: no increment was lost or counted twice
    assert sorted(seen) == list(range(1, 3 * HITS + 1))
    assert table.add(77, 2_000_000_000, 1_000) == 3 * HITS + 1


def test_a_window_that_ended_frees_its_slot_and_counts_start_again(table: SharedTable) -> None:
    assert [table.add(5, 100, 50) for _ in range(3)] == [1, 2, 3]
    assert table.add(5, 101, 100) == 1  # the window ending at 100 is over: a new count
    assert table.add(5, 101, 100) == 2


def test_subjects_sharing_a_probe_run_keep_their_own_counts(table: SharedTable) -> None:
    long_lived = SLOTS + 1  # home slot 1
    short = 2 * SLOTS + 1  # home slot 1 too
    assert table.add(short, 10, 5) == 1  # slot 1, a window ending at 10
    assert table.add(long_lived, 3600, 5) == 1  # slot 2: slot 1 is live
    assert table.add(long_lived, 3600, 5) == 2
    # the short window ends: slot 1 is free, but the long-lived subject's count is found in slot 2
    assert table.add(long_lived, 3600, 11) == 3
    assert table.add(short, 20, 11) == 1  # a new window for the short one, in the freed slot
    assert table.add(long_lived, 3600, 12) == 4
    assert [SLOT.unpack_from(table.mm, 16 * i)[0] for i in (1, 2)] == [short, long_lived]


def test_a_full_probe_run_counts_in_the_workers_memory_and_warns(table: SharedTable,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    for i in range(PROBES):  # every slot of home slot 9's run holds another subject's live window
        assert table.add(9 + i + SLOTS * (i + 1), 1000, 10) == 1
    assert table.add(9, 1000, 10) is None
    w = SharedWindow(table, ("pets", "{}", "rate-limit", "node"))
    w.tags[b"10.0.0.1"] = 9  # the subject hashes into that run
    w.tags_end = 1000
    with caplog.at_level(logging.WARNING, logger="tandem.ags.policies.node_counts"):
        assert [w.hit(b"10.0.0.1", 1000, 10) for _ in range(3)] == [1, 2, 3]
    assert "node rate-limit table full" in caplog.text
    assert w.hit(b"10.0.0.1", 2000, 1000) == 1  # the run's windows ended: back in the table


def test_two_policies_with_the_same_subject_count_apart(table: SharedTable) -> None:
    a = SharedWindow(table, ("pets", '{"limit": 5}', "rate-limit", "node"))
    b = SharedWindow(table, ("cats", '{"limit": 5}', "rate-limit", "node"))
    assert [a.hit("acme", 100, 1) for _ in range(3)] == [1, 2, 3]
    assert b.hit("acme", 100, 1) == 1
    assert a.hit(b"acme", 100, 1) == 1  # an IP address is never taken for a consumer of the same name
    again = SharedWindow(table, ("pets", '{"limit": 5}', "rate-limit", "node"))  # another worker's view
    assert again.hit("acme", 100, 1) == 4


def test_a_table_of_the_wrong_size_is_refused() -> None:
    fd = os.memfd_create("wrong", 0)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="node counts table"):
            SharedTable(fd)
    finally:
        os.close(fd)
