"""The peer backchannel on the HA port: heartbeats and peer messages.

Every frame carries `X-Tandem-Auth` (docs/ha.md, "Backchannel frames"):

    v=2,t=<unix>,n=<nonce>,from=<role>,to=<role>,e=<epoch>,len=<bytes>,h=<sha256 of body>,mac=<hex>

mac = HMAC-SHA256(PairSecret) over every other field, the method and the path.
The MAC covers the body's length and digest but not the body itself, so the
receiver checks a request *before it reads the body*: a frame without a valid
MAC, older than `MAX_SKEW`, signed before the receiver started, addressed to
another half (`to`), sent by this half itself (a reflection), from a sender the
route does not take, or carrying a nonce already seen (a replay) is refused
with 401 and its body is never buffered. The body is hashed as it arrives and
must match `h`. A response is signed the same way and names the request's
nonce, so a captured response cannot answer another request.

Operator commands (`tandem ha switchover|force-activate`) are frames `from=operator`
whose `e` is the epoch the operator saw the target at: the target refuses one
for another epoch, so a command is obeyed at most once per epoch.

The receiver never trusts the peer's word for anything but the peer's own state:
the LockFile decides who serves.

Liveness: the peer is alive while we heard a valid frame from it (a request
it sent or a response to ours) within `HeartbeatInterval * HeartbeatMisses`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tandem.errors import AuthError, PeerError, PeerRefused
from tandem.net.httpmini import Refused, Request, Response

log = logging.getLogger("tandem.ha.backchannel")

AUTH_HEADER = "x-tandem-auth"
MAX_SKEW = 30.0
OPERATOR = "operator"
ROLES = ("primary", "secondary")
SENDERS = (*ROLES, OPERATOR)
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
_FIELDS = ("v", "t", "n", "from", "to", "e", "len", "h", "mac")
MAX_NONCES = 500_000  # nonces remembered; a sender above ~16,000 frames/s would be refused


def other_role(role: str) -> str:
    return ROLES[1] if role == ROLES[0] else ROLES[0]


@dataclass(frozen=True)
class Frame:
    """The verified metadata of one frame."""

    t: str
    nonce: str
    sender: str
    receiver: str
    epoch: int
    length: int
    digest: str


def _mac(secret: str, kind: str, where: str, f: Frame) -> str:
    text = "\n".join((kind, where, f.t, f.nonce, f.sender, f.receiver, str(f.epoch), str(f.length), f.digest))
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _header(f: Frame, mac: str) -> str:
    return (f"v=2,t={f.t},n={f.nonce},from={f.sender},to={f.receiver},e={f.epoch},len={f.length},"
            f"h={f.digest},mac={mac}")


def sign_request(secret: str, method: str, path: str, body: bytes, *, sender: str, receiver: str,
                 epoch: int, t: float | None = None) -> tuple[str, str]:
    """The auth header for a request, and its nonce (the response must name it)."""
    f = Frame(f"{t if t is not None else time.time():.3f}", secrets.token_hex(16), sender, receiver, epoch,
              len(body), hashlib.sha256(body).hexdigest())
    return _header(f, _mac(secret, "req", f"{method} {path}", f)), f.nonce


def sign_response(secret: str, request: Frame, path: str, status: int, body: bytes, epoch: int) -> str:
    """The auth header for our answer to `request` (sender and receiver swapped)."""
    f = Frame(f"{time.time():.3f}", request.nonce, request.receiver, request.sender, epoch, len(body),
              hashlib.sha256(body).hexdigest())
    return _header(f, _mac(secret, "resp", f"{status} {path}", f))


def parse_header(header: str | None) -> tuple[Frame, str]:
    """The frame a header describes and its MAC; AuthError when it does not parse."""
    if not header:
        raise AuthError("missing X-Tandem-Auth")
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        if set(parts) != set(_FIELDS) or parts["v"] != "2":
            raise ValueError("fields")
        float(parts["t"])
        f = Frame(parts["t"], parts["n"], parts["from"], parts["to"], int(parts["e"]), int(parts["len"]),
                  parts["h"])
    except (ValueError, KeyError) as exc:
        raise AuthError("malformed X-Tandem-Auth (not a version 2 frame header)") from exc
    if f.length < 0 or len(f.digest) != 64 or not 16 <= len(f.nonce) <= 64:
        raise AuthError("malformed X-Tandem-Auth (length, digest or nonce)")
    return f, parts["mac"]


def _fresh(f: Frame) -> None:
    if abs(time.time() - float(f.t)) > MAX_SKEW:
        raise AuthError(f"frame timestamp {float(f.t):.0f} too far from now (more than {MAX_SKEW:.0f} s)")


def verify_response(secret: str, header: str | None, path: str, status: int, body: bytes, *,
                    nonce: str, sender: str, receiver: str) -> Frame:
    """Raise AuthError unless `header` signs this answer, from `sender`, to our request `nonce`."""
    f, mac = parse_header(header)
    if not hmac.compare_digest(_mac(secret, "resp", f"{status} {path}", f), mac):
        raise AuthError("wrong MAC on the answer (pair secrets differ?)")
    _fresh(f)
    if f.nonce != nonce:
        raise AuthError("the answer is not to our request (nonce differs: a replayed answer?)")
    if (f.sender, f.receiver) != (sender, receiver):
        raise AuthError(f"the answer is from {f.sender} to {f.receiver}, not from {sender} to {receiver}")
    if f.length != len(body) or not hmac.compare_digest(f.digest, hashlib.sha256(body).hexdigest()):
        raise AuthError("the answer's body does not match its signature")
    return f


class FrameGuard:
    """The receiving half's check of a request frame, before its body is read.

    `admit` verifies the MAC, freshness, addressing and the nonce; `finish`
    checks the body against the digest the MAC covers. Thread-safe.
    """

    def __init__(self, secret: str, me: str, max_nonces: int = MAX_NONCES) -> None:
        self.secret, self.me = secret, me
        self.started = time.time()
        self.max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> monotonic expiry, in insertion order
        self._lock = threading.Lock()

    def admit(self, method: str, path: str, header: str | None, length: int, senders: tuple[str, ...]) -> Frame:
        f, mac = parse_header(header)
        if not hmac.compare_digest(_mac(self.secret, "req", f"{method} {path}", f), mac):
            raise AuthError("wrong MAC (pair secrets differ?)")
        _fresh(f)
        if float(f.t) < self.started - 1.0:
            raise AuthError("frame signed before this server started (a replay?)")
        if f.receiver != self.me:
            raise AuthError(f"frame addressed to {f.receiver}, this server is {self.me}")
        if f.sender == self.me:
            raise AuthError(f"frame from {f.sender}, which is this server (a reflected frame)")
        if f.sender not in senders:
            raise AuthError(f"{path} takes no frame from {f.sender}")
        if f.length != length:
            raise AuthError(f"signed for {f.length} bytes, Content-Length says {length}")
        now = time.monotonic()
        with self._lock:
            while self._seen:
                nonce, expiry = next(iter(self._seen.items()))
                if expiry > now:
                    break
                del self._seen[nonce]
            if f.nonce in self._seen:
                raise AuthError("frame already seen (a replay)")
            if len(self._seen) >= self.max_nonces:
                raise AuthError("too many frames within the skew window")
            self._seen[f.nonce] = now + 2 * MAX_SKEW + 2.0
        return f

    @staticmethod
    def finish(f: Frame, length: int, digest: str) -> None:
        if f.length != length or not hmac.compare_digest(f.digest, digest):
            raise AuthError("the body does not match its signature")


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
    """Signed requests to the peer's HA port, with hard timeouts. `epoch` is
    called for the epoch each frame carries."""

    def __init__(self, address: str, port: int, secret: str, timeout: float, *, me: str,
                 epoch: Callable[[], int] = lambda: 0) -> None:
        self.base = f"http://{address}:{port}"
        self.secret = secret
        self.timeout = timeout
        self.me, self.peer = me, other_role(me)
        self.epoch = epoch
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=4))

    async def post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        auth, nonce = sign_request(self.secret, "POST", path, body, sender=self.me, receiver=self.peer,
                                   epoch=self.epoch())
        headers = {AUTH_HEADER: auth, "content-type": "application/json"}
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
        verify_response(self.secret, r.headers.get(AUTH_HEADER), path, r.status_code, r.content,
                        nonce=nonce, sender=self.peer, receiver=self.me)
        data = r.json()
        if not isinstance(data, dict):
            raise PeerError(f"peer {self.base}{path} answered a non-object")
        return data

    async def close(self) -> None:
        await self._client.aclose()


class BackchannelGate:
    """The HA port's gate (`tandem.net.httpmini.Gate`) for signed routes: a
    `FrameGuard` check of the head, taking frames only from `senders`."""

    def __init__(self, guard: FrameGuard, senders: tuple[str, ...]) -> None:
        self.guard, self.senders = guard, senders

    def admit(self, method: str, path: str, headers: dict[str, str], length: int) -> Frame:
        try:
            return self.guard.admit(method, path, headers.get(AUTH_HEADER), length, self.senders)
        except AuthError as exc:
            raise Refused(401, "auth", f"refused {path}: {exc}") from exc

    def finish(self, token: Any, length: int, digest: str) -> None:
        try:
            FrameGuard.finish(token, length, digest)
        except AuthError as exc:
            raise Refused(401, "auth", f"refused: {exc}") from exc


def answer(secret: str, req: Request, data: dict[str, Any], epoch: int, status: int = 200) -> Response:
    """Our answer to a frame a `BackchannelGate` admitted, signed for its sender."""
    body = json.dumps(data, separators=(",", ":")).encode()
    frame: Frame = req.auth
    return Response(status, body, headers={AUTH_HEADER: sign_response(secret, frame, req.path, status, body, epoch)})


def frame_json(req: Request) -> dict[str, Any] | Response:
    """The JSON object an admitted frame carries, or a 400 answer (logged)."""
    try:
        d = json.loads(req.body)
        if not isinstance(d, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        log.warning("backchannel: garbage frame on %s from %s: %s", req.path, req.peer, exc)
        return Response.json({"error": f"bad frame: {exc}"}, 400)
    return d
