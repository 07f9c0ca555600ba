"""Write profile files so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from tandem.config.model import Profile
from tandem.errors import ConfigError

PROFILE_FILE = "profile.toml"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, payload: bytes, mode: int | None = None) -> None:
    """Temp file in the same folder (with `mode` if given), fsync, rename over `path`,
    fsync the folder."""
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def render_profile(data: Mapping[str, Any], header: str = "") -> bytes:
    """TOML text of `data`, after `header` (comment lines, kept as given)."""
    body = tomli_w.dumps(dict(data))
    if header and not header.endswith("\n"):
        header += "\n"
    return (header + body).encode("utf-8")


def write_profile(profile_folder: Path, data: Mapping[str, Any], *, header: str = "") -> Path:
    """Atomically (re)write ``profile_folder/profile.toml`` with `data`.

    The TOML is rendered before anything touches the disk, so a value tomli_w
    cannot encode leaves the old file as it was. `header` is prepended verbatim
    (comment lines). The folder is created if needed. Returns the file's path.
    """
    payload = render_profile(data, header)
    try:
        profile_folder.mkdir(parents=True, exist_ok=True)
        path = profile_folder / PROFILE_FILE
        write_bytes_atomic(path, payload)
    except OSError as exc:
        raise ConfigError(f"cannot write {profile_folder / PROFILE_FILE}: {exc.strerror or exc}") from exc
    return path


def write_profiles(items: Sequence[tuple[Path, Mapping[str, Any], str]]) -> None:
    """Write several profiles (folder, data, header) as one change, as far as a
    file system allows: everything is rendered first, and if a later write
    fails the files already written get their old bytes back."""
    rendered = [(folder / PROFILE_FILE, render_profile(data, header)) for folder, data, header in items]
    before = {path: path.read_bytes() if path.exists() else None for path, _ in rendered}
    done: list[Path] = []
    try:
        for path, payload in rendered:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, payload)
            done.append(path)
    except OSError as exc:
        for path in done:
            old = before[path]
            with contextlib.suppress(OSError):
                if old is None:
                    path.unlink()
                else:
                    write_bytes_atomic(path, old)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc} (no profile was changed)") from exc


def leading_comments(text: str) -> str:
    """The comment block at the top of a profile file, kept across rewrites."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.strip() == "" or line.lstrip().startswith("#"):
            lines.append(line)
        else:
            break
    return "".join(lines)


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The merged profile (defaults included) as plain data, for `profile show`."""
    out: dict[str, Any] = {
        "name": profile.name,
        "folder": str(profile.folder),
        "server": dataclasses.asdict(profile.server),
        "ha": dataclasses.asdict(profile.ha),
    }
    if profile.gateway is not None:
        out["gateway"] = dataclasses.asdict(profile.gateway)
    if profile.admin is not None:
        out["admin"] = dataclasses.asdict(profile.admin)
    return out
