"""Profile validation: every kind of bad input names the profile, the key and the value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tandem.config import GatewaySection, HASection, parse_profile, profile_warnings
from tandem.config.validate import fmt_value
from tandem.errors import ConfigError, TimingError

NAME = "haprofile1/primary/AMS"
FOLDER = Path("/h/profiles/haprofile1/primary/AMS")


def ams_pair() -> dict[str, Any]:
    return {
        "server": {"Mode": "AMS", "Name": "p", "ClientPort": 17100, "HAPort": 17101},
        "ha": {
            "Type": "replicated",
            "Role": "primary",
            "BackupServerIp": "127.0.0.1",
            "BackupHAIPAddress": "127.0.0.1",
            "BackupHAPort": 17111,
            "LockFile": "/share/AMS.lock",
            "PairSecret": "s3cret-value-not-to-echo",
        },
    }


def ags_standalone() -> dict[str, Any]:
    return {
        "server": {"Mode": "AGS", "Name": "g", "ClientPort": 17050, "HAPort": 17051},
        "ha": {"Type": "none", "PrimaryURL": "http://127.0.0.1:17000"},
        "gateway": {"Workers": 1},
    }


def with_value(data: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.setdefault(section, {})[key] = value
    return out


def error_of(data: dict[str, Any], name: str = NAME) -> str:
    with pytest.raises(ConfigError) as info:
        parse_profile(name, FOLDER, data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_file_takes_model_defaults() -> None:
    p = parse_profile(NAME, FOLDER, ams_pair())
    assert p.ha.HeartbeatInterval == HASection().HeartbeatInterval
    assert p.ha.ReplicationMode == "sync"
    assert p.server.DbPath == "data"
    assert p.db_path == str(FOLDER / "data")
    assert p.gateway is None


def test_ags_gets_a_gateway_section_with_defaults_even_when_absent() -> None:
    data = ags_standalone()
    del data["gateway"]
    p = parse_profile("server1/AGS", FOLDER, data)
    assert p.gateway == GatewaySection()


def test_env_token_overrides_the_file_for_ags_only() -> None:
    data = with_value(ags_standalone(), "gateway", "Token", "from-file")
    assert parse_profile("server1/AGS", FOLDER, data, env={}).gateway == GatewaySection(Workers=1, Token="from-file")
    p = parse_profile("server1/AGS", FOLDER, data, env={"TANDEM_GATEWAY_TOKEN": "from-env"})
    assert p.gateway is not None and p.gateway.Token == "from-env"
    ams = parse_profile(NAME, FOLDER, ams_pair(), env={"TANDEM_GATEWAY_TOKEN": "from-env"})
    assert ams.gateway is None


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("ha", "HeartbeatInterval", -5, "[ha] HeartbeatInterval = -5: must be a positive integer (milliseconds)"),
        ("ha", "TakeoverWait", 0, "[ha] TakeoverWait = 0: must be a positive integer (milliseconds)"),
        ("ha", "HeartbeatMisses", 0, "[ha] HeartbeatMisses = 0: must be a positive integer (a count)"),
        ("ha", "HeartbeatInterval", "100", '[ha] HeartbeatInterval = "100": must be an integer'),
        ("ha", "HeartbeatInterval", True, "[ha] HeartbeatInterval = true: must be an integer"),
        ("ha", "Type", "active", '[ha] Type = "active": must be one of replicated, shared, none'),
        ("ha", "Role", "tertiary", '[ha] Role = "tertiary": must be one of primary, secondary'),
        ("ha", "ReplicationMode", "eventual", '[ha] ReplicationMode = "eventual": must be one of sync, async'),
        ("ha", "BackupHAPort", 70000, "[ha] BackupHAPort = 70000: must be a port number 0..65535"),
        ("ha", "GatewayServerPort", -1, "[ha] GatewayServerPort = -1: must be a port number 0..65535"),
        ("ha", "LockFile", "relative/AMS.lock", '[ha] LockFile = "relative/AMS.lock": must be an absolute path'),
        ("ha", "LockFile", "", '[ha] LockFile = "": must be an absolute path when [ha] Type = "replicated"'),
        ("ha", "PairSecret", "", '[ha] PairSecret = "": must be set when [ha] Type = "replicated"'),
        ("ha", "BackupHAIPAddress", "", '[ha] BackupHAIPAddress = "": must be set'),
        ("ha", "BackupHAPort", 0, "[ha] BackupHAPort = 0: must be a port number 1..65535 when"),
        ("ha", "BackupHAPort", 17101, "[ha] BackupHAPort = 17101: points at this server's own HA port"),
        ("ha", "Role", "secondary", '[ha] Role = "secondary": the profile folder is the primary half'),
        ("ha", "PrimaryURL", "http://x:1", '[ha] PrimaryURL = "http://x:1": only an AGS profile'),
        ("ha", "Heartbeat", 100, "[ha] Heartbeat = 100: unknown key (did you mean HeartbeatMisses?)"),
        ("ha", "lockfile", "/x", '[ha] lockfile = "/x": unknown key (did you mean LockFile?)'),
        ("server", "ClientPort", 0, "[server] ClientPort = 0: must be a port number 1..65535"),
        ("server", "HAPort", 65536, "[server] HAPort = 65536: must be a port number 1..65535"),
        ("server", "HAPort", 17100, "[server] HAPort = 17100: must differ from ClientPort"),
        ("server", "Mode", "AGS", '[server] Mode = "AGS": the profile folder is an AMS profile'),
        ("server", "Mode", "ESB", '[server] Mode = "ESB": must be one of AMS, AGS'),
        ("server", "Name", " ", '[server] Name = " ": must not be empty'),
        ("server", "DbPath", "", '[server] DbPath = "": must not be empty'),
        ("server", "ClientAddress", 127, "[server] ClientAddress = 127: must be a string"),
    ],
)
def test_bad_value_names_profile_key_and_value(section: str, key: str, value: Any, expected: str) -> None:
    message = error_of(with_value(ams_pair(), section, key, value))
    assert message.startswith(f"{NAME}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("gateway", "Workers", -1, "[gateway] Workers = -1: must be 0 (one per core) or a positive integer"),
        ("gateway", "Environment", "", '[gateway] Environment = "": must not be empty'),
        ("gateway", "AccessLog", "yes", '[gateway] AccessLog = "yes": must be true or false'),
        ("gateway", "Threads", 4, "[gateway] Threads = 4: unknown key"),
        ("ha", "BackupURLs", "http://a:1;ftp://b", '[ha] BackupURLs = "http://a:1;ftp://b": "ftp://b" is not an http'),
        ("ha", "PrimaryURL", "127.0.0.1:17000", '[ha] PrimaryURL = "127.0.0.1:17000": "127.0.0.1:17000" is not'),
    ],
)
def test_bad_ags_value(section: str, key: str, value: Any, expected: str) -> None:
    message = error_of(with_value(ags_standalone(), section, key, value), "server1/AGS")
    assert message.startswith("server1/AGS: ")
    assert expected in message


def test_secrets_are_never_echoed() -> None:
    assert fmt_value("PairSecret", "s3cret") == '"***"'
    assert fmt_value("Token", "tok") == '"***"'
    assert fmt_value("PairSecret", "") == '""'
    assert fmt_value("LockFile", "/x") == '"/x"'
    data = with_value(ams_pair(), "ha", "Type", "bogus")
    assert "s3cret" not in error_of(data)


def test_unknown_section_and_top_level_key() -> None:
    data = ams_pair()
    data["database"] = {"Path": "x"}
    assert "unknown section [database]" in error_of(data)
    data = ams_pair()
    data["Mode"] = "AMS"
    assert 'Mode = "AMS": unknown key outside a section' in error_of(data)


def test_section_must_be_a_table() -> None:
    data = ams_pair()
    data["ha"] = 5
    assert "ha = 5: must be a table [ha]" in error_of(data)


def test_missing_server_section_and_required_keys() -> None:
    assert "missing [server] section" in error_of({"ha": {"Type": "none"}})
    data = ams_pair()
    del data["server"]["Name"]
    assert "[server] Name is missing (required)" in error_of(data)


def test_gateway_section_refused_on_ams() -> None:
    data = with_value(ams_pair(), "gateway", "Workers", 1)
    assert "only an AGS profile has a [gateway] section" in error_of(data)


def test_standalone_needs_no_lock_file_or_secret() -> None:
    data = {"server": {"Mode": "AMS", "Name": "s", "ClientPort": 1, "HAPort": 2}}
    p = parse_profile("server1/AMS", FOLDER, data)
    assert p.ha.Type == "none" and p.ha.LockFile == ""


def test_timing_errors_are_timing_errors_naming_keys_and_values() -> None:
    with pytest.raises(TimingError) as info:
        parse_profile(NAME, FOLDER, with_value(ams_pair(), "ha", "TakeoverWait", 150))
    assert str(info.value).startswith(f"{NAME}: [ha] timing: ")
    d = HASection()
    fence = d.LockVerifyInterval + d.LockIOTimeout
    assert (f"LockVerifyInterval ({d.LockVerifyInterval}) + LockIOTimeout ({d.LockIOTimeout}) = {fence} "
            "must be < TakeoverWait (150)") in str(info.value)


def test_warnings() -> None:
    p = parse_profile(NAME, FOLDER, ams_pair())
    assert any("GatewayServerIPAddress is empty" in w for w in profile_warnings(p))
    shared = with_value(ams_pair(), "ha", "Type", "shared")
    assert any("DbPath" in w for w in profile_warnings(parse_profile(NAME, FOLDER, shared)))
    quiet = with_value(ams_pair(), "ha", "GatewayServerIPAddress", "10.0.0.9")
    assert profile_warnings(parse_profile(NAME, FOLDER, quiet)) == []
