"""Limits of the admin API (the AMS client port) and their counters.

Two layers keep a hostile or careless client from costing the AMS more than a
bounded amount of memory and event-loop time (the loop also runs the HA work,
under a 2 s watchdog):

- the connection (`tandem.ams.protocol`): a deadline for the whole request
  head, an idle keep-alive timeout, a connection cap;
- the request body (`BodyLimits`, ASGI middleware: outermost in the app for a
  declared length, right after authentication for the body itself): a
  declared `Content-Length` above `AdminMaxBodyBytes` gets 413 at once, before
  one body byte is read; a body without one is counted as it streams and
  refused at the limit (never buffered past it); a JSON body's nesting is then
  checked against `AdminMaxJSONDepth` (422) in a worker thread, from its
  brackets without parsing it, before any handler sees it.

Every refusal is counted in `AdminStats`; `AdminStats.prometheus()` gives the
lines the server's `/metrics` appends (it is registered in
`server.metric_sources`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from tandem.config.model import Profile

log = logging.getLogger("tandem.ams.limits")

# reasons a request or connection is refused (the label of tandem_admin_refused_total)
REFUSALS = ("body_too_large", "json_too_deep", "header_timeout", "body_timeout", "idle_timeout",
            "too_many_connections")
LOG_EVERY = 60.0  # s: a refusal of one kind is logged at most once a minute


@dataclass(frozen=True)
class AdminLimits:
    """The `[admin]` profile section in the units the code uses (bytes, levels, seconds)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    max_connections: int = 1024
    audit_retention_days: int = 90

    @classmethod
    def from_profile(cls, profile: Profile | None) -> AdminLimits:
        section = profile.admin if profile is not None else None
        if section is None:
            return cls()
        return cls(max_body_bytes=int(section.AdminMaxBodyBytes), max_json_depth=int(section.AdminMaxJSONDepth),
                   header_timeout=section.AdminHeaderTimeout / 1000, body_timeout=section.AdminBodyTimeout / 1000,
                   idle_timeout=section.AdminIdleTimeout / 1000,
                   max_connections=int(section.AdminMaxConnections),
                   audit_retention_days=int(section.AuditRetentionDays))


class AdminStats:
    """Counters of the admin port; thread-safe (handlers run in threads)."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.connections = 0  # open now (set by the protocol)
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refusal; log it unless one of the same kind was logged within a minute."""
        now = time.monotonic()
        with self._lock:
            self.refused[reason] += 1
            last = self._logged.get(reason)
            quiet = last is not None and now - last < LOG_EVERY
            if not quiet:
                self._logged[reason] = now
            total = self.refused[reason]
        if not quiet:
            log.warning("admin port refused (%s): %s [%d so far; logged at most once a minute]",
                        reason, detail, total)

    def prometheus(self) -> bytes:
        lines = ["# HELP tandem_admin_connections open connections on the AMS admin (client) port",
                 "# TYPE tandem_admin_connections gauge",
                 f"tandem_admin_connections {self.connections}",
                 "# HELP tandem_admin_refused_total requests and connections the admin port refused, by reason",
                 "# TYPE tandem_admin_refused_total counter"]
        with self._lock:
            for reason in sorted(set(REFUSALS) | set(self.refused)):
                lines.append(f'tandem_admin_refused_total{{reason="{reason}"}} {self.refused[reason]}')
        return ("\n".join(lines) + "\n").encode()


MAX_NODES = 1_000_000  # containers a depth walk visits at most (YAML aliases can share subtrees)
_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CURLY = bytes.maketrans(b"{}", b"[]")


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value (a scalar is 0), walking until `limit` is passed; more
    than MAX_NODES containers count as too deep (limit + 1). For YAML: JSON bodies use
    `json_too_deep`, which never parses."""
    visited = 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        visited += 1
        if visited > MAX_NODES:
            return limit + 1
        for child in (item.values() if isinstance(item, dict) else item):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


def json_too_deep(body: bytes, limit: int) -> str | None:
    """Why a JSON body nests deeper than `limit`, or None; without parsing it: strings are
    cut out, then every innermost bracket pair is removed once per level (each pass is one
    C-speed `bytes.replace`, so at most `limit + 1` passes over at most the body's size).
    Malformed JSON is left to the handler (a 400 naming the body)."""
    brackets = _STRING.sub(b"", body).translate(_CURLY, _NOT_BRACKETS)
    too_deep = f"nested deeper than {limit} levels (AdminMaxJSONDepth)"
    if b"[" * (limit + 1) in brackets:  # the common attack, found in one pass
        return too_deep
    for _ in range(limit):
        if not brackets:
            return None
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return None  # unbalanced: malformed, the parser says where
        brackets = shorter
    return too_deep if brackets and b"[]" in brackets else None


def _is_json(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media = bytes(value).split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True  # FastAPI parses a body without a content type as JSON


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class BodyLimits:
    """ASGI middleware: body size and JSON nesting limits, before anything parses the body."""

    def __init__(self, app: Any, limits: AdminLimits, stats: AdminStats, declared_only: bool = False) -> None:
        # declared_only: the outer instance, before authentication, refuses a declared length
        # only; the inner one, after it, reads (so no unauthenticated body is ever buffered)
        self.app, self.limits, self.stats, self.declared_only = app, limits, stats, declared_only

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE") \
                and _content_length(scope) in (None, 0):
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, send, f"Content-Length {declared}")
            return
        if self.declared_only:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, send, f"more than {limit} bytes streamed")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if body and _is_json(scope):
            reason = await anyio.to_thread.run_sync(json_too_deep, body, self.limits.max_json_depth)
            if reason is not None:
                self.stats.refuse("json_too_deep", f"{scope.get('method')} {scope.get('path')}: {reason}")
                await send_error(send, 422, {"code": "too_deep", "message": f"body: {reason}", "field": "body",
                                             "detail": [{"loc": ["body"], "msg": reason, "type": "too_deep",
                                                         "field": "body"}]})
                return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], send: Send, what: str) -> None:
        limit = self.limits.max_body_bytes
        self.stats.refuse("body_too_large", f"{scope.get('method')} {scope.get('path')}: {what}")
        message = f"body: larger than {limit} bytes (AdminMaxBodyBytes)"
        # close the connection: the rest of the body is never read
        await send_error(send, 413, {"code": "body_too_large", "message": message, "field": "body",
                                     "limit": limit,
                                     "detail": [{"loc": ["body"], "msg": message, "type": "body_too_large",
                                                 "field": "body"}]}, close=True)


async def send_error(send: Send, status: int, body: dict[str, Any], close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
