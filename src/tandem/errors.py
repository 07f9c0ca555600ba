"""One exception tree for Tandem.

    TandemError
    ├── UsageError             bad command-line input (exit code 2)
    ├── ConfigError            a profile or home is wrong: names the key and the value (exit 2)
    │   ├── UnknownProfile
    │   └── TimingError        timing keys inconsistent with each other
    ├── StoreError             the store failed; the operation did not happen
    │   ├── StoreCorrupt       the store cannot be opened or read consistently
    │   ├── ChangeRejected     a change from a peer is refused (gap, lower epoch, digest)
    │   └── StaleEpoch         an epoch lower than one already seen
    ├── LockError              the LockFile could not be used
    │   ├── LockFileMissing    the LockFile or its folder does not exist (rule 8)
    │   └── LockLost           we held the lock and can no longer prove it
    ├── PeerError              the peer backchannel failed or refused us
    │   ├── AuthError          a frame with a wrong secret
    │   └── PeerRefused        nothing listens on the peer's HA port (connection refused)
    ├── ServerError            a server could not start or stop
    │   └── AlreadyRunning     another server already runs on this profile
    └── ClientError            (tandem.client.http) an admin-API call failed
        ├── HTTPStatusError    the AMS answered an error status (its code and field kept)
        └── Unreachable        no URL of the list answered within its timeouts

Backends translate library errors at the boundary (`raise StoreError(...) from exc`).
"""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error Tandem raises on purpose."""

    exit_code = 1


class UsageError(TandemError):
    exit_code = 2


class ConfigError(TandemError):
    exit_code = 2


class UnknownProfile(ConfigError):
    pass


class TimingError(ConfigError):
    pass


class StoreError(TandemError):
    pass


class NotDurable(StoreError):
    """A committed write cannot be acknowledged: the passive may not have it and this
    server cannot vouch for it (rule 4). The client gets 503 `not_durable`."""


class StoreCorrupt(StoreError):
    pass


class ChangeRejected(StoreError):
    pass


class StaleEpoch(ChangeRejected):
    pass


class LockError(TandemError):
    exit_code = 2


class LockFileMissing(LockError):
    pass


class LockLost(LockError):
    pass


class PeerError(TandemError):
    pass


class AuthError(PeerError):
    pass


class PeerRefused(PeerError):
    pass


class ServerError(TandemError):
    pass


class AlreadyRunning(ServerError):
    exit_code = 2
