"""The seam between a server process and the product it hosts (AMS or AGS).

`ClientService` is what a server asks of the product on its client port;
`ServiceHost` is what the product may ask of the server. The server knows
neither AMS nor AGS: the composition root (`tandem.composition`) picks the
service for the profile's mode and hands it to the server.

The HA controller decides when to serve; the server calls `start()` on
activation and `stop()` on deactivation. `stop()` first stops accepting (the
port refuses connections at once, so clients move to the peer), then drains
in-flight requests up to a deadline, then cuts the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tandem.config.model import Profile
    from tandem.store import Store


class ServiceHost(Protocol):
    """What a client service may ask of the server process that hosts it."""

    profile: Profile
    db_location: str  # the store's directory or PostgreSQL URL
    store: Store | None  # looked up per use: the server may close and reopen it across a failover

    def open_store(self) -> Store:
        """The store, opened if it is not."""

    async def durable(self) -> None:
        """Return once everything committed so far may be acknowledged (rule 4); raise
        NotDurable when it may not."""

    @property
    def serving(self) -> bool:
        """Rule 1: this server serves clients now (lock held and verified, port open)."""

    def ha_state(self) -> str:
        """The HA state, as `/ha/status` reports it."""

    def ha_status(self) -> dict[str, Any]:
        """This server's whole `/ha/status` document (state, epoch, peer, lock, history, ...)."""

    async def switchover(self, requested_by: str) -> str | None:
        """Hand the active role to the in-sync peer, as `tandem ha switchover` does: None when done,
        else why it was refused. This server stops serving on the way (its client port drains)."""

    def add_metric_source(self, collect: Callable[[], bytes]) -> None:
        """Add Prometheus text to the HA port's `/metrics` (once per `collect`)."""


class ClientService(ABC):
    """The client port of one server. `serving` is true between start() and stop()."""

    serving = False

    @abstractmethod
    async def start(self) -> None:
        """Open the client port (the store is open); raise on failure (the port stays closed)."""

    @abstractmethod
    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting now, drain up to `drain_timeout` s, then close everything."""

    async def prepare(self) -> None:
        """Get ready to start quickly (at server start and after each stop); nothing may
        listen. Default: nothing to prepare."""
        return None

    async def close(self) -> None:
        """The server process ends: release what `prepare()` holds."""
        return None


ServiceFactory = Callable[[ServiceHost], ClientService]
