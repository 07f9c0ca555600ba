"""Gateway settings: the `[gateway]` profile section plus the data plane's limits.

The profile gives `Environment`, `Workers`, `Token`, `AccessLog` and the
client-side limits (`ClientHeaderTimeout`, `ClientBodyTimeout`, `SendTimeout`,
`KeepAliveTimeout` in milliseconds, `MaxConnections`, `AllowTrace`: see
`config/model.py` GatewaySection). Every limit and timeout below has a
default and can be overridden by an environment variable
`TANDEM_GATEWAY_<FIELD>` in the field's own unit (seconds for times, e.g.
`TANDEM_GATEWAY_READ_TIMEOUT=2`, `TANDEM_GATEWAY_SEND_TIMEOUT=0.5`), which
wins over the profile. `TANDEM_GATEWAY_TOKEN` overrides `Token` (SPEC section 2).

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

from tandem.config.model import GatewaySection
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
    # client side (docs/gateway.md "Client-side limits")
    client_header_timeout: float = 30.0  # a whole request head, from its first byte (not restarted per byte)
    client_body_timeout: float = 60.0  # longest gap between two reads of a request body -> 408, close
    send_timeout: float = 60.0  # longest a response write waits on a client that takes no byte -> dropped
    keepalive_timeout: float = 75.0  # an idle keep-alive connection (no request started) is closed
    max_connections: int = 4096  # client connections per serving process; past it: 503 and close
    allow_trace: bool = False  # TRACE is answered 405 unless this is set
    # feed
    feed_wait: int = 25
    feed_backoff_max: float = 5.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewaySettings:
        return cls(**json.loads(text))


# fields overridable only by their environment variable (TANDEM_GATEWAY_ + the field upper-cased)
_ENV_ONLY = ("keepalive", "fail_timeout", "feed_wait", "feed_backoff_max")
# [gateway] profile keys (GatewaySection) -> field, and the factor from the key's unit to the field's
_PROFILE = {
    "ClientHeaderTimeout": ("client_header_timeout", 0.001), "ClientBodyTimeout": ("client_body_timeout", 0.001),
    "SendTimeout": ("send_timeout", 0.001), "KeepAliveTimeout": ("keepalive_timeout", 0.001),
    "MaxConnections": ("max_connections", 1),
    "MaxHeaderBytes": ("max_header_bytes", 1), "MaxHeaders": ("max_headers", 1), "MaxUrlBytes": ("max_url_bytes", 1),
    "MaxBodyBytes": ("max_body_bytes", 1), "ConnectTimeout": ("connect_timeout", 0.001),
    "ReadTimeout": ("read_timeout", 0.001), "MaxUpstreamConnections": ("max_upstream_connections", 1),
}
# environment names kept from before the profile keys existed
_ALIASES = {"TANDEM_GATEWAY_CLIENT_IDLE_TIMEOUT": "keepalive_timeout"}


def settings_from_profile(profile: Profile, env: dict[str, str] | None = None) -> GatewaySettings:
    """Resolve the settings of an AGS profile; a bad override raises ConfigError naming it."""
    env = dict(os.environ) if env is None else env
    gw = profile.gateway
    section = gw or GatewaySection()  # an AGS profile without [gateway]: its defaults
    workers = section.Workers
    env_workers = env.get("TANDEM_GATEWAY_WORKERS")
    if env_workers:
        workers = _number(int, "TANDEM_GATEWAY_WORKERS", env_workers)
    workers = workers or os.cpu_count() or 1
    # Workers = 1 is one worker *process* by default: the data plane then shares neither
    # its event loop nor its GIL with the HA loop (measured cheaper per request, and
    # traffic cannot delay lock verification); TANDEM_GATEWAY_INPROCESS=1 serves in-process.
    in_process = workers == 1 and env.get("TANDEM_GATEWAY_INPROCESS", "0") == "1"
    access = section.AccessLog
    values: dict[str, Any] = {}
    if gw is not None:
        for key, (field, factor) in _PROFILE.items():
            raw = getattr(gw, key)
            value = _number(int, f"[gateway] {key}", raw)
            if value <= 0:
                raise ConfigError(f"[gateway] {key}: must be positive, got {raw!r}")
            values[field] = value * factor if factor != 1 else value
        values["allow_trace"] = bool(gw.AllowTrace)
    for field in (*_ENV_ONLY, *(f for f, _ in _PROFILE.values())):
        env_name = "TANDEM_GATEWAY_" + field.upper()
        if env.get(env_name):
            values[field] = _number(type(getattr(GatewaySettings, field)), env_name, env[env_name])
    for env_name, field in _ALIASES.items():
        if env.get(env_name) and not env.get("TANDEM_GATEWAY_" + field.upper()):
            values[field] = _number(float, env_name, env[env_name])
    if env.get("TANDEM_GATEWAY_ALLOW_TRACE"):
        values["allow_trace"] = env["TANDEM_GATEWAY_ALLOW_TRACE"].lower() in ("1", "true", "yes")
    run_dir: Path = profile.run_dir
    return GatewaySettings(
        host=profile.server.ClientAddress,
        port=profile.server.ClientPort,
        environment=section.Environment,
        workers=workers,
        in_process=in_process,
        token=env.get("TANDEM_GATEWAY_TOKEN") or section.Token,
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
