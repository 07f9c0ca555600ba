"""`delivery`: `mode = "queued"` stores the request and answers 202; the server process delivers it later.

    {"type": "delivery", "mode": "queued", "max_attempts": 10, "concurrency": 16, ...}

(every field: `tandem.model.policies.DeliveryPolicy`; the guarantees: docs/delivery.md)

The request passes the project's other policies first (auth, limits, quota,
ip-filter, request-header edits), then the exchange collects the whole body
(`Exchange.enqueue`; more than `max_body_bytes` is 413 `payload_too_large`)
and calls `accept()`: method, path after the context path, query, the
forwarded headers (hop-by-hop ones are already gone) and the body go to the
queue (`services.queue`: the server process's `MessageQueue` in-process, a
`RemoteQueue` in a worker). Its answer:

- accepted (durable on the passive): `202`, `Location: /_tandem/messages/{id}`,
  `{"id", "state": "queued", "location"}`; the same for a repeated
  `Idempotency-Key` within the ttl (the first message's id);
- the queue is full: 503 `queue_full` with `Retry-After`;
- not stored, or stored but not confirmed durable: 503 `delivery_unavailable`
  with `Retry-After: 1` (retry with the same Idempotency-Key: a stored one
  answers with its id, not a second message).

`mode = "direct"` proxies as if the policy were absent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tandem.ags.delivery.queue import ACCEPTED, FULL, TOO_LARGE, Accepted
from tandem.ags.policies.base import Answer, Step
from tandem.ags.policies.chain import Context, Services, builder
from tandem.model.policies import DeliveryPolicy

if TYPE_CHECKING:

    from tandem.ags.exchange import Exchange

IDEMPOTENCY_KEY = b"idempotency-key"
MAX_KEY = 256


class QueueStep(Step):
    """Not a request step: the chain keeps it as `Chain.queue`, the exchange calls `accept()`."""

    kind = "delivery"

    def __init__(self, services: Services, project: str, policy: DeliveryPolicy) -> None:
        self.services, self.project = services, project
        self.max_body_bytes = policy.max_body_bytes
        self.order_header = policy.order_by_header.lower().encode() if policy.order_by_header else None
        self.queued = policy.mode == "queued"

    def __repr__(self) -> str:
        return f"<QueueStep {self.project} max_body={self.max_body_bytes}>"

    def too_large(self, n: int) -> str:
        return f"the body is {n} bytes; this API queues at most {self.max_body_bytes}"

    def accept(self, ex: Exchange) -> None:
        """The whole body is here: hand the message to the queue; answer when it does."""
        queue = self.services.queue
        if queue is None:
            ex.answer(_unavailable("this gateway has no message queue"), True)
            return
        body = b"".join(ex.uout)
        ex.uout = []
        idem = order = None
        for name, value in ex.req_headers:
            low = name.lower()
            if low == IDEMPOTENCY_KEY and idem is None:
                idem = value.decode("latin-1")
            elif low == self.order_header and order is None:
                order = value.decode("latin-1")
        if idem is not None and (not idem or len(idem) > MAX_KEY):
            ex.answer(Answer(400, "bad_request", f"Idempotency-Key must be 1-{MAX_KEY} characters"), True)
            return
        parts = ex.hparts
        n = ex.nhead
        # after the forwarded header runs the protocol put its framing line (ClientProtocol.on_headers_complete:
        # "Content-Length: ", n, CRLF, or one "Transfer-Encoding: chunked" line), then X-Forwarded-* and the blank line
        skip = 3 if ex.clen is not None else 1 if ex.has_body else 0
        head = b"".join([*parts[:n], *parts[n + skip:]])
        fut = queue.submit(self.project, ex.method, ex.rest, ex.query, head, body, idem, order)
        if fut.done():
            self._answer(ex, fut.result())
        else:
            fut.add_done_callback(lambda f: self._answer(ex, f.result()))

    @staticmethod
    def _answer(ex: Exchange, result: Accepted) -> None:
        status, mid, detail = result
        if status == ACCEPTED:
            loc = f"/_tandem/messages/{mid}"
            answer: dict[str, object] = {"id": mid, "state": "queued", "location": loc}
            if detail == "duplicate":  # an earlier request with this Idempotency-Key made it
                answer["duplicate"] = True
            body = json.dumps(answer).encode()
            ex.answer(Answer(202, None, None, [b"Content-Type: application/json\r\nLocation: %s\r\n" % loc.encode()],
                             body), True)
        elif status == FULL:
            ex.answer(Answer(503, "queue_full", f"the message queue of this API is full: {detail}",
                             [b"Retry-After: 5\r\n"]), True)
        elif status == TOO_LARGE:
            ex.answer(Answer(413, "payload_too_large", detail), True)
        else:
            ex.answer(_unavailable(detail), True)


def _unavailable(detail: str) -> Answer:
    return Answer(503, "delivery_unavailable", f"the message was not confirmed stored ({detail}); retry with the "
                  "same Idempotency-Key", [b"Retry-After: 1\r\n"])


@builder("delivery")
def build(policy: DeliveryPolicy, ctx: Context) -> Step:
    return QueueStep(ctx.services, str(ctx.project["name"]), policy)


__all__ = ["QueueStep"]
