"""The backchannel client against a hostile network: every failure is one PeerError."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter

import uvloop

from tandem.errors import PeerError
from tandem.ha.backchannel import PeerClient


def test_connection_resets_are_ordinary_peer_errors() -> None:
    """A peer whose every connection is reset at once (what a firewall REJECT sends):
    each post ends in PeerError, never an exception from inside httpx/anyio (under
    uvloop some resets surfaced as AttributeError and killed the heartbeat tick)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    halt = threading.Event()

    def reset_all() -> None:
        while not halt.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    t = threading.Thread(target=reset_all, daemon=True)
    t.start()
    seen: Counter[str] = Counter()

    async def one(pc: PeerClient) -> None:
        try:
            await pc.post("/ha/peer/heartbeat", {"server": "x"})
            seen["answered"] += 1
        except PeerError:
            seen["PeerError"] += 1
        except Exception as exc:  # what the test exists to catch
            seen[f"{type(exc).__name__}: {exc}"] += 1

    async def main() -> None:
        pc = PeerClient("127.0.0.1", port, "secret", 0.5, me="primary")
        try:
            for _ in range(100):
                await asyncio.gather(*(one(pc) for _ in range(4)))
        finally:
            await pc.close()

    try:
        uvloop.run(main())
    finally:
        halt.set()
        t.join(2)
        srv.close()
    assert seen == Counter({"PeerError": 400}), seen
