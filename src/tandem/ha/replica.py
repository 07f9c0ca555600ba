"""The passive side of replication: the frames the active sends us.

Frames are accepted only from the pair (signed: the gate checks the head before
the body is read), never while we hold the lock, and never from an epoch lower
than one we know (rule 2). `hello` tells the active where our store ends;
`frames` applies a batch of changes; `snapshot` restores a whole copy, after
setting a diverged one aside (rule 6). While catch-up data arrives we are
`PassiveSync` (`syncing()`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Any, Protocol

from tandem.config.model import HASection
from tandem.errors import ChangeRejected, StoreError, TandemError
from tandem.ha.backchannel import BackchannelGate, answer, frame_json
from tandem.ha.interfaces import ServerOps
from tandem.ha.lockfile import LockFile
from tandem.net.httpmini import Request, Response, Route
from tandem.store import Change, Store

log = logging.getLogger("tandem.ha.replicator")


class ReplicationHost(Protocol):
    """What the replicator may ask of the HA controller that runs it."""

    name: str
    lock: LockFile  # the record (epoch, in-sync set) and its writes

    @property
    def epoch(self) -> int:
        """The highest epoch this server knows."""

    def learn_epoch(self, epoch: int) -> None:
        """A frame of the active carried `epoch` (never lower than ours)."""

    def holds_verified_lock(self) -> bool:
        """May this server vouch for a write or change the LockFile's in-sync set?"""

    def refuses_frames(self) -> str | None:
        """Why a replication frame from the peer is refused now (we hold the lock), or None."""

    def nudge(self) -> None:
        """Run the HA cycle now (the in-sync set or a catch-up changed)."""


class Replica:
    def __init__(self, host: ReplicationHost, ops: ServerOps, cfg: HASection, gate: BackchannelGate) -> None:
        self.host, self.ops, self.cfg, self.gate = host, ops, cfg, gate
        self.catchup_until = 0.0

    @property
    def store(self) -> Store:
        st = self.ops.store
        if st is None:
            raise StoreError("store not open")
        return st

    def syncing(self) -> bool:
        """Receiving catch-up data (PassiveSync)."""
        return time.monotonic() < self.catchup_until

    def routes(self) -> dict[tuple[str, str], Route]:
        small, big, gate = self.cfg.HAMaxControlBytes, self.cfg.HAMaxBatchBytes, self.gate
        return {("POST", "/ha/repl/hello"): Route(self._h_hello, small, gate),
                ("POST", "/ha/repl/frames"): Route(self._h_frames, big, gate),
                ("POST", "/ha/repl/snapshot"): Route(self._h_snapshot, big, gate)}

    def _admit(self, req: Request) -> dict[str, Any] | Response:
        d = frame_json(req)
        if isinstance(d, Response):
            return d
        epoch = d.get("epoch")
        if not isinstance(epoch, int):
            return Response.json({"ok": False, "error": "frame without an integer epoch"}, 400)
        if (refused := self.host.refuses_frames()) is not None:
            return self._answer(req, {"ok": False, "error": refused}, 409)
        if epoch < self.host.epoch:
            log.warning("replication: refused a frame of epoch %d from %s (we know epoch %d)",
                        epoch, req.peer, self.host.epoch)
            return self._answer(req, {"ok": False, "error": f"stale epoch {epoch} < {self.host.epoch}"}, 409)
        self.host.learn_epoch(epoch)
        return d

    def _answer(self, req: Request, data: dict[str, Any], status: int = 200) -> Response:
        return answer(self.cfg.PairSecret, req, data, self.host.epoch, status)

    async def _h_hello(self, req: Request) -> Response:
        d = self._admit(req)
        if isinstance(d, Response):
            return d
        st = self.store
        return self._answer(req, {"ok": True, "server": self.host.name, "last_lsn": st.last_lsn(),
                                           "last_epoch": st.last_change_epoch()})

    async def _h_frames(self, req: Request) -> Response:
        d = self._admit(req)
        if isinstance(d, Response):
            return d
        try:
            raw = d["changes"]
            if not isinstance(raw, list):
                raise ChangeRejected("changes must be a list")
            changes = [Change.from_json(c) for c in raw]
            await asyncio.to_thread(self.store.apply, changes)
        except (ChangeRejected, KeyError) as exc:
            log.warning("replication: refused a frame from %s: %s", req.peer, exc)
            return self._answer(req, {"ok": False, "error": str(exc), "last_lsn": self.store.last_lsn()})
        if d.get("catchup"):
            self.catchup_until = time.monotonic() + 1.0
        elif self.catchup_until:
            # the active says the catch-up is over; it recorded us in sync just before:
            # read that first, so we go PassiveSync -> Passive, not back to Waiting
            with contextlib.suppress(TimeoutError, OSError, TandemError):
                await self.host.lock.read()
            self.catchup_until = 0.0
            self.host.nudge()
        return self._answer(req, {"ok": True, "acked_lsn": self.store.last_lsn()})

    async def _h_snapshot(self, req: Request) -> Response:
        d = self._admit(req)
        if isinstance(d, Response):
            return d
        try:
            snap = base64.b64decode(d["snapshot"], validate=True)
            if d.get("diverged"):
                where = self.ops.set_aside_store()  # on the loop: nothing may read a closed store
                self.ops.console(f"REPL  our copy diverged from the active's: kept aside in {where}")
            await asyncio.to_thread(self.store.restore, snap)
        except (StoreError, KeyError, ValueError) as exc:
            log.warning("replication: refused a snapshot from %s: %s", req.peer, exc)
            return self._answer(req, {"ok": False, "error": str(exc)})
        self.catchup_until = time.monotonic() + 1.0
        self.ops.console(f"REPL  snapshot restored at lsn {self.store.last_lsn()}")
        return self._answer(req, {"ok": True, "acked_lsn": self.store.last_lsn()})
