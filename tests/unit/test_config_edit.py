"""`init_home`, `set_profile_values` and `configure_ha`, in-process."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from tandem.config import configure_ha, init_home, list_profiles, load_profile, set_profile_values
from tandem.config.home import PAIR_PORTS, STANDALONE_PORTS
from tandem.errors import ConfigError, TimingError, UnknownProfile

ALL = sorted(
    [f"{pair}/{role}/{mode}" for (pair, mode), halves in PAIR_PORTS.items() for role in halves]
    + [f"{s}/{mode}" for s, mode in STANDALONE_PORTS]
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    init_home(h)
    return h


def snapshot(home: Path) -> dict[str, str]:
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def raw(home: Path, name: str) -> dict[str, dict[str, object]]:
    return tomllib.loads((home / "profiles" / name / "profile.toml").read_text())


def test_init_home_layout(home: Path) -> None:
    assert len(ALL) == 12
    assert list_profiles(home) == ALL
    locks = sorted(p.name for p in (home / "gateway-share").iterdir())
    assert locks == sorted(
        ["haprofile1-AMS.lock", "haprofile1-AGS.lock", "haprofile2-AGS.lock",
         "haprofile_shared-AMS.lock", "haprofile_shared-AGS.lock"]
    )
    assert not [p for p in home.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_init_home_profiles_follow_the_spec(home: Path) -> None:
    ports = set()
    for name in ALL:
        p = load_profile(home, name)
        ports |= {p.server.ClientPort, p.server.HAPort}
        assert p.server.Name == name.replace("/", "-")
        assert p.server.ClientAddress == p.server.HAAddress == "127.0.0.1"
        if p.mode == "AGS":
            assert p.gateway is not None and (p.gateway.Environment, p.gateway.Workers) == ("default", 0)
            if name == "server1/AGS":
                assert (p.ha.PrimaryURL, p.ha.BackupURLs) == ("http://127.0.0.1:17000", "")
            else:
                assert (p.ha.PrimaryURL, p.ha.backup_urls) == ("http://127.0.0.1:17100", ["http://127.0.0.1:17110"])
        if name.startswith("server1/"):
            assert p.ha.Type == "none"
            continue
        pair, role, mode = name.split("/")
        peer = load_profile(home, f"{pair}/{'secondary' if role == 'primary' else 'primary'}/{mode}")
        assert p.ha.Type == ("shared" if pair == "haprofile_shared" else "replicated")
        assert p.ha.Role == role
        assert p.ha.BackupHAPort == peer.server.HAPort
        assert p.ha.PairSecret == peer.ha.PairSecret and len(p.ha.PairSecret) == 48
        assert p.ha.LockFile == str(home / "gateway-share" / f"{pair}-{mode}.lock")
        assert Path(p.ha.LockFile).is_file()
        assert p.ha.GatewayServerIPAddress == ""
        if p.ha.Type == "shared":
            assert p.db_path == peer.db_path == str(home / "shared-db" / mode)
        else:
            assert p.server.DbPath == "data" and p.db_path != peer.db_path
    assert len(ports) == 24, "every server has its own two ports"
    assert load_profile(home, "server1/AMS").server.ClientPort == 17000
    assert load_profile(home, "haprofile_shared/secondary/AGS").server.HAPort == 17511
    secrets = {load_profile(home, n).ha.PairSecret for n in ALL if not n.startswith("server1")}
    assert len(secrets) == 5, "one secret per pair"


def test_init_home_refuses_an_existing_home(home: Path) -> None:
    before = snapshot(home)
    with pytest.raises(ConfigError, match="home already initialised at"):
        init_home(home)
    assert snapshot(home) == before


def test_set_profile_values(home: Path) -> None:
    p = set_profile_values(home, "server1/AGS", ["server.ClientPort=18000", "gateway.Workers=2", "AccessLog=no"])
    assert p.server.ClientPort == 18000
    assert raw(home, "server1/AGS")["server"]["ClientPort"] == 18000
    assert load_profile(home, "server1/AGS").gateway == p.gateway
    assert p.gateway is not None and (p.gateway.Workers, p.gateway.AccessLog) == (2, False)
    text = (home / "profiles/server1/AGS/profile.toml").read_text()
    assert text.startswith("# Tandem profile server1/AGS"), "the comment header survives a rewrite"


@pytest.mark.parametrize(
    ("items", "expected", "error"),
    [
        (["server.ClientPort=abc"], '[server] ClientPort = "abc": must be an integer', ConfigError),
        (["server.ClientPort=0"], "[server] ClientPort = 0: must be a port number", ConfigError),
        (["ha.Bogus=1"], '[ha] Bogus = "1": unknown key', ConfigError),
        (["Bogus=1"], 'Bogus = "1": unknown key', ConfigError),
        (["db.Path=1"], "unknown section [db]", ConfigError),
        (["ClientPort"], "expected KEY=VALUE", ConfigError),
        (["gateway.AccessLog=maybe"], '[gateway] AccessLog = "maybe": must be true or false', ConfigError),
        # the first item is fine; the second is refused, so neither is written
        (["server.ClientPort=18000", "ha.TakeoverWait=100"], "TakeoverWait (100)", TimingError),
    ],
)
def test_set_profile_values_refuses_and_changes_nothing(
    home: Path, items: list[str], expected: str, error: type[Exception]
) -> None:
    before = snapshot(home)
    with pytest.raises(error) as info:
        set_profile_values(home, "server1/AGS", items)
    assert expected in str(info.value)
    assert snapshot(home) == before


def test_configure_ha_points_each_half_at_the_other(home: Path) -> None:
    lock = str(home / "AMS.lock")
    primary, secondary = configure_ha(
        home, "haprofile1", "AMS", "replicated",
        [f"LockFile={lock}", "GatewayServerIPAddress=10.0.0.9", "primary.HAPort=18101",
         "secondary.ClientAddress=127.0.0.2", "HeartbeatInterval=120"],
    )
    assert primary.server.HAPort == 18101
    assert secondary.ha.BackupHAPort == 18101 and primary.ha.BackupHAPort == secondary.server.HAPort
    assert primary.ha.BackupServerIp == "127.0.0.2"
    for p in (primary, secondary):
        assert p.ha.LockFile == lock and p.ha.GatewayServerIPAddress == "10.0.0.9"
        assert p.ha.HeartbeatInterval == 120
        assert load_profile(home, p.name) == p
    assert primary.ha.PairSecret == secondary.ha.PairSecret != ""


def test_configure_ha_keeps_a_shared_secret_and_replaces_a_broken_one(home: Path) -> None:
    old = load_profile(home, "haprofile1/primary/AGS").ha.PairSecret
    p, s = configure_ha(home, "haprofile1", "AGS", "replicated")
    assert p.ha.PairSecret == s.ha.PairSecret == old
    set_profile_values(home, "haprofile1/primary/AGS", ["ha.PairSecret=mismatch"])
    p, s = configure_ha(home, "haprofile1", "AGS", "replicated")
    assert p.ha.PairSecret == s.ha.PairSecret not in (old, "mismatch")
    p, s = configure_ha(home, "haprofile1", "AGS", "replicated", ["PairSecret=chosen"])
    assert p.ha.PairSecret == s.ha.PairSecret == "chosen"


def test_configure_ha_turns_a_pair_shared_with_one_store(home: Path) -> None:
    store = str(home / "one-store")
    p, s = configure_ha(home, "haprofile2", "AGS", "shared", [f"DbPath={store}"])
    assert p.ha.Type == s.ha.Type == "shared" and p.db_path == s.db_path == store


@pytest.mark.parametrize(
    ("pair", "component", "items", "expected", "error"),
    [
        ("haprofile1", "AMS", ["Bogus=1"], '[ha] Bogus = "1": unknown key', ConfigError),
        ("haprofile1", "AMS", ["HeartbeatInterval=abc"], 'HeartbeatInterval = "abc": must be an integer', ConfigError),
        ("haprofile1", "AMS", ["HeartbeatInterval=-5"], "HeartbeatInterval = -5: must be a positive", ConfigError),
        ("haprofile1", "AMS", ["LockFile=relative.lock"], 'LockFile = "relative.lock": must be an absolute', ConfigError),
        ("haprofile1", "AMS", ["TakeoverWait=100"], "TakeoverWait (100)", TimingError),
        ("haprofile1", "AMS", ["HAPort=1"], "differs per half: write primary.HAPort=VALUE", ConfigError),
        ("haprofile1", "AMS", ["primary.LockFile=/x"], "LockFile is pair-wide", ConfigError),
        ("haprofile1", "AMS", ["BackupHAPort=1"], "derived from the other half's HAPort", ConfigError),
        ("haprofile1", "AMS", ["Role=primary"], "Role", ConfigError),
        ("haprofile1", "AMS", ["Workers=1"], "not an [ha] key", ConfigError),
        ("haprofile1", "AMS", ["secondary.HAPort=17101"], "secondary.HAPort = 17101 is also primary.HAPort on 127.0.0.1", ConfigError),
        ("haprofile1", "AMS", ["DbPath=/one/store"], "a replicated pair needs a store per half", ConfigError),
        ("haprofile1", "AMS", ["PrimaryURL=http://x:1"], "only an AGS profile", ConfigError),
        ("nopair", "AMS", [], "unknown pair 'nopair' for AMS", UnknownProfile),
        ("haprofile2", "AMS", [], "unknown pair 'haprofile2' for AMS", UnknownProfile),
        ("server1", "AMS", [], "unknown pair 'server1'", UnknownProfile),
    ],
)
def test_configure_ha_refuses_and_changes_nothing(
    home: Path, pair: str, component: str, items: list[str], expected: str, error: type[Exception]
) -> None:
    before = snapshot(home)
    with pytest.raises(error) as info:
        configure_ha(home, pair, component, "replicated", items)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert snapshot(home) == before


def test_configure_ha_needs_both_halves(home: Path) -> None:
    (home / "profiles/haprofile2/secondary/AGS/profile.toml").unlink()
    before = snapshot(home)
    with pytest.raises(UnknownProfile, match="pair 'haprofile2' has no haprofile2/secondary/AGS profile"):
        configure_ha(home, "haprofile2", "AGS", "replicated")
    assert snapshot(home) == before


def test_configure_ha_shared_needs_one_store(home: Path) -> None:
    before = snapshot(home)
    with pytest.raises(ConfigError, match="a shared pair uses one store"):
        configure_ha(home, "haprofile1", "AMS", "shared")
    assert snapshot(home) == before


def test_configure_ha_refuses_a_port_shared_across_halves_and_kinds(tmp_path: Path) -> None:
    from tandem.config import configure_ha, init_home
    from tandem.errors import ConfigError

    home = tmp_path / "h"
    init_home(home)
    before = {f: f.read_bytes() for f in (home / "profiles").rglob("profile.toml")}
    with pytest.raises(ConfigError, match=r"secondary.HAPort = 19000 is also primary.ClientPort"):
        configure_ha(home, "haprofile1", "AMS", "replicated", ["primary.ClientPort=19000", "secondary.HAPort=19000"])
    assert before == {f: f.read_bytes() for f in (home / "profiles").rglob("profile.toml")}
