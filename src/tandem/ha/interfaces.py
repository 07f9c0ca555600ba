"""The seams of the HA package, as declared interfaces.

- `ServerOps`: what a controller may ask of the server process (ports, store).
- `Controller`: what the server asks of a controller ("do I serve?", status).
- `Replication`: what the HA loop needs of replication. Until replication runs
  (`NoReplication`), a replicated passive treats its store as not in sync: it
  never activates on its own unless the LockFile names it in sync (it was the
  last active) or an operator forces it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tandem.config.model import Profile
    from tandem.net.httpmini import Route
    from tandem.store import Store

Routes = dict[tuple[str, str], "Route"]


class ServerOps(Protocol):
    profile: Profile
    store: Store | None

    @property
    def client_open(self) -> bool:
        """True while the client port is open."""

    def open_store(self) -> Store: ...

    def close_store(self) -> None: ...

    def set_aside_store(self) -> str:
        """Rule 6: move the store's files aside (never delete), reopen it empty; returns where."""

    async def activate(self) -> None:
        """Open the client port (the store must be open). Raises if the port cannot open."""

    async def deactivate(self, drain_timeout: float) -> None:
        """Close the client port now; drain in-flight requests up to `drain_timeout` s."""

    def console(self, line: str) -> None:
        """One line on the console / log (timestamped by the caller)."""


class Controller(ABC):
    """Runs a server's HA role. `status()` feeds `/ha/status`."""

    def __init__(self, ops: ServerOps) -> None:
        self.ops = ops

    @abstractmethod
    async def start(self) -> None:
        """Begin: may activate immediately (standalone) or start the HA loop."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop serving first, then release whatever the role holds (lock, peers)."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """type, role, state, epoch, peer{...}, lock{...}, isolated, since."""

    @property
    @abstractmethod
    def serving(self) -> bool:
        """True while this server serves clients (drives /ha/active)."""

    async def durable(self, lsn: int, epoch: int) -> None:
        """Return once the write at (`epoch`, `lsn`) may be acknowledged to a client; raise
        NotDurable when it may not (rule 4). A server without a peer: at once."""
        return None

    def healthy(self) -> bool:
        """False when the controller's loop is stuck: the watchdog then stops hearing from us."""
        return True

    def routes(self) -> Routes:
        """Extra HA-port routes (backchannel): {(method, path): Route(handler, max_body, gate)}."""
        return {}

    def store_reopened(self, store: Store) -> None:
        """The server moved a diverged store aside and opened a new one (rule 6)."""
        return None


ControllerFactory = Callable[[ServerOps], Controller]


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

    def routes(self) -> Routes:
        """HA-port routes of the passive side."""
        return {}

    def attach(self, store: Store) -> None:
        """The store is open (at start, and again after a set-aside): follow its commits."""

    async def close(self) -> None:
        pass


class NoReplication(Replication):
    pass
