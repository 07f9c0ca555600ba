"""The seam the replicator fills: what the HA loop needs to know of replication.

Until replication exists (`NoReplication`), a replicated passive treats its
store as not in sync: it never activates on its own unless the LockFile
names it in sync (it was the last active) or an operator forces it.
"""

from __future__ import annotations

from typing import Any

from tandem.server.httpmini import Route


class Replication:
    """Default: no replication. Subclasses override what they know."""

    def passive_syncing(self) -> bool:
        """We are a passive receiving catch-up data (PassiveSync)."""
        return False

    def peer_syncing(self) -> bool:
        """We are an active sending catch-up data to the peer (ActiveSync)."""
        return False

    def status(self) -> dict[str, Any]:
        return {"replicated_lsn": None, "lag": None}

    async def on_state(self, state: str, epoch: int) -> None:
        """Told after every state change."""

    async def wait_durable(self, lsn: int, epoch: int) -> None:
        """Return once the write at (`epoch`, `lsn`) may be acknowledged to a client; raise
        NotDurable when it may not (rule 4). Without replication a commit is durable."""

    def fail_pending(self) -> None:
        """Step-down: no write still waiting may be acknowledged unless the peer has it."""

    def routes(self) -> dict[tuple[str, str], Route]:
        return {}

    async def close(self) -> None:
        pass


class NoReplication(Replication):
    pass
