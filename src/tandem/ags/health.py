"""Active health checks: probe each target of a project that asks for it, take it out when it fails.

A project's `health_check` (`{"path": "/health", "interval": 5, "timeout": 1,
"healthy": 2, "unhealthy": 3}`) makes every serving process send
`GET <path>` to each of the project's targets every `interval` seconds, on a
fresh connection (`Connection: close`, never a pooled one: a probe must not
take a slot a request could use). A 2xx or 3xx status line within `timeout`
is a success; anything else (refused, reset, timeout, another status) a
failure. After `unhealthy` failures in a row the target is out of the
rotation (`Target.down_until = inf`) until `healthy` successes in a row bring
it back. Passive health (a failed connect) works alongside: it can take a
target out for `fail_timeout`, but it never brings back one the checks hold
down.

The checker runs over whatever `projects()` returns: a serving process's
configuration (`Gateway`), or the projects the message queue delivers to
(`delivery/queue.py`), so queued deliveries avoid a target the checks hold down.

Targets start healthy. When every target of a project is down the balancer
still hands one out (as with passive health): a real request is then the
probe, and a backend the checks missed is used at once. Each serving process
(each worker) probes on its own. Transitions are logged once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tandem.ags.balancer import Balancer, Target

log = logging.getLogger("tandem.ags.health")

INF = float("inf")
TICK = 0.1  # how often the checker looks for due probes
MAX_PROBES = 64  # probes in flight at once per process


class Check:
    """A project's validated `health_check` (the AMS model is tandem.ams.models.HealthCheck)."""

    __slots__ = ("path", "interval", "timeout", "healthy", "unhealthy")

    def __init__(self, raw: dict[str, Any]) -> None:
        path = raw.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "\r\n "):
            raise ValueError(f"health_check.path: expected a path starting with '/', got {path!r}")
        self.path = path.encode("latin-1")
        self.interval = _number(raw, "interval", 5.0, 0.1, 3600.0)
        self.timeout = _number(raw, "timeout", 1.0, 0.01, 60.0)
        if self.timeout >= self.interval:
            raise ValueError("health_check.timeout must be shorter than its interval")
        self.healthy = int(_number(raw, "healthy", 2, 1, 100))
        self.unhealthy = int(_number(raw, "unhealthy", 3, 1, 100))

    def __repr__(self) -> str:
        return (f"<Check {self.path.decode()} every {self.interval}s timeout {self.timeout}s "
                f"healthy {self.healthy} unhealthy {self.unhealthy}>")


def _number(raw: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"health_check.{key}: expected a number from {low} to {high}, got {value!r}")
    return float(value)


class HealthState:
    """What the checks know of one target (kept on the Target, so it lives as long as the project)."""

    __slots__ = ("due", "ok", "failed", "down", "probing")

    def __init__(self) -> None:
        self.due = 0.0
        self.ok = 0
        self.failed = 0
        self.down = False
        self.probing = False


def record(target: Target, state: HealthState, check: Check, success: bool, reason: str, project: str) -> None:
    """One probe's outcome: count it, and take the target out or bring it back at the thresholds."""
    if success:
        state.ok += 1
        state.failed = 0
        if state.down and state.ok >= check.healthy:
            state.down = False
            target.down_until = 0.0
            target.failures = 0
            log.info("health: target %s of %s is up again (%d good checks)", target.url, project, state.ok)
    else:
        state.failed += 1
        state.ok = 0
        if not state.down and state.failed >= check.unhealthy:
            state.down = True
            log.warning("health: target %s of %s is down (%d failed checks; last: %s)", target.url, project,
                        state.failed, reason)
        if state.down:
            target.down_until = INF


async def probe(target: Target, check: Check) -> tuple[bool, str]:
    """(success, reason): GET the check path on a fresh connection within the check's timeout."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            ctx = ssl.create_default_context() if target.scheme == "https" else None
            reader, writer = await asyncio.open_connection(target.host, target.port, ssl=ctx,
                                                           server_hostname=target.host if ctx else None)
            writer.write(b"GET " + check.path + b" HTTP/1.1\r\nHost: " + target.host_header +
                         b"\r\nUser-Agent: tandem-health-check\r\nConnection: close\r\n\r\n")
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer within {check.timeout:g} s"
    except (OSError, ssl.SSLError) as exc:
        return False, exc.strerror or str(exc) or type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, f"not an HTTP response: {line[:60]!r}"
    status = int(parts[1])
    return 200 <= status < 400, f"status {status}"


class Checked(Protocol):
    """What the checker reads of a project."""

    name: str
    health: Check | None
    balancer: Balancer


class HealthChecker:
    """Probes the targets of the checked projects among `projects()` (each call: the current ones)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, projects: Callable[[], Iterable[Checked]]) -> None:
        self.loop, self.projects = loop, projects
        self.inflight: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<HealthChecker inflight={len(self.inflight)}>"

    def start(self) -> None:
        if self.task is None:
            self.task = self.loop.create_task(self.run())

    async def stop(self) -> None:
        tasks = [t for t in (self.task, *self.inflight) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.task = None
        self.inflight.clear()

    async def run(self) -> None:
        while True:
            try:
                self.tick(self.loop.time())
            except Exception:  # the checker must outlive a bug in one configuration
                log.exception("health checker failed")
            await asyncio.sleep(TICK)

    def tick(self, now: float) -> None:
        for project in self.projects():
            check = project.health
            if check is None:
                continue
            for target in project.balancer.targets:
                state = target.health
                if state is None:
                    state = target.health = HealthState()
                if state.probing or state.due > now or len(self.inflight) >= MAX_PROBES:
                    continue
                state.due = now + check.interval
                state.probing = True
                task = self.loop.create_task(self.one(target, state, check, project.name))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)

    async def one(self, target: Target, state: HealthState, check: Check, project: str) -> None:
        try:
            ok, reason = await probe(target, check)
            record(target, state, check, ok, reason, project)
        finally:
            state.probing = False
