"""The worker side of the message queue: frames `D`/`d` and `G`/`g` of `tandem.ags.workers`.

A worker's queued-delivery requests reach the server process's `MessageQueue`
over the control socket; `RemoteQueue` has the same `submit()` and `find()`
as the queue and resumes each request on its answer. An answer that does not
come within the queue's timeout (+1 s) is `UNAVAILABLE`.

    D  <i> "\\n" <JSON [project, method, rest, query, head, idem, order]> "\\n" <body>
    d  <JSON [i, status, id, detail]>
    G  <i> " " <message id>
    g  <i> " " <JSON view or null>
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from tandem.ags.delivery.queue import TIMEOUT, UNAVAILABLE, Accepted


def encode_submit(i: int, project: str, method: bytes, rest: bytes, query: bytes, head: bytes, body: bytes,
                  idem: str | None, order: str | None) -> bytes:
    meta = json.dumps([project, method.decode("latin-1"), rest.decode("latin-1"), query.decode("latin-1"),
                       head.decode("latin-1"), idem, order], separators=(",", ":")).encode()
    return b"%d\n%s\n%s" % (i, meta, body)


def decode_submit(payload: bytes) -> tuple[int, str, bytes, bytes, bytes, bytes, bytes, str | None, str | None]:
    i_raw, meta_raw, body = payload.split(b"\n", 2)
    project, method, rest, query, head, idem, order = json.loads(meta_raw)
    if not (isinstance(project, str) and all(isinstance(x, str) for x in (method, rest, query, head))
            and (idem is None or isinstance(idem, str)) and (order is None or isinstance(order, str))):
        raise ValueError(f"malformed message frame {meta_raw[:200]!r}")
    return (int(i_raw), project, method.encode("latin-1"), rest.encode("latin-1"), query.encode("latin-1"),
            head.encode("latin-1"), body, idem, order)


def encode_answer(i: int, result: Accepted) -> bytes:
    return json.dumps([i, *result], separators=(",", ":")).encode()


def encode_view(i: int, view: dict[str, Any] | None) -> bytes:
    return b"%d %s" % (i, json.dumps(view, separators=(",", ":")).encode())


class RemoteQueue:
    """A worker's client of the parent's queue."""

    def __init__(self, send: Callable[[bytes, bytes], None], loop: asyncio.AbstractEventLoop) -> None:
        self.send, self.loop = send, loop
        self.pending: dict[int, tuple[asyncio.Future[Any], float, bool]] = {}  # i -> (future, sent, is_find)
        self.next_id = 0

    def __repr__(self) -> str:
        return f"<RemoteQueue pending={len(self.pending)}>"

    def submit(self, project: str, method: bytes, rest: bytes, query: bytes, head: bytes, body: bytes,
               idem: str | None, order: str | None) -> asyncio.Future[Accepted]:
        self.next_id = i = self.next_id + 1
        fut: asyncio.Future[Accepted] = self.loop.create_future()
        self.pending[i] = (fut, self.loop.time(), False)
        self.send(b"D", encode_submit(i, project, method, rest, query, head, body, idem, order))
        return fut

    def find(self, mid: str) -> asyncio.Future[dict[str, Any] | None]:
        self.next_id = i = self.next_id + 1
        fut: asyncio.Future[dict[str, Any] | None] = self.loop.create_future()
        self.pending[i] = (fut, self.loop.time(), True)
        self.send(b"G", b"%d %s" % (i, mid.encode()))
        return fut

    def answered(self, payload: bytes) -> None:
        i, status, mid, detail = json.loads(payload)
        waiting = self.pending.pop(int(i), None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result((int(status), str(mid), str(detail)))

    def viewed(self, payload: bytes) -> None:
        i_raw, _, view = payload.partition(b" ")
        waiting = self.pending.pop(int(i_raw), None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(json.loads(view))

    def expire(self, now: float) -> None:
        late = [i for i, (_, t, _f) in self.pending.items() if now - t > TIMEOUT + 1.0]
        for i in late:
            fut, _, is_find = self.pending.pop(i)
            if not fut.done():
                fut.set_result(None if is_find else (UNAVAILABLE, "", "the server process did not answer"))
