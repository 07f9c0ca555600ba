"""Atomic profile writes: the old file survives every failure."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from tandem.config import write_profile
from tandem.config.write import leading_comments, write_profiles
from tandem.errors import ConfigError

OLD = {"server": {"Mode": "AMS", "Name": "old", "ClientPort": 1, "HAPort": 2}}
NEW = {"server": {"Mode": "AMS", "Name": "new", "ClientPort": 1, "HAPort": 2}}


def only_profile_file(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["profile.toml"], "temp file left behind"


def test_write_round_trips_and_keeps_header(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "p", NEW, header="# hello\n# world")
    text = path.read_text()
    assert text.startswith("# hello\n# world\n[server]\n")
    assert tomllib.loads(text) == NEW
    assert leading_comments(text) == "# hello\n# world\n"
    assert path.stat().st_mode & 0o077 == 0, "profile files hold secrets"


def test_failed_rename_leaves_old_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    before = write_profile(folder, OLD).read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ConfigError, match="No space left on device"):
        write_profile(folder, NEW)
    assert (folder / "profile.toml").read_bytes() == before
    only_profile_file(folder)


def test_failed_fsync_leaves_old_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    before = write_profile(folder, OLD).read_bytes()

    def boom(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(ConfigError):
        write_profile(folder, NEW)
    assert (folder / "profile.toml").read_bytes() == before
    only_profile_file(folder)


def test_unencodable_data_leaves_old_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    before = write_profile(folder, OLD).read_bytes()
    with pytest.raises(TypeError):
        write_profile(folder, {"server": {"Name": object()}})
    assert (folder / "profile.toml").read_bytes() == before
    only_profile_file(folder)


def test_write_profiles_restores_the_first_when_the_second_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    before_a = write_profile(a, OLD).read_bytes()
    before_b = write_profile(b, OLD).read_bytes()
    real_replace = os.replace
    calls: list[str] = []

    def second_fails(src: str, dst: str) -> None:
        calls.append(str(dst))
        if str(dst).startswith(str(b)):
            raise OSError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(ConfigError, match="no profile was changed"):
        write_profiles([(a, NEW, ""), (b, NEW, "")])
    assert calls[0] == str(a / "profile.toml"), "the first file was really written before the failure"
    assert (a / "profile.toml").read_bytes() == before_a
    assert (b / "profile.toml").read_bytes() == before_b
    only_profile_file(a)
    only_profile_file(b)
