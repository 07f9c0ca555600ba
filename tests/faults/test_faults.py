"""Issue 12, the short nemesis run of `make test`: a seeded schedule of faults against
real pairs in background mode (supervisor and watchdog in play), one pair per component
and mode: AMS and AGS pairs, each replicated sync, replicated async and shared.

Each half runs in its own network namespace; see `nemesis.py` for the topology, the
fault kinds and the loads. The history checker asserts, after the faults, once the pair
is serving and in sync and both servers are stopped:

- AMS: every acknowledged (2xx) consumer is in both halves' stores (in async mode a
  write may be lost by design on a failover, but never be left on one half only);
  nothing is stored that no client attempted, nor anything answered as failed;
- AGS (a standalone AMS and an echo backend in the root namespace; clients through
  the gateway pair on two projects behind api-key + quota): on every half the stored
  quota counter is >= the acknowledged (2xx) requests (async: may be lower, by design,
  but the halves agree) and <= the requests that may have been counted; the halves'
  counters agree; a project whose limit is reached let no more than its limit through;
  the configuration deployed before the run (its revision) is stored on every half;
- AGS queued delivery (a third project, `queue`, queued to a second echo backend that
  logs every request and is down, refusing connections, for 1-3 s every 3-7 s, seeded;
  clients POST with a unique Idempotency-Key; after the faults, the backend up, the run
  waits at most 60 s for the queue to drain): every key answered 202 was delivered at
  least once (async: a message lost on a failover by design is counted, not a
  violation, unless a half's store still holds it); no key was delivered, nor is
  stored, that no client sent or that was refused (413, 503 `queue_full`, 4xx); a key
  answered "unknown" (503 `delivery_unavailable`, no answer) may or may not be; every
  delivery carries the message id of its 202 and the body sent; sync: both halves'
  stores hold the same message ids. Keys delivered more than once are counted
  (duplicates: messages in flight at a kill or a backend stop), not a violation;
- the sampler (25 ms) never saw two servers serving at one instant;
- a serving server's epoch and the LockFile's epoch never go back;
- the pair recovered (one serving, the other Passive, the LockFile naming both in sync)
  within 20 s of every fault.

FAULTS_SEED (default 12), FAULTS_N (faults per AMS mode, default 8), FAULTS_AGS_N
(faults per AGS mode, default 5), FAULTS_PAUSE (each client's pause between requests,
default 0.03 s), FAULTS_AGS_CAP (the capped project's limit, default 150),
FAULTS_AGS_QUEUE (queue clients, default 2; 0: no queued delivery) override the run; the same seed gives the same schedule. The long form is `bench/faults.py`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nemesis  # tests/faults is on sys.path (conftest.py)
import pytest

SEED = nemesis.seed_from_env(12)
N = {"AMS": int(os.environ.get("FAULTS_N", "8")), "AGS": int(os.environ.get("FAULTS_AGS_N", "5"))}
CASES = [(c, m) for c in nemesis.COMPONENTS for m in nemesis.MODES]


@pytest.mark.timeout(290)
@pytest.mark.parametrize(("component", "mode"), CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_no_acknowledged_write_lost_under_faults(component: str, mode: str) -> None:
    schedule = nemesis.plan(SEED, list(nemesis.MODES), N[component])[mode]
    env = "FAULTS_N" if component == "AMS" else "FAULTS_AGS_N"
    print(f"faults seed={SEED} (FAULTS_SEED={SEED} {env}={N[component]} to reproduce) {component}/{mode}: "
          f"{[p.kind for p in schedule]}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"tandem-faults-{os.getpid()}-") as tmp:
        report = nemesis.run_mode(mode, SEED, schedule, Path(tmp), lambda s: print(s, flush=True),
                                  tag=nemesis.tag(component, mode), component=component)
    print(nemesis.format_report([report]), flush=True)
    assert report.acked > 0, "no request was acknowledged at all"
    if component == "AGS" and nemesis.AgsLoad.default_queue_clients() > 0:
        assert report.queue.get("accepted", 0) > 0, "no queued message was accepted at all"
    assert not report.violations(), f"seed {SEED}, {component}/{mode}:\n" + "\n".join(report.violations())
