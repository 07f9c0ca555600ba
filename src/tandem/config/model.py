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
    # client-side limits (docs/limits.md); times in milliseconds
    ClientHeaderTimeout: int = 30_000  # the whole request head, from its first byte; not restarted per byte
    ClientBodyTimeout: int = 60_000  # longest gap between two reads of a request body (nginx client_body_timeout)
    SendTimeout: int = 60_000  # longest a response write may wait on a client that does not read (nginx send_timeout)
    KeepAliveTimeout: int = 75_000  # an idle keep-alive connection is closed after this (nginx keepalive_timeout)
    MaxConnections: int = 4096  # client connections per worker; past it new ones get 503 and are closed
    AllowTrace: bool = False  # TRACE is refused (405) unless this is true
    MaxHeaderBytes: int = 32 * 1024  # request head bytes (431)
    MaxHeaders: int = 100  # request header fields (431)
    MaxUrlBytes: int = 8 * 1024  # request target (414)
    MaxBodyBytes: int = 128 * 1024 * 1024  # request body (413)
    ConnectTimeout: int = 5000  # ms to connect to a target (504)
    ReadTimeout: int = 60_000  # ms from the request sent to the first response byte (504)
    MaxUpstreamConnections: int = 1024  # per target and worker; more requests wait for one


@dataclass(frozen=True)
class AdminSection:
    """The AMS admin API's limits (client port); times in milliseconds."""

    AdminMaxBodyBytes: int = 8 * 1024 * 1024  # a larger request body gets 413 body_too_large before it is parsed
    AdminMaxJSONDepth: int = 64  # nesting deeper than this gets 422 before the document is used
    AdminHeaderTimeout: int = 30_000  # the whole request head, from its first byte
    AdminBodyTimeout: int = 60_000  # longest gap between two reads of a request body (nginx client_body_timeout)
    AdminIdleTimeout: int = 75_000  # an idle keep-alive connection is closed after this
    AdminMaxConnections: int = 1024  # concurrent connections; past it new ones get 503
    AuditRetentionDays: int = 90  # audit entries older than this are pruned (docs/security.md)


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
    # HA port limits (docs/limits.md)
    HAMaxConnections: int = 32  # open connections on the HA port; past it new ones are closed at once
    HAHeaderTimeout: int = 5000  # ms for a whole request head on the HA port
    HAIdleTimeout: int = 30_000  # ms an idle HA-port connection is kept
    HAMaxControlBytes: int = 65_536  # body of a heartbeat or control frame
    HAMaxBatchBytes: int = 64 * 1024 * 1024  # body of a replication batch or snapshot

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
    admin: AdminSection | None = None  # AMS only

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

    @property
    def peer_ha_url(self) -> str:
        """The other half's HA port (meaningful for a pair: validation requires its address and port)."""
        return f"http://{self.ha.BackupHAIPAddress}:{self.ha.BackupHAPort}"
