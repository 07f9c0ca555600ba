"""Backchannel frame signatures: a frame is bound to its sender, its receiver, its
epoch, its body and a nonce, and is checked from its head alone (docs/ha.md)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest

from tandem.errors import AuthError
from tandem.ha.backchannel import (
    MAX_SKEW,
    Frame,
    FrameGuard,
    parse_header,
    sign_request,
    sign_response,
    verify_response,
)

SECRET = "s3cret"
PATH = "/ha/peer/heartbeat"
BODY = b'{"state":"Active"}'


def req(body: bytes = BODY, *, sender: str = "primary", receiver: str = "secondary", epoch: int = 3,
        path: str = PATH, secret: str = SECRET, t: float | None = None) -> str:
    return sign_request(secret, "POST", path, body, sender=sender, receiver=receiver, epoch=epoch, t=t)[0]


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def guard() -> FrameGuard:
    g = FrameGuard(SECRET, "secondary")
    g.started -= 5  # as if this server started a few seconds ago
    return g


def test_a_good_frame_is_admitted_with_its_metadata(guard: FrameGuard) -> None:
    f = guard.admit("POST", PATH, req(), len(BODY), ("primary",))
    assert (f.sender, f.receiver, f.epoch, f.length) == ("primary", "secondary", 3, len(BODY))
    FrameGuard.finish(f, len(BODY), digest(BODY))


def test_a_replayed_frame_is_refused(guard: FrameGuard) -> None:
    header = req()
    guard.admit("POST", PATH, header, len(BODY), ("primary",))
    with pytest.raises(AuthError, match="replay"):
        guard.admit("POST", PATH, header, len(BODY), ("primary",))


def test_a_reflected_frame_is_refused() -> None:
    """A heartbeat primary -> secondary, sent back to the primary."""
    primary = FrameGuard(SECRET, "primary")
    primary.started -= 5
    with pytest.raises(AuthError, match="addressed to secondary"):
        primary.admit("POST", PATH, req(), len(BODY), ("secondary",))
    # and one that claims to be from the receiver itself
    with pytest.raises(AuthError, match="reflected"):
        primary.admit("POST", PATH, req(sender="primary", receiver="primary"), len(BODY), ("primary", "secondary"))


@pytest.mark.parametrize(("make", "length", "senders", "why"), [
    (lambda: None, len(BODY), ("primary",), "missing"),
    (lambda: "t=1,mac=00", len(BODY), ("primary",), "malformed"),
    (lambda: "v=2,t=x,n=0123456789abcdef,from=primary,to=secondary,e=1,len=1,h=" + "0" * 64 + ",mac=0",
     1, ("primary",), "malformed"),
    (lambda: req(secret="other"), len(BODY), ("primary",), "wrong MAC"),
    (lambda: req(t=time.time() - MAX_SKEW - 5), len(BODY), ("primary",), "too far"),
    (lambda: req(t=time.time() + MAX_SKEW + 5), len(BODY), ("primary",), "too far"),
    (lambda: req(sender="operator"), len(BODY), ("primary",), "takes no frame from operator"),
    (lambda: req(), len(BODY) + 1, ("primary",), "Content-Length"),
    (lambda: req(path="/ha/switchover"), len(BODY), ("primary",), "wrong MAC"),  # signed for another route
])
def test_refused_from_the_head(guard: FrameGuard, make: Callable[[], str | None], length: int,
                               senders: tuple[str, ...], why: str) -> None:
    with pytest.raises(AuthError, match=why):
        guard.admit("POST", PATH, make(), length, senders)


def test_a_tampered_field_breaks_the_mac(guard: FrameGuard) -> None:
    header = req()
    for field, new in (("e=3", "e=4"), ("to=secondary", "to=secondarx"), ("from=primary", "from=primarx")):
        with pytest.raises(AuthError):
            guard.admit("POST", PATH, header.replace(field, new), len(BODY), ("primary", "primarx"))


def test_a_frame_signed_before_the_receiver_started_is_refused() -> None:
    """A capture replayed to a restarted receiver (whose nonce memory is new)."""
    header = req(t=time.time() - 3)
    fresh = FrameGuard(SECRET, "secondary")
    with pytest.raises(AuthError, match="before this server started"):
        fresh.admit("POST", PATH, header, len(BODY), ("primary",))


def test_a_body_other_than_the_signed_one_is_refused(guard: FrameGuard) -> None:
    f = guard.admit("POST", PATH, req(), len(BODY), ("primary",))
    with pytest.raises(AuthError, match="body"):
        FrameGuard.finish(f, len(BODY), digest(BODY.replace(b"Active", b"Passiv")))


def test_the_nonce_memory_is_bounded(guard: FrameGuard) -> None:
    small = FrameGuard(SECRET, "secondary", max_nonces=3)
    small.started -= 5
    for _ in range(3):
        small.admit("POST", PATH, req(), len(BODY), ("primary",))
    with pytest.raises(AuthError, match="too many"):
        small.admit("POST", PATH, req(), len(BODY), ("primary",))


def test_an_answer_is_bound_to_its_request() -> None:
    header, nonce = sign_request(SECRET, "POST", PATH, BODY, sender="primary", receiver="secondary", epoch=3)
    frame, _ = parse_header(header)
    answer = b'{"state":"Passive"}'
    h = sign_response(SECRET, frame, PATH, 200, answer, 3)
    f = verify_response(SECRET, h, PATH, 200, answer, nonce=nonce, sender="secondary", receiver="primary")
    assert isinstance(f, Frame) and f.sender == "secondary"
    with pytest.raises(AuthError, match="nonce"):  # a captured answer replayed to another request
        verify_response(SECRET, h, PATH, 200, answer, nonce="f" * 32, sender="secondary", receiver="primary")
    with pytest.raises(AuthError, match="body"):
        verify_response(SECRET, h, PATH, 200, b"{}", nonce=nonce, sender="secondary", receiver="primary")
    with pytest.raises(AuthError, match="MAC"):
        verify_response(SECRET, h, PATH, 409, answer, nonce=nonce, sender="secondary", receiver="primary")
    with pytest.raises(AuthError, match="from secondary"):  # our own answer reflected back
        verify_response(SECRET, h, PATH, 200, answer, nonce=nonce, sender="primary", receiver="secondary")
