"""Profile names, listing and loading from a home on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.config import list_profiles, load_profile, resolve_profile_name, write_profile
from tandem.errors import ConfigError, UnknownProfile, UsageError


@pytest.mark.parametrize(
    ("profile", "mode", "expected"),
    [
        ("haprofile1/primary", "AMS", "haprofile1/primary/AMS"),
        ("haprofile1/primary", None, "haprofile1/primary/AGS"),
        ("server1", "AGS", "server1/AGS"),
        ("server1", None, "server1/AGS"),
        ("server1", "ams", "server1/AMS"),
        ("haprofile1/primary/AMS", None, "haprofile1/primary/AMS"),
        ("haprofile1/primary/AMS", "AMS", "haprofile1/primary/AMS"),
        ("haprofile1/secondary/ags", None, "haprofile1/secondary/AGS"),
        ("/haprofile1/primary/", "AMS", "haprofile1/primary/AMS"),
    ],
)
def test_resolve_profile_name(profile: str, mode: str | None, expected: str) -> None:
    assert resolve_profile_name(profile, mode) == expected


@pytest.mark.parametrize(
    ("profile", "mode", "expected"),
    [
        ("haprofile1/primary/AMS", "AGS", "is an AMS profile but -mode AGS was given"),
        ("server1", "ESB", "-mode ESB: must be AMS or AGS"),
        ("", None, "empty profile name"),
        ("../etc", "AMS", "may not contain"),
    ],
)
def test_resolve_profile_name_refuses(profile: str, mode: str | None, expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        resolve_profile_name(profile, mode)


def make(home: Path, name: str, mode: str, **server: object) -> Path:
    folder = home / "profiles" / name
    write_profile(folder, {"server": {"Mode": mode, "Name": "n", "ClientPort": 1, "HAPort": 2, **server}})
    return folder


def test_list_profiles_sorted_and_only_folders_with_a_profile_file(tmp_path: Path) -> None:
    make(tmp_path, "server1/AMS", "AMS")
    make(tmp_path, "a/primary/AGS", "AGS")
    (tmp_path / "profiles" / "server1" / "AMS" / "data").mkdir()
    (tmp_path / "profiles" / "empty" / "AMS").mkdir(parents=True)
    assert list_profiles(tmp_path) == ["a/primary/AGS", "server1/AMS"]


def test_missing_home_suggests_home_init(tmp_path: Path) -> None:
    home = tmp_path / "nohome"
    for call in (lambda: list_profiles(home), lambda: load_profile(home, "server1/AMS")):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(home) in str(info.value) and "tandem home init" in str(info.value)
        assert not isinstance(info.value, UnknownProfile)


def test_unknown_profile_names_the_missing_file(tmp_path: Path) -> None:
    make(tmp_path, "server1/AMS", "AMS")
    with pytest.raises(UnknownProfile) as info:
        load_profile(tmp_path, "x/y")
    assert str(info.value) == f"unknown profile 'x/y' (no {tmp_path / 'profiles/x/y/profile.toml'})"
    with pytest.raises(UnknownProfile):
        load_profile(tmp_path, "../profiles/server1/AMS")


def test_load_profile_sets_name_and_folder(tmp_path: Path) -> None:
    folder = make(tmp_path, "server1/AMS", "AMS", DbPath="store")
    p = load_profile(tmp_path, "server1/AMS")
    assert (p.name, p.folder, p.db_path) == ("server1/AMS", folder, str(folder / "store"))


def test_load_profile_applies_env_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(tmp_path, "server1/AGS", "AGS")
    monkeypatch.setenv("TANDEM_GATEWAY_TOKEN", "env-token")
    gateway = load_profile(tmp_path, "server1/AGS").gateway
    assert gateway is not None and gateway.Token == "env-token"


def test_invalid_toml_names_the_file_on_one_line(tmp_path: Path) -> None:
    folder = make(tmp_path, "server1/AMS", "AMS")
    (folder / "profile.toml").write_text("[server]\nMode = \n")
    with pytest.raises(ConfigError) as info:
        load_profile(tmp_path, "server1/AMS")
    message = str(info.value)
    assert message.startswith("server1/AMS: ") and str(folder / "profile.toml") in message
    assert "not valid TOML" in message and "\n" not in message


def test_validation_error_names_profile(tmp_path: Path) -> None:
    make(tmp_path, "server1/AMS", "AMS", ClientPort=70000)
    with pytest.raises(ConfigError, match=r"^server1/AMS: \[server\] ClientPort = 70000: must be a port"):
        load_profile(tmp_path, "server1/AMS")
