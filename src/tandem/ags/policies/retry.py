"""`retry`: send a failed request again, on another target when there is one.

Only requests without a body are retried (a streamed body cannot be sent
twice), only for the policy's `methods` (idempotent ones: the AMS refuses
POST and PATCH), and only before any byte of the response went to the
client. A failure is: the connection refused, reset or closed without a
response, an upstream read timeout, or a response status in `on_status`
(whose response is dropped unread). Attempt n waits `backoff * 2**(n-1)`
seconds first; `attempts` counts the retries, not the first try.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tandem.ags.policies.base import Step
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import RETRY_DEFAULT_METHODS, RETRY_DEFAULT_STATUS, RetryPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

log = logging.getLogger("tandem.ags.policies")


class RetryStep(Step):
    kind = "retry"

    def __init__(self, attempts: int, backoff: float, on_status: frozenset[int], methods: frozenset[bytes]) -> None:
        self.attempts, self.backoff, self.on_status, self.methods = attempts, backoff, on_status, methods

    def again(self, ex: Exchange, reason: str) -> bool:
        """Schedule another attempt and return True, or False when the failure stands."""
        if ex.has_body or ex.method not in self.methods or ex.attempts >= self.attempts or ex.done:
            return False
        ex.attempts += 1
        ex.drop_upstream()
        ex.uout.clear()
        delay = self.backoff * 2 ** (ex.attempts - 1)
        log.info("retry %d/%d of %s %s (%s) in %.3f s", ex.attempts, self.attempts, ex.method.decode(),
                 ex.path.decode(errors="replace"), reason, delay)
        ex.cp.loop.call_later(delay, ex.resend)
        return True


@builder("retry")
def build(policy: RetryPolicy, ctx: Context) -> Step:
    # (the schema allows idempotent methods only; an empty list has always meant the default one)
    methods = policy.methods or RETRY_DEFAULT_METHODS
    return RetryStep(policy.attempts, float(policy.backoff), frozenset(policy.on_status or RETRY_DEFAULT_STATUS),
                     frozenset(m.encode() for m in methods))
