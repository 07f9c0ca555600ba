"""The link to the other half of the pair: what we last heard of it, and heartbeats.

The peer is alive while we heard a valid frame from it (a request it sent or a
response to ours) within `HeartbeatInterval * HeartbeatMisses`. Its word is
trusted for nothing but its own state: the LockFile decides who serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from tandem.config.model import HASection
from tandem.errors import PeerError
from tandem.ha.backchannel import PeerClient, PeerView
from tandem.ha.states import PEER_DEAD

log = logging.getLogger("tandem.ha")


class PeerLink:
    def __init__(self, cfg: HASection, epoch: Callable[[], int]) -> None:
        self.cfg = cfg
        self.view = PeerView()
        self.client = PeerClient(cfg.BackupHAIPAddress, cfg.BackupHAPort, cfg.PairSecret,
                                 cfg.HeartbeatInterval / 1000, me=cfg.Role, epoch=epoch)
        self.error = ""  # the backchannel problem last logged

    def alive(self) -> bool:
        return time.monotonic() - self.view.heard_at <= self.cfg.peer_dead_after / 1000

    def state(self) -> str:
        return (self.view.state or "?") if self.alive() else PEER_DEAD

    def status(self, rep: dict[str, Any]) -> dict[str, Any]:
        """The `peer` part of `/ha/status` (`rep`: the replication status)."""
        return {"state": self.state(), "address": f"{self.cfg.BackupHAIPAddress}:{self.cfg.BackupHAPort}",
                "client_address": self.cfg.BackupServerIp, "epoch": self.view.epoch,
                "replicated_lsn": rep.get("replicated_lsn"), "lag": rep.get("lag")}

    def heard(self, d: dict[str, Any]) -> bool:
        """Record a heartbeat's news; True when the HA loop should look again now
        (the peer came back to life)."""
        was_alive = self.alive()
        self.view.update(d)
        return not was_alive

    async def heartbeat(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Send our heartbeat; the peer's answer, or None (the problem logged once)."""
        try:
            d = await self.client.post("/ha/peer/heartbeat", payload)
        except (PeerError, ValueError) as exc:
            if str(exc) != self.error:
                log.warning("backchannel: %s", exc)
                self.error = str(exc)
            return None
        self.error = ""
        return d

    async def announce_release(self, epoch: int) -> None:
        """Tell the peer we released `epoch` after we stopped serving (best effort:
        without it the peer simply waits TakeoverWait)."""
        try:
            await self.client.post("/ha/peer/takeover", {"epoch": epoch, "released": True}, timeout=1.0)
        except PeerError:
            pass

    async def port_refuses(self) -> bool:
        """Does the peer's HA port refuse connections right now? A server's HA port is
        open for the whole life of its process, so a refusal means that process is
        gone; unreachable or slow proves nothing (False)."""
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(self.cfg.BackupHAIPAddress, self.cfg.BackupHAPort), 0.2)
            w.close()
            return False
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.close()
