"""`tandem home init` and `tandem profile ...` through the real CLI in a subprocess."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

PAIRS = {
    ("haprofile1", "AMS"), ("haprofile1", "AGS"), ("haprofile2", "AGS"),
    ("haprofile_shared", "AMS"), ("haprofile_shared", "AGS"),
}
PROFILES = sorted(
    [f"{pair}/{role}/{mode}" for pair, mode in PAIRS for role in ("primary", "secondary")]
    + ["server1/AMS", "server1/AGS"]
)


def tandem(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def ok(home: Path, *args: str) -> str:
    result = tandem(home, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def snapshot(home: Path) -> dict[str, str]:
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((home / "profiles").rglob("*"))
        if p.is_file()
    }


def raw(home: Path, name: str) -> dict[str, Any]:
    return tomllib.loads((home / "profiles" / name / "profile.toml").read_text())


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cli") / "home"
    ok(home, "home", "init")
    return home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    # the DIR argument of `home init` wins over --home
    result = tandem(tmp_path / "elsewhere", "home", "init", str(h))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "elsewhere").exists()
    return h


def test_home_init_creates_every_profile_and_lock_file(fresh_home: Path) -> None:
    found = sorted(
        str(p.parent.relative_to(fresh_home / "profiles")) for p in (fresh_home / "profiles").rglob("profile.toml")
    )
    assert found == PROFILES
    locks = sorted(p.name for p in (fresh_home / "gateway-share").iterdir())
    assert locks == sorted(f"{pair}-{mode}.lock" for pair, mode in PAIRS)
    assert all((fresh_home / "gateway-share" / name).stat().st_size == 0 for name in locks)
    assert raw(fresh_home, "haprofile1/secondary/AGS")["server"]["ClientPort"] == 17210
    assert "GatewayServerIPAddress is empty on purpose" in (
        fresh_home / "profiles/haprofile1/primary/AMS/profile.toml"
    ).read_text()


def test_home_init_refuses_an_existing_home(fresh_home: Path) -> None:
    before = snapshot(fresh_home)
    result = tandem(fresh_home, "home", "init")
    assert result.returncode == 2
    assert result.stderr.strip() == f"tandem: home already initialised at {fresh_home} ({fresh_home}/profiles exists)"
    assert snapshot(fresh_home) == before


def test_profile_list_shows_every_profile(fresh_home: Path) -> None:
    lines = ok(fresh_home, "profile", "list").splitlines()
    assert lines[0].split() == ["PROFILE", "MODE", "TYPE", "ROLE", "CLIENT", "HA"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == PROFILES
    assert rows["haprofile1/primary/AMS"][1:] == ["AMS", "replicated", "primary", "127.0.0.1:17100", "127.0.0.1:17101"]
    assert rows["haprofile_shared/secondary/AGS"][1:4] == ["AGS", "shared", "secondary"]
    assert rows["server1/AGS"][1:] == ["AGS", "none", "-", "127.0.0.1:17050", "127.0.0.1:17051"]


def test_profile_show_json_includes_defaults(fresh_home: Path) -> None:
    shown = json.loads(ok(fresh_home, "profile", "show", "haprofile1/primary", "--mode", "AMS", "--json"))
    assert shown["name"] == "haprofile1/primary/AMS"
    assert "HeartbeatInterval" not in raw(fresh_home, "haprofile1/primary/AMS")["ha"]
    from tandem.config import HASection

    assert shown["ha"]["HeartbeatInterval"] == HASection().HeartbeatInterval
    assert shown["ha"]["TakeoverWait"] == HASection().TakeoverWait
    assert shown["ha"]["BackupHAPort"] == 17111
    assert shown["ha"]["PairSecret"] == "***"
    assert "gateway" not in shown
    ags = json.loads(ok(fresh_home, "profile", "show", "server1/AGS", "--json", "--show-secrets"))
    from tandem.config import AdminSection, GatewaySection

    assert ags["gateway"] == dataclasses.asdict(GatewaySection())
    assert "admin" not in ags
    assert shown["admin"] == dataclasses.asdict(AdminSection())
    assert ags["ha"]["PrimaryURL"] == "http://127.0.0.1:17000"


def test_profile_show_text(fresh_home: Path) -> None:
    text = ok(fresh_home, "profile", "show", "server1/AMS")
    assert text.startswith("# server1/AMS (")
    body = tomllib.loads(text)
    from tandem.config import HASection

    assert body["server"]["ClientPort"] == 17000
    assert body["ha"]["WatchdogTimeout"] == HASection().WatchdogTimeout


def test_configure_ha_updates_both_halves(home: Path) -> None:
    lock = str(home / "AMS.lock")
    out = ok(home, "profile", "configure-ha", "haprofile1", "--component", "AMS", "--type", "replicated",
             "--set", f"LockFile={lock}", "HeartbeatInterval=120", "--set", "primary.HAPort=18101")
    assert out.count("updated ") == 2
    p, s = raw(home, "haprofile1/primary/AMS"), raw(home, "haprofile1/secondary/AMS")
    assert p["server"]["HAPort"] == 18101
    assert p["ha"]["BackupHAPort"] == s["server"]["HAPort"] == 17111
    assert s["ha"]["BackupHAPort"] == p["server"]["HAPort"]
    assert p["ha"]["PairSecret"] == s["ha"]["PairSecret"] and len(p["ha"]["PairSecret"]) >= 32
    assert p["ha"]["LockFile"] == s["ha"]["LockFile"] == lock
    assert p["ha"]["HeartbeatInterval"] == s["ha"]["HeartbeatInterval"] == 120
    assert (p["ha"]["Type"], p["ha"]["Role"], s["ha"]["Role"]) == ("replicated", "primary", "secondary")
    # the AGS halves of the same pair are not touched
    assert raw(home, "haprofile1/primary/AGS")["ha"]["BackupHAPort"] == 17211


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["haprofile1", "--component", "AMS", "--type", "replicated", "--set", "Bogus=1"], ["Bogus"]),
        (["haprofile1", "--component", "AMS", "--type", "replicated", "--set", "HeartbeatInterval=abc"],
         ["HeartbeatInterval", "abc"]),
        (["haprofile1", "--component", "AMS", "--type", "replicated", "--set", "LockFile=/ok.lock",
          "TakeoverWait=100"], ["TakeoverWait (100)"]),
        (["haprofile1", "--component", "AMS", "--type", "replicated", "--set", "LockFile=no/abs"],
         ["LockFile", "no/abs"]),
        (["nopair", "--component", "AMS", "--type", "replicated"], ["nopair"]),
        (["haprofile2", "--component", "AMS", "--type", "replicated"], ["haprofile2"]),
        (["haprofile1", "--component", "XMS", "--type", "replicated"], ["XMS"]),
        (["haprofile1", "--component", "AMS", "--type", "mirrored"], ["mirrored"]),
    ],
)
def test_configure_ha_refuses_with_one_line_and_changes_nothing(
    fresh_home: Path, args: list[str], named: list[str]
) -> None:
    before = snapshot(fresh_home)
    result = tandem(fresh_home, "profile", "configure-ha", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in named), result.stderr
    assert snapshot(fresh_home) == before


def test_profile_set_moves_ports_and_validates(home: Path) -> None:
    ok(home, "profile", "set", "server1/AMS", "server.ClientPort=18000", "ha.GatewayServerPort=22")
    assert raw(home, "server1/AMS")["server"]["ClientPort"] == 18000
    shown = json.loads(ok(home, "profile", "show", "server1", "--mode", "AMS", "--json"))
    assert shown["server"]["ClientPort"] == 18000 and shown["ha"]["GatewayServerPort"] == 22

    before = snapshot(home)
    for bad, named in [
        (["server1/AMS", "server.ClientPort=99999"], "ClientPort = 99999"),
        (["server1/AMS", "server.ClientPort=18001", "ha.HeartbeatInterval=abc"], "HeartbeatInterval"),
        (["server1/AMS", "gateway.Workers=1"], "[gateway]"),
        (["server1/AGS", "ha.Nope=1"], "Nope"),
        (["nope/AMS", "server.ClientPort=1"], "unknown profile 'nope/AMS'"),
    ]:
        result = tandem(home, "profile", "set", *bad)
        assert result.returncode == 2, bad
        assert len(result.stderr.splitlines()) == 1 and named in result.stderr, result.stderr
    assert snapshot(home) == before


def test_missing_home_is_one_line_suggesting_init(tmp_path: Path) -> None:
    result = tandem(tmp_path / "none", "profile", "list")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "tandem home init" in result.stderr
