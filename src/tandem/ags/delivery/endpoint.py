"""`GET /_tandem/messages/{id}` on the client port: a queued message's state (SPEC section 5).

The gateway answers it itself: `compile_config` adds `MessagesRoute` to every
configuration's router under the reserved context path `/_tandem` (a project
of the configuration cannot take it: the gateway drops such a project and
logs why). The answer comes from the queue (`services.queue.find`): the
server process's in-process, over the control socket from a worker.

    200 {"id", "project", "state", "attempts", "last_status", "last_error",
         "accepted_at", "next_attempt_at", "finished_at", "reason"}
    404 message_not_found    (unknown, not yet durable, or deleted after its retention)
    405 method_not_allowed   (anything but GET and HEAD)
    503 delivery_unavailable (this gateway has no queue right now)
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from tandem.ags.policies.base import Answer
from tandem.ags.policies.chain import Chain
from tandem.model.document import RESERVED_CONTEXT

if TYPE_CHECKING:
    import asyncio

    from tandem.ags.exchange import Exchange
    from tandem.ags.policies.chain import Services

CONTEXT = RESERVED_CONTEXT.encode()
_MESSAGE = re.compile(rb"/_tandem/messages/([0-9a-f]{16,40})")
_JSON = [b"Content-Type: application/json\r\nCache-Control: no-store\r\n"]


class MessagesChain(Chain):
    """A chain of no policy whose run() answers the request itself."""

    __slots__ = ("services",)

    def __init__(self, services: Services) -> None:
        super().__init__([], None, None, None, ["_tandem"])
        self.services = services

    def run(self, ex: Exchange) -> bool:
        ex.hook = self
        m = _MESSAGE.fullmatch(ex.path)
        if m is None:
            ex.answer(Answer(404, "no_route", "no such gateway endpoint"))
            return False
        if ex.method not in (b"GET", b"HEAD"):
            ex.answer(Answer(405, "method_not_allowed", "GET only", [b"Allow: GET, HEAD\r\n"]))
            return False
        queue = self.services.queue
        if queue is None:
            ex.answer(Answer(503, "delivery_unavailable", "this gateway has no message queue",
                             [b"Retry-After: 1\r\n"]))
            return False
        fut = queue.find(m.group(1).decode())
        if fut.done():
            _reply(ex, fut, False)
        else:
            fut.add_done_callback(lambda f: _reply(ex, f, True))
        return False


def _reply(ex: Exchange, fut: asyncio.Future[dict[str, Any] | None], later: bool) -> None:
    view = fut.result()
    if view is None:
        ex.answer(Answer(404, "message_not_found", "no such message on this gateway"), later)
    else:
        ex.answer(Answer(200, None, None, _JSON, json.dumps(view).encode()), later)


class MessagesRoute:
    """The reserved route: what the router and the exchange read of a project."""

    __slots__ = ("name", "context", "hosts", "wild_hosts", "methods", "refusal", "chain", "stats", "log_name",
                 "read_timeout")

    def __init__(self, services: Services, stats: Any) -> None:
        self.name = "_tandem"
        self.context = CONTEXT
        self.hosts: frozenset[bytes] | None = None
        self.wild_hosts: tuple[bytes, ...] = ()
        self.methods: frozenset[bytes] | None = None
        self.refusal = None
        self.chain = MessagesChain(services)
        self.stats = stats
        self.log_name = b'"_tandem"'
        self.read_timeout = 5.0

    def __repr__(self) -> str:
        return "<MessagesRoute /_tandem>"
