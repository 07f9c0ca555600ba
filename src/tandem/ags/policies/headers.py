"""`request-headers` and `response-headers`: edit headers on the way up or down.

Order within one policy: `remove`, then `rename` ({old: new}), then `set`
(replace), then `add` (append). Request edits apply to what the backend
receives (the gateway's own X-Forwarded-*, X-Request-Id and Host are not
editable); response edits apply to what the backend answered, before the
gateway adds its own lines (X-Request-Id, RateLimit-*, CORS). The names no
policy may edit are the schema's (`tandem.model.policies`
PROTECTED_REQUEST_HEADERS, PROTECTED_RESPONSE_HEADERS): a configuration
naming one has its project refused when it is applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tandem.ags.policies.base import RequestEdit, Step
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import RequestHeadersPolicy, ResponseHeadersPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange


def compile_edit(policy: RequestHeadersPolicy | ResponseHeadersPolicy) -> RequestEdit:
    """The edits of a validated policy (the schema checked the names, protected ones included)."""
    e = RequestEdit()
    for name in policy.remove:
        e.remove(name.encode("latin-1"))
    for old, new in policy.rename.items():
        e.rename(old.encode("latin-1"), new.encode("latin-1"))
    for name, value in policy.set.items():
        e.set(name.encode("latin-1"), value.encode("latin-1"))
    for name, value in policy.add.items():
        e.add(name.encode("latin-1"), value.encode("latin-1"))
    return e


class RequestHeadersStep(Step):
    kind = "request-headers"

    def __init__(self, e: RequestEdit) -> None:
        self.ops = e.ops

    def request(self, ex: Exchange) -> None:
        edit = ex.edit
        if edit is None:
            edit = ex.edit = RequestEdit()
        edit.ops += self.ops


class ResponseHeadersStep(Step):
    """Not a request step: the chain applies `edit` to each response head."""

    kind = "response-headers"

    def __init__(self, e: RequestEdit) -> None:
        self.edit = e


@builder("request-headers")
def build_request(policy: RequestHeadersPolicy, ctx: Context) -> Step:
    return RequestHeadersStep(compile_edit(policy))


@builder("response-headers")
def build_response(policy: ResponseHeadersPolicy, ctx: Context) -> Step:
    return ResponseHeadersStep(compile_edit(policy))
