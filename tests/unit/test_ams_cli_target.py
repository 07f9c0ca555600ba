"""`tandem api` target resolution on a real default home: which URLs and which
admin.token a `--profile` designates (a pair gives both halves, for failover)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.client.target import ams_profiles, resolve_target
from tandem.config import init_home
from tandem.errors import ConfigError, UsageError


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("target") / "home"
    init_home(h)
    return h


def test_standalone_profile(home: Path) -> None:
    assert [p.name for p in ams_profiles(home, "server1")] == ["server1/AMS"]
    assert [p.name for p in ams_profiles(home, "server1/AMS")] == ["server1/AMS"]


def test_pair_and_half_of_a_pair(home: Path) -> None:
    assert [p.name for p in ams_profiles(home, "haprofile1")] == ["haprofile1/primary/AMS",
                                                                 "haprofile1/secondary/AMS"]
    assert [p.name for p in ams_profiles(home, "haprofile1/secondary")] == ["haprofile1/secondary/AMS",
                                                                           "haprofile1/primary/AMS"]
    urls, token = resolve_target(home, None, "haprofile1", "tok")
    assert urls == "http://127.0.0.1:17100;http://127.0.0.1:17110" and token == "tok"


def test_token_from_the_pair_token_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_TOKEN", raising=False)
    secondary = home / "profiles" / "haprofile1" / "secondary" / "AMS" / "data"
    secondary.mkdir(parents=True, exist_ok=True)
    (secondary / "admin.token").write_text("from-the-file\n")
    try:
        # the primary's file is missing: the pair's other half has it
        assert resolve_target(home, None, "haprofile1/primary", None)[1] == "from-the-file"
        monkeypatch.setenv("TANDEM_TOKEN", "from-env")
        assert resolve_target(home, None, "haprofile1/primary", None)[1] == "from-env"
        assert resolve_target(home, None, "haprofile1/primary", "flag")[1] == "flag"
    finally:
        (secondary / "admin.token").unlink()


def test_unknown_or_wrong_profiles(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_TOKEN", raising=False)
    with pytest.raises(ConfigError):
        ams_profiles(home, "nope")
    with pytest.raises(UsageError):
        ams_profiles(home, "server1/AGS")
    # an explicit --url does not need a profile, but still needs a token
    assert resolve_target(home, "http://h:1", "nope", "t") == ("http://h:1", "t")
    with pytest.raises(UsageError):
        resolve_target(home, "http://127.0.0.1:9", "nope", None)
