"""The long nemesis run of issue 12: seeded faults against real background AMS and AGS
pairs in every mode (replicated sync, replicated async, shared), with the history checker
of tests/faults/nemesis.py.

    .venv/bin/python bench/faults.py [--faults N] [--seed S] [--modes sync,async,shared]
                                     [--components AMS,AGS] [--write docs/benchmarks.md]

N faults in all, split evenly over the components and modes (per component, the schedule
cycles through every kind). Prints the seed first, a line per fault, then the counts and
the per-kind recovery table (per component/mode and over all); with --write, replaces the
"## Faults" section of the file. Exits 1 on any violation (lost or phantom write, quota
increment or queued message, split brain, epoch regression, no recovery).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "faults"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # tests.support

import nemesis  # noqa: E402
from failover import write_section  # noqa: E402


def section(args: argparse.Namespace, seed: int, reports: list[nemesis.Report], took: float) -> str:
    total = sum(len(r.faults) for r in reports)
    mode_rows = "\n".join(
        f"| {r.component} | {r.mode} | {len(r.faults)} | {r.acked} | {r.unknown} | {len(r.lost)} | "
        f"{len(r.phantoms)} | {len(r.split_brain)} | {len(r.epoch_regressions)} | {r.diverged_copies} | "
        f"{len(r.not_recovered)} | {r.serving_share * 100:.1f}% |" for r in reports)

    def rows(per_label: bool) -> str:
        return "\n".join(f"| {lb} | {k} | {n} | {s} | {y} | {nr} | {g} |"
                         for lb, k, n, s, y, nr, g in nemesis.kind_table(reports, per_label))
    quota = "\n".join(f"- {r.label}: {q}" for r in reports for q in r.quota) or "- (no AGS run)"
    queue_rows = "\n".join(
        f"| {r.component} | {r.mode} | {q.get('accepted', 0)} | {q.get('delivered', 0)} | {q.get('duplicates', 0)} | "
        f"{q.get('unknown', 0)} ({q.get('unknown_delivered', 0)}) | {q.get('refused', 0)} | "
        f"{len(r.queue_lost)}{' (async, allowed)' if r.mode == 'async' and r.queue_lost and not r.queue_asserted_lost else ''} | "
        f"{len(r.queue_phantoms)} | {q.get('backend_down', 0)} |"
        for r in reports for q in [r.queue] if q) or "| (no AGS run with queued delivery) |"
    tracebacks = sum(len(r.tracebacks) for r in reports)
    violations = [f"- {r.label}: {v}" for r in reports for v in r.violations()]
    verdict = "No violation." if not violations else "Violations:\n\n" + "\n".join(violations)
    return f"""## Faults

Nemesis run (issue 12): real AMS and AGS pairs in background mode (supervisor and
watchdog in play), each half in its own network namespace with a private backchannel
link, stores on small tmpfs mounts, LockFile on the shared filesystem. AMS pairs: three
clients create unique consumers through either client address. AGS pairs: a standalone
AMS and an echo backend in the root namespace; three clients send requests through either
gateway, on two projects behind api-key + quota (one with a limit never reached, one
whose limit of {nemesis.AgsLoad.default_cap()} is reached on purpose); every 2xx is an acknowledged
increment. On a third project with queued delivery (backoff 0.1-1 s, 1000 attempts),
{nemesis.AgsLoad.default_queue_clients()} more clients POST small messages, each with its own Idempotency-Key, for a
second echo backend that logs every request and is stopped (connections refused) for
1-3 s every 3-7 s, seeded, and up at the end. A sampler polls both servers every 25 ms. Faults, cycled in seeded order:
kill -9 of the active / the passive / both; SIGSTOP of either for 1-4 s; either server's
isolation-probe target refusing for 3 s; the backchannel blackholed for 3 s; the
LockFile moved away, or its folder, for 2 s; the active's store disk full for 3 s.
After each fault the run waits (20 s at most) for a serving pair whose LockFile names
both halves in sync. Clock jumps are not injected (no safe way without touching the
machine's clock).

Checked at the end, both servers stopped: AMS, every acknowledged consumer on both
halves and nothing no client attempted; AGS, on both halves each quota counter >= the
acknowledged requests and <= the requests that may have been counted, the halves'
counters equal, no more than the limit let through, and the configuration revision
deployed before the run stored; AGS queued delivery, after waiting (60 s at most, the
backend up) for the queue to drain: every message answered 202 delivered at least once,
nothing delivered or stored that no client sent or that was refused (413, 503
`queue_full`, 4xx), each delivery with its 202's message id and body, and (sync) the
same message ids in both halves' stores; both, no two servers serving at one instant,
epochs never going back, recovery after every fault. (Async replication may lose the
last writes, increments or accepted messages of a failover by design; counted in
"lost", not a violation, unless a half still holds the message.)

{total} faults, seed {seed}, {took / 60:.0f} min.

| component | mode | faults | acked | unknown | lost | phantoms | split-brain instants | epoch regressions | diverged copies | not recovered | serving |
|---|---|---|---|---|---|---|---|---|---|---|---|
{mode_rows}

AGS quota counters (acked: 2xx; may_count: requests sent and not answered 4xx; stored:
the counter on each half's store):

{quota}

AGS queued delivery (accepted: 202 with an id; delivered: accepted keys in the backend's
log; duplicates: keys delivered more than once, expected for messages in flight at a
kill or a backend stop, not a violation; unknown: 503 `delivery_unavailable` or no
answer, in brackets how many were delivered anyway; refused: 413, 503 `queue_full`,
4xx; lost: accepted, never delivered; phantoms: delivered or stored, never sent or
refused; backend down: the backend's down phases):

| component | mode | accepted | delivered | duplicates | unknown (delivered) | refused | lost | phantoms | backend down |
|---|---|---|---|---|---|---|---|---|---|
{queue_rows}

Recovery per kind, seconds from the fault's start (p50 / p99 / max), to a serving
server, and to a serving, in-sync pair (a fault lasting d seconds counts d), over all
runs:

| runs | kind | n | to serving | to serving and in sync | not recovered | goal misses |
|---|---|---|---|---|---|---|
{rows(False)}

The same per component and mode:

| component/mode | kind | n | to serving | to serving and in sync | not recovered | goal misses |
|---|---|---|---|---|---|---|
{rows(True)}

{verdict} Python tracebacks in the server logs: {tracebacks}.

Command: `.venv/bin/python bench/faults.py --faults {args.faults} --seed {seed} --modes {','.join(args.modes)} --components {','.join(args.components)} --write docs/benchmarks.md`
({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, 2-core machine shared with other work).
"""


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--faults", type=int, default=int(os.environ.get("FAULTS_N", "330")))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--modes", type=_list, default=list(nemesis.MODES))
    ap.add_argument("--components", type=lambda s: [c.upper() for c in _list(s)], default=list(nemesis.COMPONENTS))
    ap.add_argument("--tmpfs-mb", type=int, default=256)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    bad = [m for m in args.modes if m not in nemesis.MODES]
    if bad:
        ap.error(f"--modes: unknown {bad} (known: {', '.join(nemesis.MODES)})")
    bad = [c for c in args.components if c not in nemesis.COMPONENTS]
    if bad:
        ap.error(f"--components: unknown {bad} (known: {', '.join(nemesis.COMPONENTS)})")
    seed = args.seed if args.seed is not None else nemesis.seed_from_env()
    runs = [(c, m) for c in args.components for m in args.modes]
    per_run = math.ceil(args.faults / len(runs))
    print(f"faults seed={seed} faults={args.faults} ({per_run} per run) components={','.join(args.components)} "
          f"modes={','.join(args.modes)}", flush=True)
    schedules = nemesis.plan(seed, args.modes, per_run)
    reports = []
    t0 = time.monotonic()
    for component, mode in runs:
        with tempfile.TemporaryDirectory(prefix=f"tandem-faults-{os.getpid()}-") as tmp:
            reports.append(nemesis.run_mode(mode, seed, schedules[mode], Path(tmp),
                                            lambda s: print(s, flush=True), tag=nemesis.tag(component, mode),
                                            tmpfs_mb=args.tmpfs_mb, component=component))
        print(reports[-1].summary(), flush=True)
    took = time.monotonic() - t0
    print(nemesis.format_report(reports, per_label=True))
    if args.write:
        write_section(args.write, "Faults", section(args, seed, reports, took))
    failed = [v for r in reports for v in r.violations()]
    if failed:
        print(f"seed {seed}: {len(failed)} violations", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
