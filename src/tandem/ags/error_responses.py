"""The gateway's own responses: JSON errors with a stable `code` (SPEC section 5).

Every error the gateway answers itself has the same shape,
`{"code": "...", "message": "...", "request_id": "..."}`, and carries
`X-Request-Id` like every proxied response. The codes are a contract:
clients and dashboards match on them, so they never change meaning.

    status  code                   when
    400     bad_request            httptools rejected the request, CL+TE, two Content-Lengths, two Hosts,
                                   a path climbing above "/" or holding %2F, %5C, %00, "\\" or ";"
    401     missing_credentials    an auth policy (api-key, basic-auth, jwt) found no credentials
    401     invalid_credentials    unknown/revoked key, wrong password, bad token signature or consumer
    401     token_expired          jwt: `exp` passed (beyond the policy's leeway)
    401     token_not_yet_valid    jwt: `nbf` in the future
    401     invalid_claims         jwt: issuer, audience or a required claim does not match
    403     ip_forbidden           ip-filter: the client address is denied or not allowed
    403     cors_forbidden         cors: a preflight from an origin, method or header not allowed
    400     bad_request            (also) delivery: an Idempotency-Key longer than 256 characters
    404     no_route               no deployed project matches host, method and path
    404     message_not_found      GET /_tandem/messages/{id}: no such message (or past its retention)
    405     method_not_allowed     TRACE (unless [gateway] AllowTrace)
    408     request_timeout        the request head took longer than ClientHeaderTimeout, or the body
                                   paused longer than ClientBodyTimeout
    413     payload_too_large      the body is larger than the gateway's limit (or delivery's max_body_bytes)
    414     uri_too_long           the request target is longer than the limit
    429     rate_limited           rate-limit: over the limit in this window (Retry-After, RateLimit-*)
    429     quota_exceeded         quota: the period's quota is used up (Retry-After, RateLimit-*)
    431     headers_too_large      header bytes or header count over the limit
    500     policy_error           a policy step failed unexpectedly (logged): the request is not let through
    501     upgrade_not_supported  `Connection: upgrade` (WebSocket, h2c) or CONNECT
    501     policy_not_supported   the project has a policy this gateway cannot enforce (fail closed)
    501     transfer_encoding_not_supported  a Transfer-Encoding other than exactly `chunked`
    502     upstream_unavailable   no healthy target, connect refused/reset, upstream closed early
    503     rate_limit_unavailable rate-limit with fail = "closed" while Redis is unreachable
    503     quota_unavailable      quota: the count could not be made durable (store or replication)
    503     auth_unavailable       jwt: the JWKS cannot be fetched and no key set is cached
    503     queue_full             delivery: the project's max_messages or max_bytes is reached (Retry-After)
    503     delivery_unavailable   delivery: the message was not confirmed stored (Retry-After: 1); retry
                                   with the same Idempotency-Key
    503     too_many_connections   the serving process has MaxConnections client connections open
    504     upstream_timeout       connect or read timeout
    505     version_not_supported  a request line other than HTTP/1.0 or HTTP/1.1 (HTTP/0.9, HTTP/2.0)

A dependency of a policy that is down (Redis, the JWKS endpoint, the store)
is a 503, never a 401/403: the client's credentials were not the problem.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Any

REASONS = {400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
           405: b"Method Not Allowed", 408: b"Request Timeout",
           505: b"HTTP Version Not Supported",
           429: b"Too Many Requests", 413: b"Payload Too Large", 414: b"URI Too Long",
           431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
           502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}

MESSAGES = {
    "bad_request": "the request is malformed",
    "no_route": "no API is deployed at this path",
    "payload_too_large": "the request body is larger than this gateway accepts",
    "uri_too_long": "the request target is longer than this gateway accepts",
    "headers_too_large": "the request headers are larger than this gateway accepts",
    "upgrade_not_supported": "protocol upgrades (WebSocket, h2c) and CONNECT are not supported",
    "policy_not_supported": "this API has a policy this gateway cannot enforce",
    "upstream_unavailable": "the upstream service is unavailable",
    "upstream_timeout": "the upstream service did not answer in time",
    "internal_error": "internal error",
    "method_not_allowed": "this method is not allowed on this gateway",
    "request_timeout": "the request did not arrive in time",
    "transfer_encoding_not_supported": "only the chunked transfer coding is supported",
    "too_many_connections": "this gateway has too many open connections; try again later",
    "version_not_supported": "only HTTP/1.0 and HTTP/1.1 are supported",
}


class PoolBusy(TimeoutError):
    """Every connection the pool may open is busy: not a failure of the target. (Here, not in
    upstream.py: a class deriving from a built-in exception cannot be compiled, docs/native.md.)"""


class Reject(Exception):
    """Raised from parser callbacks: answer `status`/`code` and close the connection."""

    def __init__(self, status: int, code: str, message: str | None = None) -> None:
        super().__init__(message or MESSAGES.get(code, code))
        self.status, self.code = status, code
        self.message = message or MESSAGES.get(code, code)
        self.exchange: Any = None  # the request refused, once its head was parsed (set by the protocol)


_date_cache: list[object] = [0, b""]


def http_date() -> bytes:
    """The `Date` header value, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    return _date_cache[1]  # type: ignore[return-value]


def error_body(code: str, request_id: bytes, message: str | None = None) -> bytes:
    """The JSON body of every gateway error: `{"code", "message", "request_id"}`."""
    return json.dumps({"code": code, "message": message or MESSAGES.get(code, code),
                       "request_id": request_id.decode("latin-1")}, separators=(",", ":")).encode()


def error_response(status: int, code: str, request_id: bytes, message: str | None = None,
                   close: bool = False, head_only: bool = False) -> bytes:
    """The full HTTP/1.1 response for a gateway error (head and JSON body)."""
    body = error_body(code, request_id, message)
    head = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")),
            b"Date: " + http_date(),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"X-Request-Id: " + request_id]
    if close:
        head.append(b"Connection: close")
    out = b"\r\n".join(head) + b"\r\n\r\n"
    return out if head_only else out + body
