"""Targets and weighted round robin with passive health.

The order is nginx's smooth weighted round robin, precomputed once per
configuration as a cycle (weights reduced by their gcd, so {3, 1} gives
a a b a rather than a burst). A target that failed to connect is marked down
for `fail_timeout` seconds and skipped (active health checks, `health.py`,
can hold one down longer); when every target is down the
balancer still hands one out: a real connection attempt is the cheapest
probe and a recovered backend is used at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Sequence
from typing import Any
from urllib.parse import urlsplit

MAX_CYCLE = 1000


class Target:
    __slots__ = ("url", "weight", "scheme", "host", "port", "base_path", "host_header", "pool",
                 "down_until", "failures", "log_name", "join_base", "line_tail", "health")

    def __init__(self, url: str, weight: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"target url {url!r}: expected http(s)://host[:port][/path]")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"target url {url!r}: bad port") from exc
        if parts.query or parts.fragment:
            raise ValueError(f"target url {url!r}: must not have a query or fragment")
        self.url, self.weight, self.scheme = url, weight, parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        default_port = port is None or port == (443 if parts.scheme == "https" else 80)
        self.base_path = (parts.path or "").encode("ascii", "strict")
        netloc_host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (netloc_host if default_port else f"{netloc_host}:{self.port}").encode("idna")
        self.log_name = json.dumps(f"{netloc_host}:{self.port}").encode()  # for the access log
        # precomputed for the hot path: the base a non-empty rest (always "/...") is appended to, and
        # the end of the request line with the Host header
        self.join_base = self.base_path[:-1] if self.base_path.endswith(b"/") else self.base_path
        self.line_tail = b" HTTP/1.1\r\nHost: " + self.host_header + b"\r\n"
        self.pool: Any = None
        self.down_until = 0.0
        self.failures = 0
        self.health: Any = None  # tandem.ags.health.HealthState when the project has active checks

    def upstream_path(self, rest: bytes) -> bytes:
        """Target base path + what follows the context path ("/v1" + "/pets")."""
        base = self.base_path
        if not rest:
            return base or b"/"
        if base.endswith(b"/"):
            base = base[:-1]
        return base + rest if rest.startswith(b"/") else base + b"/" + rest

    def __repr__(self) -> str:
        return f"<Target {self.url} weight={self.weight} down_until={self.down_until:.1f}>"


def smooth_cycle(targets: Sequence[Target]) -> list[Target]:
    live = [t for t in targets if t.weight > 0]
    if not live:
        return []
    g = 0
    for t in live:
        g = math.gcd(g, t.weight)
    weights = [t.weight // g for t in live]
    total = sum(weights)
    if total > MAX_CYCLE:  # keep the cycle small; proportions stay close
        weights = [max(1, round(w * MAX_CYCLE / total)) for w in weights]
        total = sum(weights)
    current = [0] * len(live)
    cycle: list[Target] = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(live)), key=lambda i: current[i])
        current[best] -= total
        cycle.append(live[best])
    return cycle


class Balancer:
    __slots__ = ("targets", "cycle", "i")

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.cycle = smooth_cycle(self.targets)
        self.i = 0

    def pick(self, now: float, tried: Container[Target] = ()) -> Target | None:
        """The next target in the cycle that is up and not in `tried`; when none is: None after a failed
        try, else the next one anyway. (Its one-target case has an inlined copy in Exchange.start:
        tests/unit/test_inlined_copies.py runs both.)"""
        cycle = self.cycle
        n = len(cycle)
        if n == 0:
            return None
        i = self.i
        for _ in range(n):
            t = cycle[i]
            i = i + 1 if i + 1 < n else 0
            if t.down_until <= now and t not in tried:
                self.i = i
                return t
        if tried:  # every other target was tried in this request: give up
            return None
        t = cycle[self.i]
        self.i = self.i + 1 if self.i + 1 < n else 0
        return t

    @staticmethod
    def failed(target: Target, now: float, fail_timeout: float) -> None:
        target.failures += 1
        target.down_until = max(target.down_until, now + fail_timeout)  # (inf: the health checks hold it)

    @staticmethod
    def succeeded(target: Target) -> None:
        if target.failures and (target.health is None or not target.health.down):
            target.failures = 0
            target.down_until = 0.0
