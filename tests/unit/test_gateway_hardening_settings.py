"""The gateway's client-side limits: profile keys (milliseconds) to settings (seconds), and their counters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tandem.ags.metrics import Metrics, merge, render
from tandem.ags.settings import settings_from_profile
from tandem.errors import ConfigError
from tests.support.host import HostStandIn


def test_profile_keys_in_milliseconds_become_seconds(tmp_path: Path) -> None:
    prof = HostStandIn.for_ags(tmp_path, 1).profile
    s = settings_from_profile(prof, env={})
    assert (s.client_header_timeout, s.client_body_timeout, s.send_timeout, s.keepalive_timeout,
            s.max_connections, s.allow_trace) == (30.0, 60.0, 60.0, 75.0, 4096, False)
    gw = dataclasses.replace(prof.gateway, ClientHeaderTimeout=1500, ClientBodyTimeout=2000, SendTimeout=250,
                             KeepAliveTimeout=5000, MaxConnections=10, AllowTrace=True)
    s = settings_from_profile(dataclasses.replace(prof, gateway=gw), env={})
    assert (s.client_header_timeout, s.client_body_timeout, s.send_timeout, s.keepalive_timeout,
            s.max_connections, s.allow_trace) == (1.5, 2.0, 0.25, 5.0, 10, True)
    # the environment wins, in the field's unit (seconds); the old idle-timeout name still works
    s = settings_from_profile(dataclasses.replace(prof, gateway=gw),
                              env={"TANDEM_GATEWAY_SEND_TIMEOUT": "0.5", "TANDEM_GATEWAY_CLIENT_IDLE_TIMEOUT": "9",
                                   "TANDEM_GATEWAY_ALLOW_TRACE": "0"})
    assert (s.send_timeout, s.keepalive_timeout, s.allow_trace) == (0.5, 9.0, False)


def test_request_and_upstream_limits_are_profile_keys(tmp_path: Path) -> None:
    """Every gateway limit has a `[gateway]` key (they were environment-only)."""
    from tandem.ags.settings import GatewaySettings

    prof = HostStandIn.for_ags(tmp_path, 1).profile
    s = settings_from_profile(prof, env={})
    d = GatewaySettings()
    assert (s.max_header_bytes, s.max_headers, s.max_url_bytes, s.max_body_bytes, s.connect_timeout,
            s.read_timeout, s.max_upstream_connections) == (d.max_header_bytes, d.max_headers, d.max_url_bytes,
                                                            d.max_body_bytes, d.connect_timeout, d.read_timeout,
                                                            d.max_upstream_connections)
    gw = dataclasses.replace(prof.gateway, MaxHeaderBytes=4096, MaxHeaders=20, MaxUrlBytes=1024, MaxBodyBytes=1000,
                             ConnectTimeout=1500, ReadTimeout=2500, MaxUpstreamConnections=8)
    s = settings_from_profile(dataclasses.replace(prof, gateway=gw), env={"TANDEM_GATEWAY_MAX_HEADERS": "30"})
    assert (s.max_header_bytes, s.max_headers, s.max_url_bytes, s.max_body_bytes, s.connect_timeout,
            s.read_timeout, s.max_upstream_connections) == (4096, 30, 1024, 1000, 1.5, 2.5, 8)


def test_a_non_positive_limit_names_the_key(tmp_path: Path) -> None:
    prof = HostStandIn.for_ags(tmp_path, 1).profile
    gw = dataclasses.replace(prof.gateway, SendTimeout=0)
    with pytest.raises(ConfigError, match="SendTimeout"):
        settings_from_profile(dataclasses.replace(prof, gateway=gw), env={})


def test_refusals_are_summed_over_processes_and_always_rendered() -> None:
    empty = render(merge([Metrics().snapshot()]), 1, 0, 1).decode()
    assert 'tandem_gateway_refused_total{reason="send_timeout"} 0' in empty
    a, b = Metrics(), Metrics()
    a.refuse("send_timeout")
    b.refuse("send_timeout")
    b.refuse("max_connections")
    a.stats("pets").record(200, 0.001, 0.001)
    text = render(merge([a.snapshot(), b.snapshot()]), 1, 0, 2).decode()
    assert 'tandem_gateway_refused_total{reason="send_timeout"} 2' in text
    assert 'tandem_gateway_refused_total{reason="max_connections"} 1' in text
    assert 'tandem_gateway_requests_total{project="pets",class="2xx"} 1' in text
    assert "#refused" not in text
