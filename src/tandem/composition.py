"""The composition root: the one place that knows which product a server hosts.

`build_server(profile)` picks the client service for the profile's mode (the
AMS admin API or the AGS data plane) and the HA controller for its `[ha] Type`
(standalone, or the HA loop with replication in replicated mode), and hands
both to a generic `ServerProcess`. Nothing below this module imports it;
`tandem.server` knows neither AMS nor AGS, and `tandem.ha` knows no product.
"""

from __future__ import annotations

from tandem.config.model import Profile
from tandem.ha.controller import HAController
from tandem.ha.interfaces import ControllerFactory
from tandem.ha.standalone import StandaloneController
from tandem.server.client_service import ServiceFactory
from tandem.server.process import ServerProcess, run_server


def service_factory(mode: str) -> ServiceFactory:
    """The client service of a server of `mode` ("AMS" or "AGS")."""
    if mode == "AMS":
        from tandem.ams.admin_service import create_service  # FastAPI only where it serves

        return create_service
    from tandem.ags.gateway_service import create_service as create_gateway

    return create_gateway


def controller_factory(profile: Profile) -> ControllerFactory:
    """The HA controller for the profile's `[ha] Type` (HAController makes its own
    replicator in replicated mode)."""
    return StandaloneController if profile.ha.Type == "none" else HAController


def build_server(profile: Profile, db_location: str | None = None) -> ServerProcess:
    return ServerProcess(profile, service_factory(profile.mode), controller_factory(profile), db_location)


def serve(profile: Profile, db_location: str | None = None) -> int:
    """`tandem server start --foreground`: run until signalled; returns the exit code."""
    return run_server(lambda: build_server(profile, db_location))
