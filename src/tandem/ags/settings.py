"""Gateway settings: the `[gateway]` profile section plus the data plane's limits.

The profile gives `Environment`, `Workers`, `Token` and `AccessLog`. The
limits and timeouts below have defaults; each can be overridden by an
environment variable `TANDEM_GATEWAY_<NAME>` (e.g. `TANDEM_GATEWAY_READ_TIMEOUT=2`)
or, once the profile grows the key, by `[gateway]` (`ReadTimeout`, ...).
`TANDEM_GATEWAY_TOKEN` overrides `Token` (SPEC section 2).

Settings travel to worker processes as JSON, so every field is a plain value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.errors import ConfigError

if TYPE_CHECKING:
    from tandem.config.model import Profile


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 0
    environment: str = "default"
    workers: int = 1  # resolved: never 0
    in_process: bool = False  # Workers=1 with TANDEM_GATEWAY_INPROCESS=1: serve inside the server process
    token: str = ""
    access_log: str = ""  # path of the JSON-lines access log; "" = off
    name: str = ""  # gateway name reported to the AMS
    pair: str = ""
    # limits
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    max_body_bytes: int = 128 * 1024 * 1024
    # upstream
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    keepalive: int = 64  # idle connections kept per target and process
    max_upstream_connections: int = 1024  # per target and process; more requests wait
    fail_timeout: float = 10.0  # a target that failed to connect is skipped this long
    # client side
    client_idle_timeout: float = 75.0
    client_header_timeout: float = 30.0
    # feed
    feed_wait: int = 25
    feed_backoff_max: float = 5.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewaySettings:
        return cls(**json.loads(text))


# profile key -> field; the env name is TANDEM_GATEWAY_ + the field upper-cased
_TUNABLES = {
    "MaxHeaderBytes": "max_header_bytes", "MaxHeaders": "max_headers", "MaxUrlBytes": "max_url_bytes",
    "MaxBodyBytes": "max_body_bytes", "ConnectTimeout": "connect_timeout", "ReadTimeout": "read_timeout",
    "Keepalive": "keepalive", "MaxUpstreamConnections": "max_upstream_connections",
    "FailTimeout": "fail_timeout", "ClientIdleTimeout": "client_idle_timeout",
    "ClientHeaderTimeout": "client_header_timeout", "FeedWait": "feed_wait",
    "FeedBackoffMax": "feed_backoff_max",
}


def settings_from_profile(profile: Profile, env: dict[str, str] | None = None) -> GatewaySettings:
    """Resolve the settings of an AGS profile; a bad override raises ConfigError naming it."""
    env = dict(os.environ) if env is None else env
    gw = profile.gateway
    workers = getattr(gw, "Workers", 0) if gw is not None else 0
    env_workers = env.get("TANDEM_GATEWAY_WORKERS")
    if env_workers:
        workers = _number(int, "TANDEM_GATEWAY_WORKERS", env_workers)
    workers = workers or os.cpu_count() or 1
    # Workers = 1 is one worker *process* by default: the data plane then shares neither
    # its event loop nor its GIL with the HA loop (measured cheaper per request, and
    # traffic cannot delay lock verification); TANDEM_GATEWAY_INPROCESS=1 serves in-process.
    in_process = workers == 1 and env.get("TANDEM_GATEWAY_INPROCESS", "0") == "1"
    access = getattr(gw, "AccessLog", True) if gw is not None else True
    values: dict[str, Any] = {}
    for key, field in _TUNABLES.items():
        kind = type(getattr(GatewaySettings, field))
        raw = getattr(gw, key, None) if gw is not None else None
        if raw is not None:
            values[field] = _number(kind, f"[gateway] {key}", raw)
        env_name = "TANDEM_GATEWAY_" + field.upper()
        if env.get(env_name):
            values[field] = _number(kind, env_name, env[env_name])
    run_dir: Path = profile.run_dir
    return GatewaySettings(
        host=profile.server.ClientAddress,
        port=profile.server.ClientPort,
        environment=getattr(gw, "Environment", "default") if gw is not None else "default",
        workers=workers,
        in_process=in_process,
        token=env.get("TANDEM_GATEWAY_TOKEN") or str(getattr(gw, "Token", "") or ""),
        access_log=str(run_dir / "access.log") if access else "",
        name=re.sub(r"[^A-Za-z0-9._-]", "-", profile.server.Name or profile.name)[:64],
        pair=profile.name.split("/")[0],
        **values,
    )


def _number(kind: type, name: str, raw: Any) -> Any:
    try:
        value = kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected a {kind.__name__}, got {raw!r}") from exc
    if value < 0:
        raise ConfigError(f"{name}: must not be negative, got {raw!r}")
    return value
