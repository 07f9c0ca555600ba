"""The seam between a server process and its HA controller.

A controller owns the decision "do I serve?"; the server owns the ports and
the store. `ServerOps` is what a controller may ask of the server;
`Controller` is what the server asks of a controller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tandem.config.model import Profile
    from tandem.server.httpmini import Route
    from tandem.store import Store


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

    def routes(self) -> dict[tuple[str, str], Route]:
        """Extra HA-port routes (backchannel): {(method, path): Route(handler, max_body, gate)}."""
        return {}
