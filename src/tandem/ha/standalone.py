"""A server with no HA (`Type = none`): it serves from start to stop, state `Standalone`."""

from __future__ import annotations

import time
from typing import Any

from tandem.ha.interfaces import Controller


class StandaloneController(Controller):
    state = "Starting"
    since = 0.0

    async def start(self) -> None:
        self.ops.open_store()
        self.state, self.since = "Standalone", time.time()  # before the port accepts: see SPEC section 3
        try:
            await self.ops.activate()
        except BaseException:
            self.state = "Starting"
            raise
        self.ops.console("HA  Starting -> Standalone  epoch=0  reason=no HA configured (Type none)")

    async def stop(self) -> None:
        if self.state == "Standalone":
            await self.ops.deactivate(drain_timeout=5.0)
        self.state, self.since = "Stopped", time.time()

    @property
    def serving(self) -> bool:
        return self.state == "Standalone" and self.ops.client_open

    def status(self) -> dict[str, Any]:
        return {"type": "none", "role": self.ops.profile.ha.Role, "state": self.state, "epoch": 0,
                "peer": {"state": None, "address": None, "replicated_lsn": None, "lag": None},
                "lock": {"path": None, "held": False}, "isolated": False, "since": self.since, "history": []}

    def __repr__(self) -> str:
        return f"<StandaloneController {self.ops.profile.name} state={self.state}>"
