"""One queued message in memory, and its two store records (docs/delivery.md, "Store layout").

ns "msg" (key = id) holds the message with its body (`Msg.record`) from its
acceptance until it is delivered or pruned; ns "msgstate" (key = id) its state
(`Msg.state_record`) once it is no longer the initial `queued`; ns "msgmeta"
the redrive counters acted on (`redrive/<project>`). `message_from` rebuilds a
message from the two. `Msg.view()` is what `GET /_tandem/messages/{id}` answers.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from tandem.ags.delivery.states import DELIVERING, QUEUED

NS_MSG, NS_STATE, NS_META = "msg", "msgstate", "msgmeta"


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class Msg:
    __slots__ = ("id", "project", "state", "attempts", "next_at", "since", "accepted_at", "method", "rest",
                 "query", "head", "body", "idem", "order", "last_status", "last_error", "done_at", "reason",
                 "size", "waiters", "unconfirmed", "lane")

    def __init__(self, mid: str, project: str, accepted_at: float) -> None:
        self.id, self.project, self.accepted_at = mid, project, accepted_at
        self.state, self.attempts, self.next_at, self.since = QUEUED, 0, accepted_at, accepted_at
        self.method = self.rest = self.query = self.head = self.body = b""
        self.idem: str | None = None
        self.order: str | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.done_at: float | None = None
        self.reason = ""
        self.size = 0
        self.waiters: list[asyncio.Future[Any]] | None = None  # until durable: duplicates wait too
        self.unconfirmed = False  # stored here; not (yet) confirmed on the passive
        self.lane: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"<Msg {self.id} {self.project} {self.state} attempts={self.attempts}>"

    def __lt__(self, other: Msg) -> bool:  # (heap ties)
        return self.id < other.id

    def record(self) -> dict[str, Any]:
        return {"p": self.project, "m": self.method.decode("latin-1"), "t": self.rest.decode("latin-1"),
                "q": self.query.decode("latin-1"), "h": self.head.decode("latin-1"),
                "b": base64.b64encode(self.body).decode("ascii"), "k": self.idem, "o": self.order,
                "a": self.accepted_at}

    def state_record(self) -> dict[str, Any]:
        return {"p": self.project, "s": QUEUED if self.state == DELIVERING else self.state, "n": self.attempts,
                "at": self.next_at, "si": self.since, "a": self.accepted_at, "k": self.idem,
                "ls": self.last_status, "le": self.last_error, "d": self.done_at, "r": self.reason}

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "project": self.project, "state": self.state, "attempts": self.attempts,
                "last_status": self.last_status, "last_error": self.last_error,
                "accepted_at": iso(self.accepted_at),
                "next_attempt_at": iso(self.next_at) if self.state == QUEUED else None,
                "finished_at": iso(self.done_at), "reason": self.reason or None}


def message_from(mid: str, rec: dict[str, Any], st: dict[str, Any] | None) -> Msg:
    src = st if st is not None else rec
    m = Msg(mid, str(src["p"]), float(src["a"]))
    if rec:
        m.method, m.rest = rec["m"].encode("latin-1"), rec["t"].encode("latin-1")
        m.query, m.head = rec["q"].encode("latin-1"), rec["h"].encode("latin-1")
        m.body = base64.b64decode(rec["b"])
        m.size = len(m.body)
        m.order = rec.get("o")
    m.idem = src.get("k")
    if st is not None:
        m.state, m.attempts = str(st["s"]), int(st["n"])
        m.next_at, m.since = float(st["at"]), float(st["si"])
        m.last_status, m.last_error, m.done_at, m.reason = st.get("ls"), st.get("le"), st.get("d"), st.get("r") or ""
    return m
