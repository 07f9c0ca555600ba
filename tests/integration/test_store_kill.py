"""SIGKILL a process in the middle of commits: the store reopens with no torn transaction."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from tandem.store import open_store

KEYS = [f"k{i}" for i in range(5)]
COMMITS_BEFORE_KILL = 200
DEADLINE_S = 60.0

CHILD = f"""
import sys
from tandem.store import Op, open_store
store = open_store(sys.argv[1])
n = store.last_lsn()
while True:
    n += 1
    store.commit([Op("c", k, n) for k in {KEYS!r}])
    print(n, flush=True)
"""


def run_child_until(location: str, commits: int) -> int:
    """Start a committing child, SIGKILL it once it reported `commits` commits; return the last it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, location], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    seen: list[int] = []
    buf = b""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + DEADLINE_S
        while len(seen) < commits:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"child reported only {len(seen)} commits within {DEADLINE_S} s"
            if not sel.select(timeout=remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                _, err = proc.communicate(timeout=10)
                raise AssertionError(
                    f"child exited ({proc.returncode}) after {len(seen)} commits: {err.decode()}"
                )
            buf += chunk
            *lines, buf = buf.split(b"\n")
            seen.extend(int(line) for line in lines if line)
        sel.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return seen[-1]


def test_sigkill_mid_commit_leaves_no_torn_transaction(tmp_path: Path) -> None:
    location = str(tmp_path / "store")
    previous = 0
    for _round in range(3):
        reported = run_child_until(location, COMMITS_BEFORE_KILL)
        store = open_store(location)
        try:
            last = store.last_lsn()
            values = {store.get("c", k) for k in KEYS}
            assert values == {last}, f"torn transaction: keys hold {values}, last_lsn {last}"
            assert last >= reported >= previous + COMMITS_BEFORE_KILL  # whatever commit() returned survived
            log = store.changes_since(0, limit=last + 10)
            assert [c.lsn for c in log] == list(range(1, last + 1)) and store.log_size() == last
            assert all(len(c.ops) == 5 and {op.value for op in c.ops} == {c.lsn} for c in log)
            assert len(store.digest()) == 64
            previous = last
        finally:
            store.close()
