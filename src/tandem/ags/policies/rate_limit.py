"""`rate-limit`: at most `limit` requests per fixed window per client IP or consumer.

    {"type": "rate-limit", "limit": 100, "window": 1, "unit": "second", "by": "ip",
     "scope": "node", "fail": "local", "redis_url": null, "redis_timeout": 0.1, "headers": true}

Windows are fixed and aligned to multiples of their length in epoch seconds
(window index = floor(now / length)), so every gateway of a cluster agrees
on them without talking, and 1,000 requests at a limit of 100 in one window
pass exactly 100. `by = "consumer"` counts the consumer an auth step
identified (`ex.consumer`), or the client IP when there is none.

`scope = "node"` counts once per gateway node, keeping only the current
window, in `Services` state keyed by the project and policy (a redeploy keeps
the counts): synchronous, no awaitable. With one serving process that is a
dict update in its memory; with `Workers` > 1 it is the table the worker
processes share (`node_counts`: a locked 16-byte slot in shared memory per
subject), so N workers still let `limit` requests through, not N x `limit`.
`scope = "cluster"` counts in Redis (`redis_counter.RedisCounter`, one
client per `redis_url` per process): one pipelined round trip per request,
each request counted exactly once. When Redis is unreachable (noticed
within `redis_timeout`, then skipped by the circuit breaker until a probe
reconnects), `fail` decides: `open` lets the request through uncounted (no
RateLimit-* headers then: nothing was counted), `closed` answers 503
`rate_limit_unavailable`, `local` counts as node scope would meanwhile.
A Redis problem never becomes a 401/403 and never makes a request wait past
its timeout.

Over the limit: 429 `rate_limited` with `Retry-After` (seconds until the
window ends, >= 1). With `headers` (default) every counted response carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds
until the window ends), proxied answers and the gateway's own alike.
"""

from __future__ import annotations

import hashlib
import json
from time import time
from typing import TYPE_CHECKING, Any

from tandem.ags.policies.base import Answer, Step, add_response_header
from tandem.ags.policies.chain import Context, builder
from tandem.ags.policies.node_counts import SharedWindow
from tandem.ags.policies.redis_counter import RedisCounter, RedisUnavailable, parse_url
from tandem.model.policies import UNIT_SECONDS, RateLimitPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

EXPIRE_SLACK_MS = 1000  # a Redis key outlives its window a little: gateways' clocks differ slightly


class WindowCounts:
    """One policy's counts in the current window (older windows are dropped when a new one starts)."""

    __slots__ = ("index", "counts")

    def __init__(self) -> None:
        self.index = -1
        self.counts: dict[Any, int] = {}

    def __repr__(self) -> str:
        return f"<WindowCounts window={self.index} subjects={len(self.counts)}>"

    def hit(self, subject: Any, index: int) -> tuple[int, int]:
        """Count one request: (its number in the window, the window it was counted in)."""
        if index != self.index:
            if index > self.index:
                self.index = index
                self.counts = {}
            else:  # the clock stepped back: keep counting in the newer window
                index = self.index
        counts = self.counts
        n = counts.get(subject, 0) + 1
        counts[subject] = n
        return n, index


def window_of(now: float, length: int) -> tuple[int, int]:
    """(window index, whole seconds until it ends, >= 1) at epoch time `now`."""
    t = int(now)
    index = t // length
    return index, (index + 1) * length - t


class RateLimitStep(Step):
    kind = "rate-limit"

    def __init__(self, limit: int, length: int, by: str, headers: bool, node: WindowCounts,
                 redis: RedisCounter | None = None, fail: str = "local", timeout: float = 0.1,
                 key_prefix: bytes = b"", shared: SharedWindow | None = None) -> None:
        self.limit, self.length, self.by_consumer, self.headers = limit, length, by == "consumer", headers
        self.node = node  # the node counts, or (cluster scope) the local counts used while Redis is away
        self.redis, self.fail, self.timeout, self.key_prefix = redis, fail, timeout, key_prefix
        self.line = b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %%d\r\nRateLimit-Reset: %%d\r\n" % limit
        self.message = f"rate limit exceeded: {limit} requests per {_describe(length)}"
        self.clock = time
        self.shared = shared  # the workers' shared node counts (None: this process is the node)
        if redis is not None:
            self.request = self.cluster_request  # type: ignore[method-assign]
        elif shared is not None:
            self.request = self.shared_request  # type: ignore[method-assign]

    def __repr__(self) -> str:
        scope = f"cluster {self.redis!r} fail={self.fail}" if self.redis is not None else "node"
        return f"<RateLimitStep {self.limit}/{self.length}s by={'consumer' if self.by_consumer else 'ip'} {scope}>"

    def request(self, ex: Exchange) -> Answer | None:
        # the node path runs per request: no awaitable, one dict update, one header line
        t = int(self.clock())
        length = self.length
        index = t // length
        subject = ex.consumer or ex.client_ip if self.by_consumer else ex.client_ip
        node = self.node
        if index != node.index:
            n, index = node.hit(subject, index)
        else:
            counts = node.counts
            n = counts.get(subject, 0) + 1
            counts[subject] = n
        limit = self.limit
        if self.headers:
            add_response_header(ex, self.line % (limit - n if n < limit else 0, (index + 1) * length - t))
        if n <= limit:
            return None
        return Answer(429, "rate_limited", self.message, [b"Retry-After: %d\r\n" % ((index + 1) * length - t)])

    def node_hit(self, subject: Any, t: int) -> tuple[int, int]:
        """Count one request in node scope: (its number in the window, seconds until the window ends)."""
        length = self.length
        index = t // length
        shared = self.shared
        if shared is not None:
            end = (index + 1) * length
            return shared.hit(subject, end, t), end - t
        n, index = self.node.hit(subject, index)
        return n, (index + 1) * length - t

    def shared_request(self, ex: Exchange) -> Answer | None:
        n, reset = self.node_hit(self.subject(ex), int(self.clock()))
        return self.decide(ex, n, reset)

    def subject(self, ex: Exchange) -> Any:
        return ex.consumer or ex.client_ip if self.by_consumer else ex.client_ip

    def decide(self, ex: Exchange, n: int, reset: int) -> Answer | None:
        limit = self.limit
        if self.headers:
            add_response_header(ex, self.line % (limit - n if n < limit else 0, reset))
        if n <= limit:
            return None
        return Answer(429, "rate_limited", self.message, [b"Retry-After: %d\r\n" % reset])

    # ---- cluster scope ----
    def cluster_request(self, ex: Exchange) -> Any:
        t = int(self.clock())
        index = t // self.length
        reset = (index + 1) * self.length - t
        if self.redis.broken:  # type: ignore[union-attr]  # the breaker is open: decide now, no waiting
            return self.unavailable(ex, t)
        return self._count(ex, t, index, reset)

    async def _count(self, ex: Exchange, t: int, index: int, reset: int) -> Answer | None:
        subject = self.subject(ex)
        key = self.key_prefix + (b"consumer:" + subject.encode() if type(subject) is str else b"ip:" + subject) + b":%d" % index
        try:
            n, _ = await self.redis.incr(key, reset * 1000 + EXPIRE_SLACK_MS, self.timeout)  # type: ignore[union-attr]
        except RedisUnavailable:
            return self.unavailable(ex, t)
        return self.decide(ex, n, reset)

    def unavailable(self, ex: Exchange, t: int) -> Answer | None:
        fail = self.fail
        if fail == "open":
            return None
        if fail == "closed":
            return Answer(503, "rate_limit_unavailable",
                          "the rate limit of this API cannot be checked right now", [b"Retry-After: 1\r\n"])
        return self.decide(ex, *self.node_hit(self.subject(ex), t))


def _describe(length: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if length % size == 0:
            n = length // size
            return f"{n} {unit}s" if n > 1 else unit
    return f"{length} seconds" if length > 1 else "second"


@builder("rate-limit")
def build(policy: RateLimitPolicy, ctx: Context) -> Step:
    limit, by, scope, fail, headers = policy.limit, policy.by, policy.scope, policy.fail, policy.headers
    length = policy.window * UNIT_SECONDS[policy.unit]
    timeout = float(policy.redis_timeout)
    node: WindowCounts = ctx.services.state(ctx.key("rate-limit", scope), WindowCounts)
    table = ctx.services.node_table
    shared = None if table is None else ctx.services.state(ctx.key("rate-limit", scope, "shared"),
                                                           lambda: SharedWindow(table, ctx.key("rate-limit", scope)))
    if scope == "node":
        return RateLimitStep(limit, length, by, headers, node, fail=fail, timeout=timeout, shared=shared)
    url = policy.redis_url
    if not url:  # (the schema requires it with scope "cluster")
        raise ValueError("redis_url: required with scope 'cluster' (e.g. redis://127.0.0.1:6379/0)")
    parse_url(url)  # raises ValueError naming a bad url before anything is shared
    redis = ctx.services.state(("tandem.ags.policies.redis", url), lambda: RedisCounter(url, ctx.services.loop))
    # the counting parameters name the counters, so every gateway with this policy shares them
    digest = hashlib.sha256(json.dumps([limit, length, by]).encode()).hexdigest()[:16]
    prefix = f"tandem:rl:{ctx.project['name']}:{digest}:".encode()
    return RateLimitStep(limit, length, by, headers, node, redis, fail, timeout, prefix, shared)


__all__ = ["RateLimitStep", "WindowCounts", "window_of"]
