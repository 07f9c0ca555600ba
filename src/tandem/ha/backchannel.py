"""The peer backchannel on the HA port: heartbeats and peer messages.

Every frame (request and response) carries `X-Tandem-Auth: t=<unix>,mac=<hex>`
with mac = HMAC-SHA256(PairSecret, f"{t}.{path}.".encode() + body). A frame
with a missing or wrong MAC, or a timestamp more than `MAX_SKEW` s away, is
refused (401) and logged; a frame that does not parse is refused (400). The
receiver never trusts the peer's word for anything but the peer's own state:
the LockFile decides who serves.

Liveness: the peer is alive while we heard a valid frame from it (a request
it sent or a response to ours) within `HeartbeatInterval * HeartbeatMisses`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tandem.errors import AuthError, PeerError, PeerRefused

log = logging.getLogger("tandem.ha.backchannel")

AUTH_HEADER = "x-tandem-auth"
MAX_SKEW = 30.0


def sign(secret: str, path: str, body: bytes, t: float | None = None) -> str:
    ts = f"{t if t is not None else time.time():.3f}"
    mac = hmac.new(secret.encode(), f"{ts}.{path}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},mac={mac}"


def verify(secret: str, path: str, body: bytes, header: str | None) -> None:
    """Raise AuthError unless `header` is a valid signature of (path, body)."""
    if not header:
        raise AuthError("missing X-Tandem-Auth")
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts, mac = parts["t"], parts["mac"]
        t = float(ts)
    except (ValueError, KeyError) as exc:
        raise AuthError("malformed X-Tandem-Auth") from exc
    if abs(time.time() - t) > MAX_SKEW:
        raise AuthError(f"frame timestamp {t:.0f} too far from now")
    want = hmac.new(secret.encode(), f"{ts}.{path}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac):
        raise AuthError("wrong MAC (pair secrets differ?)")


@dataclass
class PeerView:
    """What we last heard from the peer."""

    state: str | None = None
    epoch: int = 0
    lsn: int | None = None
    serving: bool = False
    name: str = ""
    heard_at: float = 0.0  # monotonic

    def update(self, d: dict[str, Any]) -> None:
        self.state = str(d.get("state")) if d.get("state") is not None else None
        self.epoch = int(d.get("epoch") or 0)
        self.lsn = d.get("lsn")
        self.serving = bool(d.get("serving"))
        self.name = str(d.get("server", ""))
        self.heard_at = time.monotonic()


def _refused(exc: BaseException) -> bool:
    """ECONNREFUSED somewhere in the chain: an active answer that nothing listens there
    (a stopped or partitioned host times out instead)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class PeerClient:
    """Signed requests to the peer's HA port, with hard timeouts."""

    def __init__(self, address: str, port: int, secret: str, timeout: float) -> None:
        self.base = f"http://{address}:{port}"
        self.secret = secret
        self.timeout = timeout
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=4))

    async def post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {AUTH_HEADER: sign(self.secret, path, body), "content-type": "application/json"}
        try:
            r = await self._client.post(self.base + path, content=body, headers=headers,
                                        timeout=timeout or self.timeout)
        except httpx.ConnectError as exc:
            if _refused(exc):
                raise PeerRefused(f"peer {self.base} refused the connection (nothing listens)") from exc
            raise PeerError(f"peer {self.base} unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise PeerError(f"peer {self.base} unreachable: {type(exc).__name__}") from exc
        except AttributeError as exc:
            # a connection reset right after it was made (a firewall's REJECT): under uvloop
            # anyio's stream loses its socket and httpcore's first look at it fails with
            # "'NoneType' object has no attribute 'getpeername'". It is a reset like any other.
            raise PeerError(f"peer {self.base} unreachable: connection reset") from exc
        if r.status_code == 401:
            raise AuthError(f"peer {self.base} refused our frame: {r.text[:100]}")
        if r.status_code != 200:
            raise PeerError(f"peer {self.base}{path} answered {r.status_code}: {r.text[:100]}")
        verify(self.secret, path, r.content, r.headers.get(AUTH_HEADER))
        data = r.json()
        if not isinstance(data, dict):
            raise PeerError(f"peer {self.base}{path} answered a non-object")
        return data

    async def close(self) -> None:
        await self._client.aclose()
