"""Gateway settings from the profile and TANDEM_GATEWAY_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.ags.settings import GatewaySettings, settings_from_profile
from tandem.errors import ConfigError
from tests.support.host import HostStandIn


def test_defaults_and_overrides(tmp_path: Path) -> None:
    prof = HostStandIn.for_ags(tmp_path, 1234, workers=0, token="from-profile").profile
    s = settings_from_profile(prof, env={})
    assert s.workers >= 1 and s.port == 1234 and s.token == "from-profile"
    assert s.access_log.endswith("run/access.log")
    assert s.name == "test-AGS" and s.pair == "test"
    s = settings_from_profile(prof, env={"TANDEM_GATEWAY_TOKEN": "env", "TANDEM_GATEWAY_READ_TIMEOUT": "1.5",
                                         "TANDEM_GATEWAY_MAX_BODY_BYTES": "1000", "TANDEM_GATEWAY_WORKERS": "1"})
    assert (s.token, s.read_timeout, s.max_body_bytes, s.workers, s.in_process) == ("env", 1.5, 1000, 1, False)
    s = settings_from_profile(prof, env={"TANDEM_GATEWAY_WORKERS": "1", "TANDEM_GATEWAY_INPROCESS": "1"})
    assert (s.workers, s.in_process) == (1, True)
    assert GatewaySettings.from_json(s.to_json()) == s


def test_access_log_off(tmp_path: Path) -> None:
    prof = HostStandIn.for_ags(tmp_path, 1, access_log=False).profile
    assert settings_from_profile(prof, env={}).access_log == ""


def test_bad_override_names_the_variable(tmp_path: Path) -> None:
    prof = HostStandIn.for_ags(tmp_path, 1).profile
    with pytest.raises(ConfigError, match="TANDEM_GATEWAY_READ_TIMEOUT"):
        settings_from_profile(prof, env={"TANDEM_GATEWAY_READ_TIMEOUT": "soon"})
