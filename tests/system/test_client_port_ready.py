"""SPEC section 3: the client port opens only once the server is ready to answer. A request
on a connection the port accepted is served, never turned away as `not_active`."""

from __future__ import annotations

import socket

from tests.support.ags import raw_request
from tests.support.harness import Home, wait_for

REQUEST = b"GET /api/v1/projects HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_first_request_after_the_port_opens_is_served(home: Home) -> None:
    """Fresh starts of a standalone AMS and of a lone HA half (it activates alone): the first
    request, sent as soon as the port accepts, reaches the API (401 without a token), never
    503 not_active. Before the fix 6 of 7 such starts answered 503."""
    answers: list[tuple[str, int, bytes]] = []
    for profile, starts in (("server1/AMS", 4), ("haprofile1/primary/AMS", 3)):
        for _ in range(starts):
            srv = home.server(profile)
            srv.start()
            try:
                wait_for(lambda s=srv: accepts(s.client_port), 20, f"{profile} client port", interval=0.002)
                status, _, body = raw_request(srv.client_port, REQUEST)
                answers.append((profile, status, body[:120]))
            finally:
                assert srv.stop() == 0, srv.output()[-2000:]
    bad = [a for a in answers if a[1] != 401]
    assert not bad, f"{len(bad)} of {len(answers)} first requests were not served: {bad}"
