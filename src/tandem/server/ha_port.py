"""The HA port of a server process: open for the whole life of the process.

Its own routes say what the process is (`/ha/status`, `/ha/active`,
`/ha/digest`, `/metrics`); the HA controller adds the backchannel's signed
routes (`Controller.routes()`). The port's limits are `[ha]`'s (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from tandem.config.model import Profile
from tandem.errors import ServerError
from tandem.ha.interfaces import Controller, Routes
from tandem.net.httpmini import REFUSAL_KINDS, Limits, MiniHTTPServer, Request, Response
from tandem.store import Store


class PortHost(Protocol):
    """What the HA port reads of its server process."""

    profile: Profile
    store: Store | None
    controller: Controller
    metric_sources: list[Callable[[], bytes]]

    def status(self) -> dict[str, Any]: ...


class HAPort:
    def __init__(self, host: PortHost) -> None:
        self.host = host
        ha = host.profile.ha
        self.http = MiniHTTPServer(request_timeout=60.0, limits=Limits(
            max_connections=ha.HAMaxConnections, header_timeout=ha.HAHeaderTimeout / 1000,
            idle_timeout=ha.HAIdleTimeout / 1000))
        self.registry = CollectorRegistry()
        self._g_serving = Gauge("tandem_serving", "1 while this server serves clients", registry=self.registry)
        self._g_epoch = Gauge("tandem_ha_epoch", "current HA epoch", registry=self.registry)
        self._g_lsn = Gauge("tandem_store_lsn", "last change in the store", registry=self.registry)
        self._g_state = Gauge("tandem_ha_state", "1 for the current HA state", ["state"], registry=self.registry)

    async def open(self, extra: Routes) -> None:
        """Listen on `[server] HAAddress:HAPort` with our routes and `extra`; ServerError if it cannot."""
        self.http.route("GET", "/ha/status", self._status)
        self.http.route("GET", "/ha/active", self._active)
        self.http.route("GET", "/metrics", self._metrics)
        self.http.route("GET", "/ha/digest", self._digest)
        for (method, path), r in extra.items():
            self.http.route(method, path, r.handler, max_body=r.max_body, gate=r.gate)
        prof = self.host.profile
        srv = prof.server
        try:
            await self.http.start(srv.HAAddress, srv.HAPort)
        except OSError as exc:
            raise ServerError(f"{prof.name}: cannot open HA port {srv.HAAddress}:{srv.HAPort}: "
                              f"{exc.strerror or exc}") from exc

    async def close(self) -> None:
        await self.http.close()

    async def _status(self, req: Request) -> Response:
        return Response.json(self.host.status())

    async def _digest(self, req: Request) -> Response:
        """Content digest of the store (equal on both halves of a pair once in sync)."""
        store = self.host.store
        if store is None:
            return Response.json({"error": "store not open on this server"}, 409)
        lsn, digest = await asyncio.to_thread(lambda: (store.last_lsn(), store.digest()))
        return Response.json({"lsn": lsn, "digest": digest, "epoch": store.last_change_epoch()})

    async def _active(self, req: Request) -> Response:
        ctl = self.host.controller
        if ctl.serving:
            return Response.json({"active": True, "state": ctl.status().get("state")})
        return Response.json({"active": False, "state": ctl.status().get("state")}, 503)

    async def _metrics(self, req: Request) -> Response:
        st = self.host.status()
        self._g_serving.set(1 if st["serving"] else 0)
        self._g_epoch.set(st["epoch"] or 0)
        self._g_lsn.set(st["lsn"] or 0)
        self._g_state.clear()
        self._g_state.labels(state=str(st["state"])).set(1)
        extra = self._port_metrics()
        for collect in self.host.metric_sources:
            extra += collect()
        return Response(200, generate_latest(self.registry) + extra, "text/plain; version=0.0.4")

    def _port_metrics(self) -> bytes:
        """The HA port's own counters: open connections, refusals by reason."""
        lines = ["# HELP tandem_ha_port_connections open connections on the HA port",
                 "# TYPE tandem_ha_port_connections gauge",
                 f"tandem_ha_port_connections {len(self.http.connections)}",
                 "# HELP tandem_open_files_limit this process's soft limit on open files (raised to the hard one)",
                 "# TYPE tandem_open_files_limit gauge",
                 f"tandem_open_files_limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}",
                 "# HELP tandem_ha_port_refused_total requests and connections the HA port refused, by reason",
                 "# TYPE tandem_ha_port_refused_total counter"]
        for reason in sorted(set(REFUSAL_KINDS) | set(self.http.refused)):
            lines.append(f'tandem_ha_port_refused_total{{reason="{reason}"}} {self.http.refused[reason]}')
        return ("\n".join(lines) + "\n").encode()
