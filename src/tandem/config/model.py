"""The profile as a typed value: what `load_profile` returns and servers use.

Key names in `[ha]` are the seed's verbatim (BackupServerIp, LockFile, ...);
timing keys are Tandem's own and are validated together at load (see
`tandem.config.validate`). Times are integers in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Mode = Literal["AMS", "AGS"]
HAType = Literal["replicated", "shared", "none"]
Role = Literal["primary", "secondary"]
ReplicationMode = Literal["sync", "async"]


@dataclass(frozen=True)
class ServerSection:
    Mode: Mode
    Name: str
    ClientAddress: str = "127.0.0.1"
    ClientPort: int = 0
    HAAddress: str = "127.0.0.1"
    HAPort: int = 0
    DbPath: str = "data"


@dataclass(frozen=True)
class GatewaySection:
    Environment: str = "default"
    Workers: int = 0  # 0: one per core
    Token: str = ""
    AccessLog: bool = True


@dataclass(frozen=True)
class HASection:
    Type: HAType = "none"
    Role: Role = "primary"
    BackupServerIp: str = ""
    BackupHAIPAddress: str = ""
    BackupHAPort: int = 0
    LockFile: str = ""
    GatewayServerIPAddress: str = ""
    GatewayServerPort: int = 0  # 0: ICMP echo instead of TCP connect
    PrimaryURL: str = ""
    BackupURLs: str = ""  # ';'-separated
    PairSecret: str = ""
    ReplicationMode: ReplicationMode = "sync"
    LogRetention: int = 100_000  # changes kept in the log; a passive further behind gets a snapshot
    # timing (milliseconds)
    HeartbeatInterval: int = 100
    HeartbeatMisses: int = 5
    LockRetryInterval: int = 50
    LockVerifyInterval: int = 250
    LockIOTimeout: int = 200
    TakeoverWait: int = 600
    ProbeInterval: int = 500
    ProbeTimeout: int = 300
    ProbeFailures: int = 3
    WatchdogTimeout: int = 2000

    @property
    def self_fence_deadline(self) -> int:
        """Longest time an active can keep serving after it stopped holding the lock."""
        return self.LockVerifyInterval + self.LockIOTimeout

    @property
    def peer_dead_after(self) -> int:
        return self.HeartbeatInterval * self.HeartbeatMisses

    @property
    def backup_urls(self) -> list[str]:
        return [u.strip() for u in self.BackupURLs.split(";") if u.strip()]


@dataclass(frozen=True)
class Profile:
    """A loaded, validated profile. `name` is e.g. 'haprofile1/primary/AMS'."""

    name: str
    folder: Path
    server: ServerSection
    ha: HASection = field(default_factory=HASection)
    gateway: GatewaySection | None = None

    @property
    def mode(self) -> Mode:
        return self.server.Mode

    @property
    def db_path(self) -> str:
        """Store location: a postgresql:// URL, or an absolute path (relative ones
        resolved against the profile folder)."""
        raw = self.server.DbPath
        if raw.startswith(("postgresql://", "postgres://")):
            return raw
        p = Path(raw)
        return str(p if p.is_absolute() else (self.folder / p))

    @property
    def run_dir(self) -> Path:
        """Where the pid file and log of a background server live."""
        return self.folder / "run"

    @property
    def client_url(self) -> str:
        return f"http://{self.server.ClientAddress}:{self.server.ClientPort}"

    @property
    def ha_url(self) -> str:
        return f"http://{self.server.HAAddress}:{self.server.HAPort}"
