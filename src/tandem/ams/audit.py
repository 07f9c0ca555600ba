"""The audit trail's entries: one per admin-API write, in the transaction of its change.

`AuthMiddleware` opens an `AuditContext` for every write request it lets
through (and records a refused one itself). While it is open,
`AmsState.commit` adds the request's entry, status `accepted`, to the FIRST
commit the request makes: the entry and the change are one transaction, so
they replicate together and a change that rolls back takes its entry with
it. A write that ends without committing anything gets an entry of its own
when its response starts: `refused` with the HTTP status and error code for
a 4xx/5xx, `accepted` for a success that changed nothing.

An entry: `{id, at, actor, token, action, target, status, request_id}`, and
for a refusal `http_status`, `error` (and `needs`, the role a 403 lacked);
`changes` names what the commit wrote (`namespace:key`, at most
`MAX_CHANGES`, never a key that is a token hash). No request body, no error
message (both may echo a secret) is ever stored; the only free text is the
request path, which passes `redact` first.

Keys are `at` + a random suffix: ISO timestamps sort as text, so a key range
is a time range and a scan by day prefix reads newest-first cheaply.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from tandem.store import Op

NS_AUDIT = "ams.audit"  # "<at>~<hex>" -> entry
MAX_CHANGES = 20
# namespaces whose keys are token hashes: named by count only
HASH_KEYED = frozenset({"ams.user-tokens", "ams.gateway-tokens", "ams.sessions"})
MARKER = "[redacted]"
# what a Tandem secret looks like: API keys, user tokens, gateway tokens; PEM private keys
_SECRET = re.compile(r"(?:tk|tu|tgw)_[A-Za-z0-9_\-]{8,}|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*"
                     r"PRIVATE KEY-----|$)", re.S)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_current: ContextVar[AuditContext | None] = ContextVar("tandem_ams_audit", default=None)


def redact(text: str, known: frozenset[str] = frozenset()) -> str:
    """`text` with every Tandem secret, and every piece of it in `known`, replaced by MARKER."""
    out = _SECRET.sub(MARKER, text)
    for secret in known:
        if secret and secret in out:
            out = out.replace(secret, MARKER)
    return out


@dataclass
class AuditContext:
    actor: str
    token: str
    action: str
    target: str
    request_id: str
    written: bool = False
    key: str = field(default="")

    def entry(self, at: str, status: str, ops: list[Op] | None = None, **extra: Any) -> Op:
        """The Op writing this request's entry (one per request: the caller marks it written)."""
        self.key = f"{at}~{secrets.token_hex(4)}"
        record: dict[str, Any] = {"id": self.key, "at": at, "actor": self.actor, "token": self.token,
                                  "action": self.action, "target": self.target, "status": status,
                                  "request_id": self.request_id, **extra}
        if ops:
            named = [f"{op.ns}:{op.key}" for op in ops if op.ns not in HASH_KEYED and op.ns != NS_AUDIT]
            hashed = sum(1 for op in ops if op.ns in HASH_KEYED)
            record["changes"] = named[:MAX_CHANGES]
            if len(named) > MAX_CHANGES or hashed:
                record["more_changes"] = len(named) - len(record["changes"]) + hashed
        return Op(NS_AUDIT, self.key, record)


def current() -> AuditContext | None:
    return _current.get()


def begin(ctx: AuditContext) -> object:
    return _current.set(ctx)


def end(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def new_request_id(offered: str | None) -> str:
    """The client's `X-Request-Id` when it is a sane one, else a new one."""
    if offered is not None and REQUEST_ID.match(offered) and not _SECRET.search(offered):
        return offered
    return "req_" + secrets.token_hex(8)
