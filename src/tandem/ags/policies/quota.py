"""`quota`: at most `limit` requests per calendar period (UTC) per consumer or client IP.

    {"type": "quota", "limit": 10000, "period": "day", "by": "consumer"}

`period`: minute, hour, day (default), week (from Monday), month. `by`:
"consumer" (default; the consumer an auth step identified, else the client
IP) or "ip". Counts are kept by the server process's quota book
(`tandem.ags.quota_book`), committed to the store and replicated before a
request is let through, so they survive restarts and failovers. The step
reaches the book through `services.quota` (the book itself in-process, a
`RemoteQuota` in a worker process).

Answers: over the quota, 429 `quota_exceeded` with `Retry-After` (seconds
until the period ends), `RateLimit-Limit`, `RateLimit-Remaining: 0` and
`RateLimit-Reset` (seconds); when the count cannot be made durable, 503
`quota_unavailable` with `Retry-After: 1`. Allowed responses carry
`X-Quota-Limit`, `X-Quota-Remaining` and `X-Quota-Reset` (seconds).

A counter is named by the project, the policy's `by` and `period` (plus its
rank when a project has several quota policies with the same pair), the
subject and the period: changing `limit` keeps the count of the period.
"""

from __future__ import annotations

from math import ceil
from time import time
from typing import TYPE_CHECKING

from tandem.ags.policies.base import Answer, Step, add_response_header
from tandem.ags.policies.chain import Context, Services, builder
from tandem.ags.quota_book import ALLOWED, EXCEEDED, Result
from tandem.model.policies import QuotaPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from tandem.ags.exchange import Exchange

UNAVAILABLE = Answer(503, "quota_unavailable", "the quota of this API cannot be counted right now; try again",
                     [b"Retry-After: 1\r\n"])


class QuotaStep(Step):
    kind = "quota"

    def __init__(self, services: Services, project: str, identity: str, period: str, by_consumer: bool,
                 limit: int) -> None:
        self.services, self.project, self.identity = services, project, identity
        self.period, self.by_consumer, self.limit = period, by_consumer, limit

    def __repr__(self) -> str:
        return f"<QuotaStep {self.project} {self.identity} limit={self.limit}>"

    def request(self, ex: Exchange) -> Answer | Awaitable[Answer | None]:
        book = self.services.quota
        if book is None:
            return UNAVAILABLE
        consumer = ex.consumer
        if self.by_consumer and consumer is not None:
            subject = "c:" + consumer
        else:
            subject = "ip:" + ex.client_ip.decode("latin-1")
        return self._answer(ex, book.take(self.project, self.identity, subject, self.period, self.limit))

    async def _answer(self, ex: Exchange, pending: Awaitable[Result]) -> Answer | None:
        status, remaining, end = await pending
        reset = max(1, ceil(end - time()))
        if status == ALLOWED:
            add_response_header(ex, b"X-Quota-Limit: %d\r\nX-Quota-Remaining: %d\r\nX-Quota-Reset: %d\r\n"
                                % (self.limit, remaining, reset))
            return None
        if status == EXCEEDED:
            return Answer(429, "quota_exceeded", f"the quota of {self.limit} requests per {self.period} is used up",
                          [b"Retry-After: %d\r\nRateLimit-Limit: %d\r\nRateLimit-Remaining: 0\r\n"
                           b"RateLimit-Reset: %d\r\n" % (reset, self.limit, reset)])
        return UNAVAILABLE


@builder("quota")
def build(policy: QuotaPolicy, ctx: Context) -> Step:
    by, period = policy.by, policy.period
    identity = f"{by}.{period}"
    rank = sum(1 for p in ctx.models[:ctx.index] if isinstance(p, QuotaPolicy) and p.by == by and p.period == period)
    if rank:
        identity += f"#{rank}"
    return QuotaStep(ctx.services, str(ctx.project["name"]), identity, period, by == "consumer", policy.limit)


__all__ = ["QuotaStep", "UNAVAILABLE"]
