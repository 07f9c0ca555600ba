"""`api-key`: the caller presents a consumer's key in a header (or a query parameter).

Keys are looked up by their sha256 (the configuration holds no clear key).
A missing key is 401 `missing_credentials`, an unknown or revoked one 401
`invalid_credentials`; with `hide_credentials` the key does not reach the
backend. The consumer goes upstream in `X-Consumer-Name`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from tandem.ags.policies.base import (
    Answer,
    Step,
    add_upstream_header,
    edit,
)
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import ApiKeyPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

CONSUMER_HEADER = b"X-Consumer-Name"


def identified(ex: Exchange, consumer: str) -> None:
    """An auth step identified `consumer`: remember it and tell the backend. (Has an inlined copy in
    ApiKeyStep.request: tests/unit/test_inlined_copies.py runs both.)"""
    ex.consumer = consumer
    # (added, not set: a client's own X-Consumer-Name is never forwarded, see protocol.SKIP_REQUEST)
    add_upstream_header(ex, CONSUMER_HEADER, consumer.encode("utf-8"))


def query_value(query: bytes, name: bytes) -> bytes | None:
    """The first value of parameter `name` in b"?a=1&b=2" (percent-decoded)."""
    for part in query[1:].split(b"&"):
        k, _, v = part.partition(b"=")
        if unquote_to_bytes(k.replace(b"+", b" ")) == name:
            return unquote_to_bytes(v.replace(b"+", b" "))
    return None


def query_without(query: bytes, name: bytes) -> bytes:
    kept = [part for part in query[1:].split(b"&")
            if part and unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" ")) != name]
    return b"?" + b"&".join(kept) if kept else b""


class ApiKeyStep(Step):
    kind = "api-key"

    def __init__(self, header: bytes, query_param: bytes | None, hide: bool, keys: dict[str, str]) -> None:
        self.header, self.lheader, self.query_param, self.hide, self.keys = header, header.lower(), query_param, hide, keys
        # valid keys seen -> (consumer, its name encoded): no sha256 per request (bounded)
        self.known: dict[bytes, tuple[str, bytes]] = {}

    def request(self, ex: Exchange) -> Answer | None:
        lheader = self.lheader
        # inlined: base.request_header (tests/unit/test_inlined_copies.py)
        key = None
        for name, value in ex.req_headers:
            if name.lower() == lheader:
                key = value
                break
        from_query = False
        if key is None and self.query_param is not None and ex.query:
            key = query_value(ex.query, self.query_param)
            from_query = key is not None
        if not key:
            where = self.header.decode() + (f" or query parameter {self.query_param.decode()!r}"
                                            if self.query_param else "")
            return Answer(401, "missing_credentials", f"this API needs an API key (header {where})")
        known = self.known.get(key)
        if known is None:
            consumer = self.keys.get(hashlib.sha256(key).hexdigest())
            if consumer is None:
                return Answer(401, "invalid_credentials", "the API key is not valid")
            if len(self.known) >= 10_000:
                self.known.clear()
            known = self.known[key] = (consumer, consumer.encode("utf-8"))
        parts, n = ex.hparts, ex.nhead
        if self.hide:
            if from_query:
                edit(ex).query = query_without(ex.query, self.query_param)  # type: ignore[arg-type]
            else:
                # inlined: base.drop_upstream_header (tests/unit/test_inlined_copies.py)
                i = n - 4
                while i >= 0:
                    if parts[i].lower() == lheader:
                        del parts[i:i + 4]
                        n -= 4
                    i -= 4
        # inlined: api_key.identified (tests/unit/test_inlined_copies.py)
        ex.consumer = known[0]  # (with the name encoded once, when the key was first seen)
        parts[n:n] = (CONSUMER_HEADER, b": ", known[1], b"\r\n")
        ex.nhead = n + 4
        return None


@builder("api-key")
def build(policy: ApiKeyPolicy, ctx: Context) -> Step:
    qp = policy.query_param
    return ApiKeyStep(policy.header.encode("latin-1"), qp.encode() if qp else None, policy.hide_credentials,
                      ctx.consumers.by_key_hash)


__all__ = ["ApiKeyStep", "CONSUMER_HEADER", "identified"]
