"""Find and load profiles in a Tandem home.

A profile is a folder under ``<home>/profiles/`` holding ``profile.toml``; its
name is the folder's path relative to ``profiles/`` (``haprofile1/primary/AMS``,
``server1/AGS``). The last component is always the mode.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from tandem.config.model import Profile
from tandem.config.validate import MODES, parse_profile
from tandem.errors import ConfigError, UnknownProfile, UsageError

PROFILE_FILE = "profile.toml"
DEFAULT_MODE = "AGS"


def profiles_dir(home: Path) -> Path:
    """`home/profiles`, or ConfigError when the home has not been created."""
    folder = home / "profiles"
    if not folder.is_dir():
        raise ConfigError(
            f"no Tandem home at {home} (no {folder} folder): create one with `tandem home init {home}`"
        )
    return folder


def _split(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.strip().strip("/").split("/") if p)


def resolve_profile_name(profile_arg: str, mode: str | None) -> str:
    """The full profile name from the server CLI's ``-profile`` and ``-mode``.

    ``("haprofile1/primary", "AMS")`` -> ``"haprofile1/primary/AMS"``;
    ``("server1", None)`` -> ``"server1/AGS"`` (AGS is the default mode);
    a name already ending in /AMS or /AGS is kept, and `mode`, if given, must match.
    """
    wanted = mode.strip().upper() if mode else None
    if wanted is not None and wanted not in MODES:
        raise UsageError(f"-mode {mode}: must be AMS or AGS")
    parts = _split(profile_arg)
    if not parts:
        raise UsageError(f"-profile {profile_arg!r}: empty profile name")
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"-profile {profile_arg}: a profile name may not contain '.' or '..'")
    last = parts[-1].upper()
    if last in MODES:
        if wanted is not None and wanted != last:
            raise UsageError(f"-profile {profile_arg} is an {last} profile but -mode {wanted} was given")
        return "/".join((*parts[:-1], last))
    return "/".join((*parts, wanted or DEFAULT_MODE))


def profile_folder(home: Path, name: str) -> Path:
    """The folder of an existing profile; UnknownProfile when there is none."""
    parts = _split(name)
    base = profiles_dir(home)
    if not parts or any(p in (".", "..") for p in parts):
        raise UnknownProfile(f"unknown profile {name!r} (not a profile name)")
    folder = base.joinpath(*parts)
    if not (folder / PROFILE_FILE).is_file():
        raise UnknownProfile(f"unknown profile '{'/'.join(parts)}' (no {folder / PROFILE_FILE})")
    return folder


def list_profiles(home: Path) -> list[str]:
    """Every profile name under `home/profiles`, sorted."""
    base = profiles_dir(home)
    names = []
    for path in base.rglob(PROFILE_FILE):
        if path.is_file():
            names.append(PurePosixPath(*path.parent.relative_to(base).parts).as_posix())
    return sorted(n for n in names if n != ".")


def read_profile_data(name: str, path: Path) -> dict[str, Any]:
    """The raw TOML of one profile file, ConfigError when it does not parse."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{name}: {path}: not valid TOML: {reason}") from exc
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from exc


def load_profile(home: Path, name: str) -> Profile:
    """Load and validate profile `name` ("haprofile1/primary/AMS") of `home`.

    Raises ConfigError (missing home, bad key or value), UnknownProfile or
    TimingError; environment overrides (TANDEM_GATEWAY_TOKEN) are applied.
    """
    folder = profile_folder(home, name)
    canonical = "/".join(_split(name))
    data = read_profile_data(canonical, folder / PROFILE_FILE)
    return parse_profile(canonical, folder, data, env=os.environ)
