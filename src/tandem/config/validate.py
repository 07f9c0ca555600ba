"""Turn the raw TOML of a profile into a validated `Profile`.

Every error is a `ConfigError` on one line that names the profile, the key and
the value, e.g. ``haprofile1/primary/AMS: [ha] HeartbeatInterval = -5: must be
a positive integer (milliseconds)``. Keys a file leaves out take the dataclass
defaults of `tandem.config.model`; unknown sections and keys are refused
rather than ignored, because a misspelt key silently falling back to its
default is how a pair ends up with two actives.

Timing rules (checked by `check_timing`, all values in milliseconds):

1. ``LockVerifyInterval + LockIOTimeout < TakeoverWait`` -- an active that
   lost the lock stops serving (its self-fence deadline) before the peer,
   which waits TakeoverWait after the lock became free, starts serving.
2. ``LockIOTimeout < LockVerifyInterval`` -- a hung lock check is abandoned
   before the next one is due, so verification never falls behind.
3. ``LockRetryInterval <= TakeoverWait`` -- a passive retries the lock at
   least once within the takeover wait.
4. ``HeartbeatMisses >= 2`` -- one lost heartbeat never declares a peer dead.
5. ``WatchdogTimeout > 2 * LockVerifyInterval`` -- the supervisor does not
   kill a healthy server that is merely between two verifications.
6. ``ProbeTimeout < ProbeInterval`` -- isolation probes never overlap.
7. ``HeartbeatInterval * HeartbeatMisses >= LockRetryInterval`` -- the peer
   is declared dead no sooner than one lock retry, so a passive does not
   flap between "peer dead" and "lock still held".

The defaults in `model.py` satisfy every rule; `tests/unit/test_config_timing.py`
keeps it that way.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tandem.config.model import AdminSection, GatewaySection, HASection, Profile, ServerSection
from tandem.errors import ConfigError, TimingError

SectionClass = type[ServerSection] | type[HASection] | type[GatewaySection] | type[AdminSection]

SECTIONS: dict[str, SectionClass] = {
    "server": ServerSection,
    "ha": HASection,
    "gateway": GatewaySection,
    "admin": AdminSection,
}

TIMING_MS_KEYS = (
    "HeartbeatInterval",
    "LockRetryInterval",
    "LockVerifyInterval",
    "LockIOTimeout",
    "TakeoverWait",
    "ProbeInterval",
    "ProbeTimeout",
    "WatchdogTimeout",
)
COUNT_KEYS = ("HeartbeatMisses", "ProbeFailures")
# limits (docs/limits.md): each a positive integer, milliseconds for the *Timeout keys
LIMIT_KEYS: dict[str, tuple[str, ...]] = {
    "ha": ("HAMaxConnections", "HAHeaderTimeout", "HAIdleTimeout", "HAMaxControlBytes", "HAMaxBatchBytes"),
    "gateway": ("ClientHeaderTimeout", "ClientBodyTimeout", "SendTimeout", "KeepAliveTimeout", "MaxConnections",
                "MaxHeaderBytes", "MaxHeaders", "MaxUrlBytes", "MaxBodyBytes", "ConnectTimeout", "ReadTimeout",
                "MaxUpstreamConnections"),
    "admin": ("AdminMaxBodyBytes", "AdminMaxJSONDepth", "AdminHeaderTimeout", "AdminBodyTimeout", "AdminIdleTimeout",
              "AdminMaxConnections", "AuditRetentionDays"),
}
SECRET_KEYS = frozenset({"PairSecret", "Token"})
MODES = ("AMS", "AGS")


@cache
def section_fields(section: str) -> dict[str, Any]:
    """Key -> annotated type (int, str, bool or a Literal) of one section."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def required_keys(section: str) -> tuple[str, ...]:
    cls = SECTIONS[section]
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def section_of_key(key: str) -> str | None:
    """The section a bare key belongs to (section key names never overlap)."""
    for section in SECTIONS:
        if key in section_fields(section):
            return section
    return None


def fmt_value(key: str, value: Any) -> str:
    """A value as it would appear in TOML; secrets are never echoed."""
    if key in SECRET_KEYS and isinstance(value, str) and value:
        return '"***"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    return json.dumps(value, default=str)


def describe_type(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    return "a string"


def type_ok(tp: Any, value: Any) -> bool:
    if typing.get_origin(tp) is Literal:
        return isinstance(value, str) and value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _port(lo: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if lo <= v <= 65535:
            return None
        return f"must be a port number {lo}..65535" + (" (0: ICMP echo)" if lo == 0 else "")

    return check


def _positive(unit: str) -> Callable[[Any], str | None]:
    return lambda v: None if v > 0 else f"must be a positive integer ({unit})"


def _not_empty(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def _urls(v: Any) -> str | None:
    for url in (u.strip() for u in v.split(";")):
        if url and not url.startswith(("http://", "https://")):
            return f"{json.dumps(url)} is not an http:// or https:// URL"
    return None


# (section, key) -> extra check on a value of the right type; returns the reason
CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("server", "Name"): _not_empty,
    ("server", "ClientAddress"): _not_empty,
    ("server", "HAAddress"): _not_empty,
    ("server", "DbPath"): _not_empty,
    ("server", "ClientPort"): _port(1),
    ("server", "HAPort"): _port(1),
    ("ha", "BackupHAPort"): _port(0),
    ("ha", "GatewayServerPort"): _port(0),
    ("ha", "PrimaryURL"): _urls,
    ("ha", "BackupURLs"): _urls,
    ("gateway", "Environment"): _not_empty,
    ("gateway", "Workers"): lambda v: None if v >= 0 else "must be 0 (one per core) or a positive integer",
    **{("ha", k): _positive("milliseconds") for k in TIMING_MS_KEYS},
    **{("ha", k): _positive("a count") for k in COUNT_KEYS},
    **{(section, k): _positive("milliseconds" if k.endswith("Timeout") else "a count")
       for section, keys in LIMIT_KEYS.items() for k in keys},
}


def check_value(section: str, key: str, value: Any) -> str | None:
    """Why `value` is not acceptable for `[section] key`, or None when it is."""
    fields = section_fields(section)
    if key not in fields:
        hint = difflib.get_close_matches(key, list(fields), n=1)
        return "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
    tp = fields[key]
    if not type_ok(tp, value):
        return f"must be {describe_type(tp)}"
    extra = CHECKS.get((section, key))
    return extra(value) if extra else None


def _error(name: str, section: str, key: str, value: Any, reason: str) -> ConfigError:
    return ConfigError(f"{name}: [{section}] {key} = {fmt_value(key, value)}: {reason}")


def _section_kwargs(name: str, section: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: {section} = {fmt_value(section, table)}: must be a table [{section}]")
    for key, value in table.items():
        reason = check_value(section, key, value)
        if reason:
            raise _error(name, section, key, value, reason)
    for key in required_keys(section):
        if key not in table:
            raise ConfigError(f"{name}: [{section}] {key} is missing (required)")
    return dict(table)


def parse_profile(
    name: str, folder: Path, data: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> Profile:
    """Validate the raw TOML `data` of profile `name` and build the `Profile`.

    `env` supplies overrides (TANDEM_GATEWAY_TOKEN); pass None for none.
    """
    for section, table in data.items():
        if section not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            if isinstance(table, dict):
                raise ConfigError(f"{name}: unknown section [{section}] (known: {known})")
            raise ConfigError(
                f"{name}: {section} = {fmt_value(section, table)}: unknown key outside a section (known: {known})"
            )
    if "server" not in data:
        raise ConfigError(f"{name}: missing [server] section")
    server = ServerSection(**_section_kwargs(name, "server", data["server"]))
    ha = HASection(**_section_kwargs(name, "ha", data.get("ha", {})))
    gateway: GatewaySection | None = None
    if server.Mode == "AGS":
        gw = _section_kwargs(name, "gateway", data.get("gateway", {}))
        token = (env or {}).get("TANDEM_GATEWAY_TOKEN")
        if token:
            gw["Token"] = token
        gateway = GatewaySection(**gw)
    elif "gateway" in data:
        raise ConfigError(f"{name}: [gateway]: only an AGS profile has a [gateway] section ([server] Mode = \"AMS\")")
    admin: AdminSection | None = None
    if server.Mode == "AMS":
        admin = AdminSection(**_section_kwargs(name, "admin", data.get("admin", {})))
    elif "admin" in data:
        raise ConfigError(f"{name}: [admin]: only an AMS profile has an [admin] section ([server] Mode = \"AGS\")")
    profile = Profile(name=name, folder=folder, server=server, ha=ha, gateway=gateway, admin=admin)
    check_consistency(profile)
    check_timing(name, ha)
    return profile


def check_consistency(profile: Profile) -> None:
    """Rules between keys of one profile (the pair-wide ones live in `edit`)."""
    name, server, ha = profile.name, profile.server, profile.ha
    parts = PurePosixPath(name).parts
    if parts and parts[-1] in MODES and server.Mode != parts[-1]:
        raise _error(name, "server", "Mode", server.Mode, f"the profile folder is an {parts[-1]} profile")
    if server.Mode == "AMS":
        for key in ("PrimaryURL", "BackupURLs"):
            if getattr(ha, key):
                raise _error(name, "ha", key, getattr(ha, key), "only an AGS profile loads its configuration from an AMS")
    if (server.ClientAddress, server.ClientPort) == (server.HAAddress, server.HAPort):
        raise _error(name, "server", "HAPort", server.HAPort, "must differ from ClientPort")
    if ha.Type == "none":
        return
    needs = f'[ha] Type = "{ha.Type}"'
    if len(parts) >= 2 and parts[-2] in ("primary", "secondary") and ha.Role != parts[-2]:
        raise _error(name, "ha", "Role", ha.Role, f"the profile folder is the {parts[-2]} half")
    if not ha.LockFile or not Path(ha.LockFile).is_absolute():
        raise _error(name, "ha", "LockFile", ha.LockFile, f"must be an absolute path when {needs}")
    if not ha.PairSecret:
        raise _error(name, "ha", "PairSecret", ha.PairSecret,
                     f"must be set when {needs} (`tandem profile configure-ha` generates one)")
    if not ha.BackupHAIPAddress:
        raise _error(name, "ha", "BackupHAIPAddress", ha.BackupHAIPAddress, f"must be set when {needs}")
    if ha.BackupHAPort == 0:
        raise _error(name, "ha", "BackupHAPort", ha.BackupHAPort, f"must be a port number 1..65535 when {needs}")
    if (ha.BackupHAIPAddress, ha.BackupHAPort) == (server.HAAddress, server.HAPort):
        raise _error(name, "ha", "BackupHAPort", ha.BackupHAPort,
                     f"points at this server's own HA port ({server.HAAddress}:{server.HAPort}), not at the peer")


def timing_violations(ha: HASection) -> list[str]:
    """Each broken timing rule as a phrase naming the keys and their values."""
    t = ha
    out: list[str] = []
    if not t.LockVerifyInterval + t.LockIOTimeout < t.TakeoverWait:
        out.append(
            f"LockVerifyInterval ({t.LockVerifyInterval}) + LockIOTimeout ({t.LockIOTimeout}) = "
            f"{t.self_fence_deadline} must be < TakeoverWait ({t.TakeoverWait}): "
            "the self-fence deadline must end before the peer takes over"
        )
    if not t.LockIOTimeout < t.LockVerifyInterval:
        out.append(f"LockIOTimeout ({t.LockIOTimeout}) must be < LockVerifyInterval ({t.LockVerifyInterval})")
    if not t.LockRetryInterval <= t.TakeoverWait:
        out.append(f"LockRetryInterval ({t.LockRetryInterval}) must be <= TakeoverWait ({t.TakeoverWait})")
    if not t.HeartbeatMisses >= 2:
        out.append(f"HeartbeatMisses ({t.HeartbeatMisses}) must be >= 2")
    if not t.WatchdogTimeout > 2 * t.LockVerifyInterval:
        out.append(
            f"WatchdogTimeout ({t.WatchdogTimeout}) must be > 2 * LockVerifyInterval ({t.LockVerifyInterval})"
        )
    if not t.ProbeTimeout < t.ProbeInterval:
        out.append(f"ProbeTimeout ({t.ProbeTimeout}) must be < ProbeInterval ({t.ProbeInterval})")
    if not t.HeartbeatInterval * t.HeartbeatMisses >= t.LockRetryInterval:
        out.append(
            f"HeartbeatInterval ({t.HeartbeatInterval}) * HeartbeatMisses ({t.HeartbeatMisses}) = "
            f"{t.peer_dead_after} must be >= LockRetryInterval ({t.LockRetryInterval})"
        )
    return out


def check_timing(name: str, ha: HASection) -> None:
    """Raise `TimingError` naming every broken rule (see the module docstring)."""
    broken = timing_violations(ha)
    if broken:
        raise TimingError(f"{name}: [ha] timing: " + "; ".join(broken))


def profile_warnings(profile: Profile) -> list[str]:
    """Things that are allowed but worth a line in the log at start."""
    out: list[str] = []
    ha = profile.ha
    if ha.Type != "none" and not ha.GatewayServerIPAddress:
        out.append(f"{profile.name}: [ha] GatewayServerIPAddress is empty: the isolation probe is disabled")
    if ha.Type == "shared" and not (
        Path(profile.server.DbPath).is_absolute() or profile.server.DbPath.startswith(("postgresql://", "postgres://"))
    ):
        out.append(
            f"{profile.name}: [server] DbPath = {json.dumps(profile.server.DbPath)} is relative in a shared pair: "
            "each half would open its own store unless -dbPath names the shared one"
        )
    return out
