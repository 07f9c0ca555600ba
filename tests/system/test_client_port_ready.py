"""SPEC section 3: the client port opens only once the server is ready to answer. A request
on a connection the port accepted is served, never turned away as `not_active`."""

from __future__ import annotations

import socket
import time

from tandem.testing import Home


def first_answer(port: int, timeout: float = 20.0) -> bytes:
    """Connect the moment the port accepts, send one request, return the response head."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"client port {port} never accepted within {timeout} s") from None
            time.sleep(0.002)
    with s:
        s.sendall(b"GET /api/v1/projects HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data + s.recv(65536) if b"\r\n\r\n" in data else data


def test_first_request_after_the_port_opens_is_served(home: Home) -> None:
    """Fresh starts of a standalone AMS and of a lone HA half (it activates alone): the first
    request, sent as soon as the port accepts, reaches the API (401 without a token), never
    503 not_active. Before the fix 6 of 8 standalone starts answered 503."""
    answers: list[tuple[str, bytes]] = []
    for profile, starts in (("server1/AMS", 4), ("haprofile1/primary/AMS", 3)):
        for _ in range(starts):
            srv = home.server(profile)
            srv.start()
            try:
                answers.append((profile, first_answer(srv.client_port)))
            finally:
                assert srv.stop() == 0, srv.output()[-2000:]
    bad = [(p, a[:200]) for p, a in answers if not a.startswith(b"HTTP/1.1 401")]
    assert not bad, f"{len(bad)} of {len(answers)} first requests were not served: {bad}"
