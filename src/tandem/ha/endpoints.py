"""The HA controller's routes on the HA port: the peer's heartbeats and handovers,
and the operator's switchover and force-activate.

Each route is signed (`BackchannelGate`: the frame head is checked before a
body byte is read) and every answer is signed for its sender. Operator commands
are bound to the epoch the operator saw: one signed for another epoch is
refused (a replay, or a command about a pair that has moved on). What a command
*does* is the controller's (`HAController.switchover`, `.force_activate`): these
handlers only read, check and answer frames.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tandem.config.model import HASection
from tandem.errors import PeerError
from tandem.ha.backchannel import OPERATOR, BackchannelGate, Frame, FrameGuard, answer, frame_json, other_role
from tandem.ha.peer import PeerLink
from tandem.ha.states import State
from tandem.net.httpmini import Request, Response, Route

log = logging.getLogger("tandem.ha")


class PairCommands(Protocol):
    """What the endpoints ask of the HA controller."""

    cfg: HASection
    name: str
    peer: PeerLink
    epoch: int
    state: State

    def peer_news(self, d: dict[str, Any]) -> None: ...

    def heartbeat_payload(self) -> dict[str, Any]: ...

    def peer_released(self, epoch: int) -> None: ...

    async def hand_over(self) -> tuple[str | None, int]:
        """Step down for the peer to take over: (why refused or None, the epoch handed over)."""

    def console(self, line: str) -> None: ...

    def force_activate(self) -> None: ...


class HAEndpoints:
    def __init__(self, ctl: PairCommands) -> None:
        self.ctl = ctl
        self.secret = ctl.cfg.PairSecret
        guard = FrameGuard(ctl.cfg.PairSecret, ctl.cfg.Role)
        self.peer_gate = BackchannelGate(guard, (other_role(ctl.cfg.Role),))
        self.operator_gate = BackchannelGate(guard, (OPERATOR,))

    def routes(self) -> dict[tuple[str, str], Route]:
        small = self.ctl.cfg.HAMaxControlBytes
        return {
            ("POST", "/ha/peer/heartbeat"): Route(self._heartbeat, small, self.peer_gate),
            ("POST", "/ha/peer/takeover"): Route(self._takeover, small, self.peer_gate),
            ("POST", "/ha/switchover"): Route(self._switchover, small, self.operator_gate),
            ("POST", "/ha/force-activate"): Route(self._force, small, self.operator_gate),
        }

    def _answer(self, req: Request, data: dict[str, Any], status: int = 200) -> Response:
        return answer(self.secret, req, data, self.ctl.epoch, status)

    def _stale(self, req: Request) -> Response | None:
        frame: Frame = req.auth
        if frame.epoch == self.ctl.epoch:
            return None
        log.warning("backchannel: refused %s from %s: signed for epoch %d, this server is at epoch %d",
                    req.path, req.peer, frame.epoch, self.ctl.epoch)
        return self._answer(req, {"ok": False, "error": f"command signed for epoch {frame.epoch}, {self.ctl.name} "
                                                       f"is at epoch {self.ctl.epoch} (stale or replayed): run it "
                                                       "again"}, 409)

    async def _heartbeat(self, req: Request) -> Response:
        d = frame_json(req)
        if isinstance(d, Response):
            return d
        self.ctl.peer_news(d)
        return self._answer(req, self.ctl.heartbeat_payload())

    async def _takeover(self, req: Request) -> Response:
        d = frame_json(req)
        if isinstance(d, Response):
            return d
        self.ctl.peer_released(int(d.get("epoch", -1)))
        return self._answer(req, {"ok": True, "server": self.ctl.name})

    async def _switchover(self, req: Request) -> Response:
        d = frame_json(req)
        if isinstance(d, Response):
            return d
        if (stale := self._stale(req)) is not None:
            return stale
        refused, epoch = await self.ctl.hand_over()
        if refused:
            return self._answer(req, {"ok": False, "error": refused}, 409)
        try:  # the peer may take the lock at once, without waiting out the hold-off
            await self.ctl.peer.client.post("/ha/peer/takeover", {"epoch": epoch}, timeout=2.0)
        except PeerError as exc:
            self.ctl.console(f"HA  switchover: peer did not acknowledge the handover ({exc}); it will take "
                             "the lock on its next attempt")
        return self._answer(req, {"ok": True, "from": self.ctl.name, "epoch": epoch})

    async def _force(self, req: Request) -> Response:
        d = frame_json(req)
        if isinstance(d, Response):
            return d
        if (stale := self._stale(req)) is not None:
            return stale
        self.ctl.force_activate()
        return self._answer(req, {"ok": True, "server": self.ctl.name, "state": str(self.ctl.state)})
