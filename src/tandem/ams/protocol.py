"""The admin port's HTTP protocol: uvicorn's httptools protocol plus deadlines and a cap.

- Request-head deadline (`AdminHeaderTimeout`): the whole head must arrive
  within it, counted from the connection's opening for its first request and
  from the first byte of each later one. It never restarts per byte, so a
  client dripping one byte a second is closed at the deadline (408).
- Body progress (`AdminBodyTimeout`): a request body that stalls longer than
  this between two reads is cut (408, close), like nginx's client_body_timeout.
  One timer per body, re-armed only when it fires early.
- Idle keep-alive (`AdminIdleTimeout`): uvicorn's own keep-alive timer, which
  runs from the end of each response; a connection that never sends anything
  meets the head deadline instead.
- Connection cap (`AdminMaxConnections`): a connection past it is answered 503
  `too_many_connections` (with `Connection: close`) as soon as its head is in,
  or closed after one second if no head comes; logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tandem.ams.limits import AdminLimits, AdminStats

OVER_CAP_HEAD_TIMEOUT = 1.0  # s a connection past the cap may take to send the head of its 503


def _raw_response(status: int, reason: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n").encode() + payload


class AdminProtocol(HttpToolsProtocol):
    """Bound by `protocol_class(limits, stats)`; uvicorn instantiates one per connection."""

    limits: AdminLimits = AdminLimits()
    stats: AdminStats = AdminStats()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0  # loop time of the body's last bytes
        self._over_cap = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stats.connections = len(self.connections)
        timeout = self.limits.header_timeout
        if len(self.connections) > self.limits.max_connections:
            self._over_cap = True
            self.stats.refuse("too_many_connections", f"{len(self.connections) - 1} open, "
                              f"AdminMaxConnections = {self.limits.max_connections}")
            timeout = min(timeout, OVER_CAP_HEAD_TIMEOUT)
        self._arm_head_timer(timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)
        self.stats.connections = len(self.connections)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection: its first byte
            self._arm_head_timer(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        if self._over_cap:
            self.app = _service_unavailable(self.limits.max_connections)
        super().on_headers_complete()
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers):
            self._cancel_body_timer()
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_check)

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()

    # ---- the body-progress deadline ----
    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        quiet = self.loop.time() - self._body_seen
        timeout = self.limits.body_timeout
        if quiet < timeout:
            self._body_timer = self.loop.call_later(timeout - quiet, self._body_check)
            return
        self.stats.refuse("body_timeout", f"{self._peer()} sent no body bytes for {timeout:g} s (AdminBodyTimeout)")
        self.transport.write(_raw_response(408, "Request Timeout", {
            "code": "body_timeout",
            "message": f"the request body stalled for {timeout:g} s (AdminBodyTimeout)"}))
        self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.stats.refuse("idle_timeout", f"{self._peer()} idle for {self.limits.idle_timeout:g} s")
        super().timeout_keep_alive_handler()

    # ---- the head deadline ----
    def _arm_head_timer(self, timeout: float) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(timeout, self._head_expired, timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self, timeout: float) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._over_cap:
            self.transport.write(_raw_response(503, "Service Unavailable", _cap_body(self.limits.max_connections)))
        else:
            self.stats.refuse("header_timeout", f"{self._peer()} sent no complete request head within "
                              f"{timeout:g} s (AdminHeaderTimeout)")
            self.transport.write(_raw_response(408, "Request Timeout", {
                "code": "header_timeout",
                "message": f"the request head did not arrive within {timeout:g} s (AdminHeaderTimeout)"}))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


def _cap_body(limit: int) -> dict[str, Any]:
    return {"code": "too_many_connections",
            "message": f"the admin port has {limit} connections open (AdminMaxConnections); try again"}


def _service_unavailable(limit: int) -> Any:
    payload = json.dumps(_cap_body(limit)).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})

    return app


def protocol_class(limits: AdminLimits, stats: AdminStats) -> type[AdminProtocol]:
    """A protocol class bound to one service's limits and counters (uvicorn's `http` setting)."""
    return type("BoundAdminProtocol", (AdminProtocol,), {"limits": limits, "stats": stats})
