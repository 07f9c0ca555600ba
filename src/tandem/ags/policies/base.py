"""What every policy is made of: a `Step` per policy, an `Answer` when the gateway replies itself.

A project's policies are compiled once, when a configuration is applied
(`tandem.ags.policies.compile_chain`), into a `Chain` of steps. Per request
the chain calls `step.request(ex)` in order; a step returns

- `None`: go on with the next step;
- an `Answer`: the gateway replies with it (an error with a JSON `code`, a
  CORS preflight, a cached response) and the request never goes upstream;
- an awaitable of `Answer | None`: the step needs I/O (Redis, the quota
  book, a JWKS fetch, a slow password hash); the chain resumes when it is
  done. Steps that can decide in memory never create one.

What a step may read and write on the exchange `ex` (`tandem.ags.exchange`):
`ex.method`, `ex.path`, `ex.query` (b"" or b"?..."), `ex.req_headers` (the
request's header (name, value) pairs as received), `ex.has_body`,
`ex.hparts` / `ex.nhead` (what goes upstream: the first `nhead` items are the
forwarded header lines as (name, ": ", value, "\\r\\n") runs; edit them only
through `add_upstream_header` / `drop_upstream_header` or `edit(ex)`),
`ex.client_ip` (bytes; the peer, or the client named by `X-Forwarded-For`
behind a trusted proxy), `ex.consumer` (str, set by the auth step that
identified the caller), and through the helpers below: request header edits
(`edit(ex)`) and response header lines added to whatever answer goes out
(`add_response_header`).

Steps are shared by every request of the project and by concurrent ones:
per-request state lives on the exchange, never on the step.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange


class Answer:
    """A reply the gateway makes itself. `code` set: a JSON error `{code, message, request_id}`;
    else `body` as it is. `headers`: complete header lines (b"Name: value\\r\\n")."""

    __slots__ = ("status", "code", "message", "headers", "body")

    def __init__(self, status: int, code: str | None = None, message: str | None = None,
                 headers: list[bytes] | None = None, body: bytes = b"") -> None:
        self.status, self.code, self.message = status, code, message
        self.headers = headers or []
        self.body = body

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.code or ''} headers={len(self.headers)} body={len(self.body)}>"


Result = Answer | Awaitable[Answer | None] | None


class Step:
    """One compiled policy. Subclasses set `kind` and override what they need."""

    kind = "?"

    def request(self, ex: Exchange) -> Result:
        """Called once per request, in chain order (see the module docstring)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}>"


def request_header(ex: Exchange, lname: bytes) -> bytes | None:
    """The first value of request header `lname` (lower-case), as received. (Has an inlined copy in
    ApiKeyStep.request: tests/unit/test_inlined_copies.py runs both.)"""
    for name, value in ex.req_headers:
        if name.lower() == lname:
            return value
    return None


def request_headers(ex: Exchange, lname: bytes) -> list[bytes]:
    return [value for name, value in ex.req_headers if name.lower() == lname]


def add_upstream_header(ex: Exchange, name: bytes, value: bytes) -> None:
    """Add a header line to what the backend receives (in place: no edit pass)."""
    n = ex.nhead
    ex.hparts[n:n] = (name, b": ", value, b"\r\n")
    ex.nhead = n + 4


def drop_upstream_header(ex: Exchange, lname: bytes) -> None:
    """Remove every `lname` (lower-case) line from what the backend receives (in place). (Has an inlined
    copy in ApiKeyStep.request: tests/unit/test_inlined_copies.py runs both.)"""
    parts = ex.hparts
    i = ex.nhead - 4
    while i >= 0:
        if parts[i].lower() == lname:
            del parts[i:i + 4]
            ex.nhead -= 4
        i -= 4


def add_response_header(ex: Exchange, line: bytes) -> None:
    """Add a header line to the response this request gets, proxied or answered by the gateway."""
    extra = ex.resp_extra
    if extra is None:
        ex.resp_extra = [line]
    else:
        extra.append(line)


REMOVE, SET, ADD, RENAME = 0, 1, 2, 3


class SharedState:
    """Policy state kept in `Services` across configurations that holds something to
    release when the serving process stops (a Redis connection and its probe)."""

    async def close(self) -> None:
        """Release it; bounded by the caller (2 s)."""


class RequestEdit:
    """Header changes for the upstream request, applied once when the chain admits the request.

    Names are compared case-insensitively. `remove` drops every line with the name,
    `set` replaces them with one, `add` appends one, `rename` keeps the values
    under a new name. `query` replaces the query string (b"" or b"?...").
    Each op is (kind, name, lower-case name, value), the lower case computed once."""

    __slots__ = ("ops", "query")

    def __init__(self) -> None:
        self.ops: list[tuple[int, bytes, bytes, bytes]] = []
        self.query: bytes | None = None

    def remove(self, name: bytes) -> None:
        self.ops.append((REMOVE, name, name.lower(), b""))

    def set(self, name: bytes, value: bytes) -> None:
        self.ops.append((SET, name, name.lower(), value))

    def add(self, name: bytes, value: bytes) -> None:
        self.ops.append((ADD, name, b"", value))

    def rename(self, old: bytes, new: bytes) -> None:
        self.ops.append((RENAME, old, old.lower(), new))

    def apply_flat(self, head: list[bytes]) -> list[bytes]:
        """`head`: header lines as (name, b": ", value, b"\\r\\n") runs; returns the edited runs."""
        for kind, name, low, value in self.ops:
            if kind == ADD:
                head += (name, b": ", value, b"\r\n")
                continue
            out: list[bytes] = []
            for i in range(0, len(head), 4):
                if head[i].lower() == low:
                    if kind == RENAME:
                        out += (value, b": ", head[i + 2], b"\r\n")
                else:
                    out += head[i:i + 4]
            if kind == SET:
                out += (name, b": ", value, b"\r\n")
            head = out
        return head

    def apply(self, lines: list[list[bytes]]) -> list[list[bytes]]:
        """`lines`: [name, value] pairs in order; returns the edited list."""
        flat: list[bytes] = []
        for name, value in lines:
            flat += (name, b": ", value, b"\r\n")
        flat = self.apply_flat(flat)
        return [[flat[i], flat[i + 2]] for i in range(0, len(flat), 4)]


def edit(ex: Exchange) -> RequestEdit:
    """This request's pending header edits (created on first use)."""
    e: RequestEdit | None = ex.edit
    if e is None:
        e = ex.edit = RequestEdit()
    return e

