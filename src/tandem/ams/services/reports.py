"""What the gateways report: each AGS half's HA status and its traffic (docs/config-feed.md "Reports").

Every AGS server process, active or passive, POSTs a report about once a
second (`tandem.ags.reporter`). `GatewayReports` keeps, per (environment,
gateway): the last HA status with when it came (monotonic, for staleness;
wall clock, to show), the revision it serves, and its traffic as 10 s
buckets (`bucket start -> project -> {requests, classes, errors, latency}`),
the complete ones of the last 5 minutes plus the partial current one, which
each report replaces.

It lives in memory only, never in the store: it is live telemetry, out of
date within seconds, resent by every gateway every second, and a new active
AMS rebuilds it from the first reports it gets (it answers `known: 0`, and
each gateway sends its whole window). Writing it to the store would put a
change per gateway per second into the replicated change log for nothing.

Quantiles (`quantile`) are computed from the merged histogram counts the way
Prometheus's `histogram_quantile` does: find the bucket that holds the rank
`q * count`, interpolate linearly between its lower and upper bound (0 for
the first); a rank in the overflow bucket (above the last bound, 30 s)
answers the last bound.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tandem.ams.app_state import now_iso

# the gateway's latency histogram bounds in seconds (tandem.ags.metrics.BUCKETS; the AMS does not import
# the gateway: tests/unit/test_gateway_reports.py checks that they are the same)
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_COUNTS = len(LATENCY_BOUNDS) + 1  # the last one: above the last bound
INTERVAL = 10  # seconds per bucket
WINDOW = 300  # seconds of complete buckets kept per gateway
STALE = 10.0  # an HA status older than this is not shown as the gateway's state
FORGET = 600.0  # a gateway silent this long is dropped (its traffic is out of every window by then)
MAX_GATEWAYS = 1000


def bucket_start(now: float) -> int:
    return int(now // INTERVAL) * INTERVAL


def quantile(q: float, counts: list[int], bounds: tuple[float, ...] = LATENCY_BOUNDS) -> float | None:
    """The q-quantile (seconds) of a histogram of `counts` per bucket of `bounds` (+ overflow), like
    Prometheus's histogram_quantile; None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class _Acc:
    """Traffic summed over gateways (and over buckets, for totals)."""

    requests: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_COUNTS)

    def add(self, p: dict[str, Any]) -> None:
        self.requests += p["requests"]
        for k, n in p.get("classes", {}).items():
            self.classes[k] = self.classes.get(k, 0) + n
        for k, n in p.get("errors", {}).items():
            self.errors[k] = self.errors.get(k, 0) + n
        for i, n in enumerate(p.get("latency", ())[:LATENCY_COUNTS]):
            self.latency[i] += n

    def merge(self, other: _Acc) -> None:
        self.add({"requests": other.requests, "classes": other.classes, "errors": other.errors,
                  "latency": other.latency})

    def view(self, seconds: float) -> dict[str, Any]:
        return {"requests": self.requests, "rps": round(self.requests / seconds, 3) if seconds > 0 else 0.0,
                "p50_ms": _ms(quantile(0.5, self.latency)), "p99_ms": _ms(quantile(0.99, self.latency)),
                "classes": dict(sorted(self.classes.items())), "errors": dict(sorted(self.errors.items()))}


@dataclass
class _Gateway:
    environment: str
    name: str
    pair: str | None = None
    ha: dict[str, Any] = field(default_factory=dict)
    applied: int | None = None
    received: float = 0.0  # monotonic
    received_at: float = 0.0  # wall clock
    complete: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    partial: tuple[int, dict[str, dict[str, Any]]] | None = None

    def known(self) -> int:
        return max(self.complete, default=0)


class GatewayReports:
    """The gateways' last reports, in memory (see the module docstring: live telemetry, not stored).

    Thread-safe: reports arrive on the event loop, reads run in the thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gateways: dict[tuple[str, str], _Gateway] = {}

    def __repr__(self) -> str:
        return f"<GatewayReports gateways={len(self._gateways)}>"

    def receive(self, report: dict[str, Any]) -> int:
        """Take one report (already validated: schemas.GatewayReport); answer `known`, the start of the
        newest complete bucket now held for that gateway (0: none; send the whole window)."""
        key = (report["environment"], report["gateway"])
        buckets = sorted(report.get("traffic", {}).get("buckets", []), key=lambda b: b["start"])
        with self._lock:
            gw = self._gateways.get(key)
            if gw is None:
                self._forget(time.monotonic())
                gw = self._gateways[key] = _Gateway(*key)
            gw.pair, gw.ha, gw.applied = report.get("pair"), report["ha"], report.get("applied")
            gw.received, gw.received_at = time.monotonic(), time.time()
            if buckets:  # the newest is the partial one, the others are complete
                *done, current = buckets
                gw.partial = (current["start"], current["projects"])
                for b in done:
                    gw.complete[b["start"]] = b["projects"]
                oldest = current["start"] - WINDOW  # the gateway's own clock: a skewed one is not pruned away
                for start in [s for s in gw.complete if s < oldest or s >= current["start"]]:
                    del gw.complete[start]
            return gw.known()

    def _forget(self, now: float) -> None:
        for key in [k for k, g in self._gateways.items() if now - g.received > FORGET]:
            del self._gateways[key]
        while len(self._gateways) >= MAX_GATEWAYS:
            del self._gateways[min(self._gateways, key=lambda k: self._gateways[k].received)]

    def ha(self, environment: str, gateway: str, now: float | None = None) -> dict[str, Any] | None:
        """The gateway's last HA status, or None when it never reported or its last report is stale
        (`now`: a time.monotonic() reading)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gw = self._gateways.get((environment, gateway))
            if gw is None or now - gw.received > STALE:
                return None
            return dict(gw.ha)

    def reported_at(self, environment: str, gateway: str) -> str | None:
        with self._lock:
            gw = self._gateways.get((environment, gateway))
            return now_iso(gw.received_at) if gw is not None else None

    def gateways(self) -> list[dict[str, Any]]:
        """Every gateway that reported within FORGET s: environment, name, pair, applied, state, reported_at."""
        with self._lock:
            return [{"environment": g.environment, "name": g.name, "pair": g.pair, "applied": g.applied,
                     "state": g.ha.get("state"), "reported_at": now_iso(g.received_at)}
                    for g in self._gateways.values()]

    def traffic(self, minutes: int, project: str | None = None, environment: str | None = None,
                now: float | None = None) -> list[dict[str, Any]]:
        """Per project, summed over every gateway (of `environment`, if given): the last `minutes`
        as 10 s steps, oldest first, zero-filled, the current (partial) step last; and totals.
        Sorted by requests, most first."""
        now = time.time() if now is None else now
        current = bucket_start(now)
        steps = [current - i * INTERVAL for i in range(minutes * 60 // INTERVAL - 1, -1, -1)]
        first = steps[0]
        per: dict[str, dict[int, _Acc]] = {}
        with self._lock:
            for gw in self._gateways.values():
                if environment is not None and gw.environment != environment:
                    continue
                held = list(gw.complete.items()) + ([gw.partial] if gw.partial is not None else [])
                for start, projects in held:
                    if not first <= start <= current:
                        continue
                    for name, p in projects.items():
                        if project is not None and name != project:
                            continue
                        per.setdefault(name, {}).setdefault(start, _Acc()).add(p)
        span = {s: INTERVAL if s < current else min(float(INTERVAL), max(1.0, now - s)) for s in steps}
        out: list[dict[str, Any]] = []
        for name, by_start in per.items():
            total = _Acc()
            series = []
            for s in steps:
                acc = by_start.get(s) or _Acc()
                total.merge(acc)
                series.append({"start": s, **acc.view(span[s])})
            out.append({"project": name, "series": series, "totals": total.view(sum(span.values()))})
        out.sort(key=lambda p: (-p["totals"]["requests"], p["project"]))
        return out
