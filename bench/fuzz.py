"""The longer fuzzing run (issue 18): the gateway's request-head handling and the config-feed
document parser, for a time budget each, every finding kept (not stopped at the first).

    .venv/bin/python bench/fuzz.py --minutes 10 [--targets heads,raw,documents] [--write docs/benchmarks.md]

The strategies and the rules are `tests/support/fuzz.py`'s, the same the short runs in `make test`
use (tests/integration/test_gateway_fuzz.py); here they run in batches of random seeds until each
target's share of the budget is spent. A finding is one distinct problem (its text with numbers and
quoted bytes folded), counted, with the smallest input that showed it. Exits 1 on any finding.
With --write, replaces the "## Fuzzing" section of the file.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests.support import fuzz  # noqa: E402

BATCH = 200  # examples per hypothesis run (one seed)


@dataclass
class Finding:
    problem: str
    count: int = 0
    smallest: bytes = b""


@dataclass
class Result:
    target: str
    executions: int = 0
    seconds: float = 0.0
    findings: dict[str, Finding] = field(default_factory=dict)

    def add(self, problem: str, data: bytes) -> None:
        kind = re.sub(rb"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"".decode(), "b'…'", problem)
        kind = re.sub(r"\d+(\.\d+)?", "N", kind)
        f = self.findings.setdefault(kind, Finding(problem, 0, data))
        f.count += 1
        if len(data) < len(f.smallest):
            f.problem, f.smallest = problem, data


def run_batches(result: Result, strategy: Any, check: Callable[[bytes], list[str]], budget: float) -> None:
    t0 = time.monotonic()
    rng = random.Random(20261207)
    while time.monotonic() - t0 < budget:
        @seed(rng.getrandbits(64))
        @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(data=strategy)
        def one(data: bytes) -> None:
            if time.monotonic() - t0 >= budget:
                return
            result.executions += 1
            for problem in check(data):
                result.add(problem, data)
        one()
    result.seconds = time.monotonic() - t0


def fuzz_heads(targets: list[str], budget: float) -> list[Result]:
    results = []
    with fuzz.FuzzGateway() as gw:
        probe = fuzz.HeadProbe(gw)
        for name in targets:
            result = Result(name)
            strategy = fuzz.request_inputs() if name == "heads" else fuzz.raw_inputs()
            run_batches(result, strategy, lambda data: probe.run(data).problems, budget)
            results.append(result)
        after = gw.problems()
    for problem in after:
        results[-1].add("after the run: " + problem, b"")
    return results


def fuzz_documents(budget: float) -> Result:
    result = Result("documents")
    target = fuzz.DocumentTarget()
    try:
        def check(raw: bytes) -> list[str]:
            problem = target.problem(raw)
            return [] if problem is None else [problem]
        run_batches(result, fuzz.document_inputs(), check, budget)
    finally:
        target.close()
    return result


WHAT = {
    "heads": "request heads from the grammar (1-3 pipelined, byte mutations) to a real gateway on loopback",
    "raw": "random bytes and HTTP token soup to the same gateway",
    "documents": "config-feed documents (valid, mutated, random, hostile text) through validate + compile",
}


def render(results: list[Result], minutes: float, started: str) -> str:
    lines = ["## Fuzzing", "",
             f"`.venv/bin/python bench/fuzz.py --minutes {minutes:g}` ({started}; the rules are"
             " `tests/support/fuzz.py`'s, the same the short runs in `make test` check).", "",
             "| target | inputs | executions | time | per second | findings |", "|---|---|---|---|---|---|"]
    for r in results:
        rate = r.executions / r.seconds if r.seconds else 0.0
        lines.append(f"| {r.target} | {WHAT[r.target]} | {r.executions:,} | {r.seconds:.0f} s | {rate:,.0f} | "
                     f"{len(r.findings)} |")
    for r in results:
        for f in r.findings.values():
            lines.append(f"\n- {r.target}, {f.count}x: {f.problem} (smallest input {f.smallest[:200]!r})")
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Fuzzing\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(lambda _m: text + "\n", doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="the whole budget, shared by the targets")
    ap.add_argument("--targets", type=lambda s: [t for t in s.split(",") if t], default=list(WHAT))
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    unknown = sorted(set(args.targets) - set(WHAT))
    if unknown:
        ap.error(f"unknown target(s) {unknown}; choose from {sorted(WHAT)}")
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    budget = args.minutes * 60 / len(args.targets)
    results: list[Result] = []
    heads = [t for t in args.targets if t in ("heads", "raw")]
    if heads:
        results += fuzz_heads(heads, budget)
    if "documents" in args.targets:
        results.append(fuzz_documents(budget))
    text = render(results, args.minutes, started)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
