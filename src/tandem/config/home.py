"""`tandem home init`: the default profiles of SPEC section 2, all on 127.0.0.1.

Every pair runs on one machine out of the box: distinct ports per server,
``<home>/gateway-share/`` standing in for the gateway machine's share (the
LockFiles), and ``<home>/shared-db/{AMS,AGS}`` as the one store of each
shared-mode pair.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.config.validate import parse_profile
from tandem.config.write import write_profile
from tandem.errors import ConfigError

LOCALHOST = "127.0.0.1"
GATEWAY_SHARE = "gateway-share"
SHARED_DB = "shared-db"

# (pair, mode) -> {role: (ClientPort, HAPort)}; a pair's type comes from its name
PAIR_PORTS: dict[tuple[str, str], dict[str, tuple[int, int]]] = {
    ("haprofile1", "AMS"): {"primary": (17100, 17101), "secondary": (17110, 17111)},
    ("haprofile1", "AGS"): {"primary": (17200, 17201), "secondary": (17210, 17211)},
    ("haprofile2", "AGS"): {"primary": (17300, 17301), "secondary": (17310, 17311)},
    ("haprofile_shared", "AMS"): {"primary": (17400, 17401), "secondary": (17410, 17411)},
    ("haprofile_shared", "AGS"): {"primary": (17500, 17501), "secondary": (17510, 17511)},
}
STANDALONE_PORTS: dict[tuple[str, str], tuple[int, int]] = {
    ("server1", "AMS"): (17000, 17001),
    ("server1", "AGS"): (17050, 17051),
}
# every AGS but server1's loads its configuration from the haprofile1 AMS pair
DEFAULT_AMS_URLS = (f"http://{LOCALHOST}:17100", f"http://{LOCALHOST}:17110")
STANDALONE_AMS_URL = f"http://{LOCALHOST}:17000"

PROBE_NOTE = """\
# GatewayServerIPAddress is empty on purpose: in this single-machine home
# nothing stands in for the gateway machine on the network, so the isolation
# probe is disabled (the server logs a warning at start). In a real
# deployment set it, and GatewayServerPort, to the machine holding the LockFile.
"""


@dataclass(frozen=True)
class DefaultProfile:
    name: str
    header: str
    data: dict[str, Any]


def _header(name: str, extra: str = "") -> str:
    return (
        f"# Tandem profile {name}, created by `tandem home init`.\n"
        f"# Keys left out take their defaults; `tandem profile show {name}` lists them all.\n"
        + extra
    )


def _server(name: str, mode: str, ports: tuple[int, int], db_path: str) -> dict[str, Any]:
    return {
        "Mode": mode,
        "Name": name.replace("/", "-"),
        "ClientAddress": LOCALHOST,
        "ClientPort": ports[0],
        "HAAddress": LOCALHOST,
        "HAPort": ports[1],
        "DbPath": db_path,
    }


def _gateway_and_urls(mode: str, primary_url: str, backup_urls: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if mode != "AGS":
        return {}, {}
    return {"Environment": "default", "Workers": 0, "Token": ""}, {
        "PrimaryURL": primary_url,
        "BackupURLs": backup_urls,
    }


def default_profiles(home: Path) -> list[DefaultProfile]:
    """The profiles `home init` writes for a home at (absolute) `home`."""
    out: list[DefaultProfile] = []
    share = home / GATEWAY_SHARE
    for (pair, mode), halves in PAIR_PORTS.items():
        shared = pair == "haprofile_shared"
        secret = secrets.token_hex(24)
        db_path = str(home / SHARED_DB / mode) if shared else "data"
        for role, ports in halves.items():
            peer = "secondary" if role == "primary" else "primary"
            name = f"{pair}/{role}/{mode}"
            gateway, urls = _gateway_and_urls(mode, DEFAULT_AMS_URLS[0], DEFAULT_AMS_URLS[1])
            ha: dict[str, Any] = {
                "Type": "shared" if shared else "replicated",
                "Role": role,
                "BackupServerIp": LOCALHOST,
                "BackupHAIPAddress": LOCALHOST,
                "BackupHAPort": halves[peer][1],
                "LockFile": str(share / f"{pair}-{mode}.lock"),
                "GatewayServerIPAddress": "",
                "PairSecret": secret,
                **urls,
            }
            if not shared:
                ha["ReplicationMode"] = "sync"
            data: dict[str, Any] = {"server": _server(name, mode, ports, db_path), "ha": ha}
            if gateway:
                data["gateway"] = gateway
            out.append(DefaultProfile(name, _header(name, PROBE_NOTE), data))
    for (server, mode), ports in STANDALONE_PORTS.items():
        name = f"{server}/{mode}"
        gateway, urls = _gateway_and_urls(mode, STANDALONE_AMS_URL, "")
        data = {"server": _server(name, mode, ports, "data"), "ha": {"Type": "none", **urls}}
        if gateway:
            data["gateway"] = gateway
        out.append(DefaultProfile(name, _header(name), data))
    return out


def lock_files(home: Path) -> list[Path]:
    return [home / GATEWAY_SHARE / f"{pair}-{mode}.lock" for pair, mode in PAIR_PORTS]


def init_home(home: Path) -> list[str]:
    """Create a home with the default profiles and lock files; return the profile names.

    Refuses (ConfigError) when `home/profiles` already exists. The profiles are
    written into a temporary folder that is renamed to `profiles/` last, so an
    interrupted init leaves no half-made home behind. Existing lock files are
    left as they are (they may hold an epoch record).
    """
    home = home.resolve()
    target = home / "profiles"
    if target.exists():
        raise ConfigError(f"home already initialised at {home} ({target} exists)")
    profiles = default_profiles(home)
    for p in profiles:  # our own defaults must pass our own rules
        parse_profile(p.name, target / p.name, p.data)
    try:
        home.mkdir(parents=True, exist_ok=True)
        (home / GATEWAY_SHARE).mkdir(exist_ok=True)
        (home / SHARED_DB).mkdir(exist_ok=True)  # stands in for the shared store's mount
        for lock in lock_files(home):
            lock.touch(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".profiles.", dir=home))
    except OSError as exc:
        raise ConfigError(f"cannot create a home at {home}: {exc.strerror or exc}") from exc
    try:
        for p in profiles:
            write_profile(staging.joinpath(*p.name.split("/")), p.data, header=p.header)
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot create {target}: {exc.strerror or exc}") from exc
        raise
    return [p.name for p in profiles]
