"""`HostStandIn`: the `ServiceHost` (tandem.server.client_service) a client service runs in,
without a server process: a profile, a real store opened on first use, no HA.

    host = HostStandIn.for_ags(tmp_path / "ags", port, primary_url=ams_url)   # GatewayService
    host = HostStandIn.for_ams(tmp_path / "ams")                              # the AMS app
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.config.model import GatewaySection, HASection, Profile, ServerSection
from tandem.store import Store, open_store


@dataclass(eq=False)
class HostStandIn:
    profile: Profile
    store: Store | None = None
    serving: bool = True
    state: str = "Standalone"  # what ha_state() answers
    history: list[dict[str, Any]] = field(default_factory=list)  # what ha_status() answers as `history`
    metric_sources: list[Callable[[], bytes]] = field(default_factory=list)

    @classmethod
    def for_ags(cls, folder: Path, port: int, primary_url: str = "", backup_urls: str = "", workers: int = 1,
                access_log: bool = True, token: str = "") -> HostStandIn:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(Profile(name="test/AGS", folder=folder,
                           server=ServerSection(Mode="AGS", Name="test-AGS", ClientPort=port,
                                                DbPath=str(folder / "data")),
                           ha=HASection(PrimaryURL=primary_url, BackupURLs=backup_urls),
                           gateway=GatewaySection(Workers=workers, AccessLog=access_log, Token=token)))

    @classmethod
    def for_ams(cls, folder: Path, name: str = "test") -> HostStandIn:
        folder.mkdir(parents=True, exist_ok=True)
        host = cls(Profile(name=f"{name}/AMS", folder=folder,
                           server=ServerSection(Mode="AMS", Name=name, DbPath=str(folder / "data"))))
        host.open_store()
        return host

    @property
    def db_location(self) -> str:
        return self.profile.db_path

    def open_store(self) -> Store:
        if self.store is None:
            self.store = open_store(self.db_location)
        return self.store

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    async def durable(self) -> None:
        return None

    def ha_state(self) -> str:
        return self.state

    def ha_status(self) -> dict[str, Any]:
        """A `/ha/status` document of a server with no HA (`type` none), in the server's shape."""
        p = self.profile
        return {"server": p.server.Name or p.name, "profile": p.name, "mode": p.mode, "type": "none",
                "role": p.ha.Role, "state": self.state, "serving": self.serving, "epoch": 0,
                "lsn": self.store.last_lsn() if self.store is not None else 0,
                "peer": {"state": None, "address": None, "lag": None, "replicated_lsn": None},
                "lock": {"held": False, "path": None}, "isolated": False, "since": "2026-12-01T00:00:00+00:00",
                "reason": "", "waiting_reason": None, "client_url": p.client_url, "history": list(self.history)}

    def add_metric_source(self, collect: Callable[[], bytes]) -> None:
        if collect not in self.metric_sources:
            self.metric_sources.append(collect)
