"""`request-headers` and `response-headers`: edit headers on the way up or down.

Order within one policy: `remove`, then `rename` ({old: new}), then `set`
(replace), then `add` (append). Request edits apply to what the backend
receives (the gateway's own X-Forwarded-*, X-Request-Id and Host are not
editable); response edits apply to what the backend answered, before the
gateway adds its own lines (X-Request-Id, RateLimit-*, CORS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tandem.ags.policies.base import RequestEdit, Step
from tandem.ags.policies.chain import Context, builder
from tandem.ams.policies import PROTECTED_REQUEST_HEADERS, PROTECTED_RESPONSE_HEADERS

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange


# names a policy may not edit: they frame the message or are the gateway's own (the AMS refuses them with
# 422 already; a configuration from elsewhere gets its project refused)
PROTECTED_REQUEST = frozenset(n.encode() for n in PROTECTED_REQUEST_HEADERS)
PROTECTED_RESPONSE = frozenset(n.encode() for n in PROTECTED_RESPONSE_HEADERS)


def compile_edit(policy: dict[str, Any], protected: frozenset[bytes]) -> RequestEdit:
    names = [*(policy.get("remove") or []), *(policy.get("rename") or {}),
             *(policy.get("rename") or {}).values(), *(policy.get("set") or {}), *(policy.get("add") or {})]
    bad = sorted({n for n in names if n.lower().encode("latin-1") in protected})
    if bad:
        raise ValueError(f"header(s) {', '.join(bad)} cannot be edited by a policy")
    e = RequestEdit()
    for name in policy.get("remove") or []:
        e.remove(name.encode("latin-1"))
    for old, new in (policy.get("rename") or {}).items():
        e.rename(old.encode("latin-1"), new.encode("latin-1"))
    for name, value in (policy.get("set") or {}).items():
        e.set(name.encode("latin-1"), value.encode("latin-1"))
    for name, value in (policy.get("add") or {}).items():
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
def build_request(policy: dict[str, Any], ctx: Context) -> Step:
    return RequestHeadersStep(compile_edit(policy, PROTECTED_REQUEST))


@builder("response-headers")
def build_response(policy: dict[str, Any], ctx: Context) -> Step:
    return ResponseHeadersStep(compile_edit(policy, PROTECTED_RESPONSE))
