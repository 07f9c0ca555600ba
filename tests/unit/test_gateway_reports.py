"""Gateway reports (issue 16): the gateway's 10 s delta ring (`tandem.ags.reporter`) and the AMS side
(`tandem.ams.services.reports`): bucket math, merging across gateways, `known`, quantiles."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.ags.metrics import BUCKETS, REFUSED, Metrics, merge
from tandem.ags.reporter import KEEP, Reporter, TrafficRing, bucket_start, delta
from tandem.ags.settings import GatewaySettings
from tandem.ams.schemas import GatewayReport
from tandem.ams.services.reports import LATENCY_BOUNDS, LATENCY_COUNTS, GatewayReports, quantile


def counts(**at: int) -> list[int]:
    """A histogram with `n` requests in the bucket whose upper bound is `b` (b0_001=3: 3 in (.., 0.001])."""
    out = [0] * LATENCY_COUNTS
    for key, n in at.items():
        bound = key[1:].replace("_", ".")
        out[len(LATENCY_BOUNDS) if bound == "inf" else LATENCY_BOUNDS.index(float(bound))] = n
    return out


def test_the_ams_knows_the_gateways_latency_buckets() -> None:
    assert LATENCY_BOUNDS == BUCKETS and LATENCY_COUNTS == len(BUCKETS) + 1


@pytest.mark.parametrize(("q", "hist", "expected"), [
    (0.5, counts(b0_0025=10), 0.001 + 0.0015 * 0.5),       # inside one bucket: half way
    (0.5, counts(b0_0005=4), 0.0005 * 0.5),                 # first bucket: from 0
    (0.99, counts(b0_001=99, b0_5=1), 0.001),               # rank 99 of 100: the top of the first bucket
    (0.995, counts(b0_001=99, b0_5=1), 0.25 + 0.25 * 0.5),  # rank 99.5: half way into (0.25, 0.5]
    (0.9, counts(b0_01=50, binf=50), 30.0),                 # above the last bound: the last bound
    (0.25, counts(b0_005=1, b0_01=1, b0_025=2), 0.005),     # rank 1: the top of the bucket reaching it
])
def test_quantile_interpolates_like_histogram_quantile(q: float, hist: list[int], expected: float) -> None:
    assert quantile(q, hist) == pytest.approx(expected)


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(0.5, [0] * LATENCY_COUNTS) is None


def snapshot(*requests: tuple[str, int, float], errors: tuple[tuple[str, str], ...] = ()) -> Metrics:
    m = Metrics()
    for project, status, seconds in requests:
        m.stats(project).record(status, seconds, seconds / 2)
    for project, code in errors:
        m.stats(project).error(code)
    return m


def test_delta_counts_only_what_is_new_and_skips_quiet_projects() -> None:
    m = snapshot(("pets", 200, 0.003), ("cats", 200, 0.003), ("pets", 503, 0.2))
    m.refuse("header_timeout")
    base = merge([m.snapshot()])
    for project, status, seconds in (("pets", 200, 0.0004), ("pets", 429, 0.0004), ("_no_route", 404, 0.0001)):
        m.stats(project).record(status, seconds, None)
    m.stats("pets").error("rate_limited")
    m.stats("_no_route").error("no_route")
    d = delta(merge([m.snapshot()]), base)
    assert set(d) == {"pets", "_no_route"}  # cats had nothing new; the refused counters are no project
    assert REFUSED not in d
    assert d["pets"]["requests"] == 2 and d["pets"]["classes"] == {"2xx": 1, "4xx": 1}
    assert d["pets"]["errors"] == {"rate_limited": 1}
    assert d["pets"]["latency"] == [2] + [0] * (LATENCY_COUNTS - 1)
    assert d["_no_route"] == {"requests": 1, "classes": {"4xx": 1}, "errors": {"no_route": 1},
                              "latency": [1] + [0] * (LATENCY_COUNTS - 1)}


def test_delta_never_goes_negative_when_counts_were_lost() -> None:
    before = merge([snapshot(("pets", 200, 0.003), ("pets", 200, 0.003)).snapshot()])
    after = merge([snapshot(("pets", 200, 0.003), ("pets", 500, 2.0)).snapshot()])
    d = delta(after, before)
    assert d["pets"]["classes"] == {"5xx": 1} and d["pets"]["requests"] == 1
    assert min(d["pets"]["latency"]) == 0


def test_the_ring_closes_a_bucket_on_each_10_s_boundary_and_keeps_30() -> None:
    m = Metrics()
    ring = TrafficRing()
    ring.observe(merge([m.snapshot()]), 1000.2)
    assert ring.since(0) == [{"start": 1000, "projects": {}}]
    m.stats("pets").record(200, 0.002, 0.001)
    ring.observe(merge([m.snapshot()]), 1005.0)
    assert ring.since(0)[-1]["projects"]["pets"]["requests"] == 1  # the partial bucket, at once
    m.stats("pets").record(200, 0.002, 0.001)
    ring.observe(merge([m.snapshot()]), 1009.9)
    m.stats("pets").record(200, 0.002, 0.001)  # before the first tick after the boundary: still bucket 1000's
    ring.observe(merge([m.snapshot()]), 1010.001)
    out = ring.since(0)
    assert [b["start"] for b in out] == [1000, 1010]
    assert out[0]["projects"]["pets"]["requests"] == 3
    assert out[1]["projects"] == {}
    m.stats("pets").record(200, 0.002, 0.001)
    ring.observe(merge([m.snapshot()]), 1011)
    assert ring.since(1000) == [{"start": 1010, "projects": {"pets": ring.partial["pets"]}}]
    assert ring.partial["pets"]["requests"] == 1
    # at most KEEP complete buckets are kept, oldest dropped first
    for i in range(2, 2 + KEEP + 5):
        m.stats("pets").record(200, 0.002, 0.001)
        ring.observe(merge([m.snapshot()]), 1000 + 10 * i + 0.5)
    assert len(ring.buckets) == KEEP
    starts = [s for s, _ in ring.buckets]
    assert starts == sorted(starts) and starts[-1] == 1000 + 10 * (KEEP + 5)
    assert all(p["pets"]["requests"] == 1 for _, p in ring.buckets)


def test_bucket_start_is_a_multiple_of_10_and_a_quiet_bucket_is_not_sent() -> None:
    assert bucket_start(1009.999) == 1000 and bucket_start(1010.0) == 1010
    m, ring = Metrics(), TrafficRing()
    for t in (1000.5, 1010.5, 1020.5):
        ring.observe(merge([m.snapshot()]), t)
    assert ring.since(0) == [{"start": 1020, "projects": {}}]  # the AMS zero-fills what is not sent


def report(gateway: str, buckets: list[dict[str, Any]], env: str = "default", state: str = "Active") -> dict[str, Any]:
    body = {"environment": env, "gateway": gateway, "pair": "p1", "applied": 3,
            "ha": {"server": gateway, "state": state, "history": [{"at": "2026-12-01T00:00:00+00:00",
                                                                    "from": "Passive", "to": state,
                                                                    "epoch": 2, "reason": "peer dead"}]},
            "traffic": {"interval": 10, "buckets": buckets}}
    return GatewayReport.model_validate(body).model_dump()  # as the route hands it over


def traffic(requests: int, hist: list[int] | None = None, classes: dict[str, int] | None = None,
            errors: dict[str, int] | None = None) -> dict[str, Any]:
    return {"requests": requests, "classes": classes or {"2xx": requests}, "errors": errors or {},
            "latency": hist or counts(b0_001=requests)}


def test_reports_merge_gateways_zero_fill_and_answer_known() -> None:
    now = 10_000.0 + 4  # 4 s into the bucket starting at 10 000
    reports = GatewayReports()
    known = reports.receive(report("gw1", [
        {"start": 9_980, "projects": {"pets": traffic(10)}},
        {"start": 9_990, "projects": {"pets": traffic(20, classes={"2xx": 15, "5xx": 5}, errors={"upstream_timeout": 5})}},
        {"start": 10_000, "projects": {"pets": traffic(8)}},  # the partial one
    ]))
    assert known == 9_990
    assert reports.receive(report("gw2", [{"start": 10_000, "projects": {"pets": traffic(4, counts(b0_5=4)),
                                                                         "cats": traffic(1)}}])) == 0
    out = reports.traffic(1, now=now)
    assert [p["project"] for p in out] == ["pets", "cats"]  # most requests first
    pets = out[0]
    assert [s["start"] for s in pets["series"]] == [9_950, 9_960, 9_970, 9_980, 9_990, 10_000]
    assert [s["requests"] for s in pets["series"]] == [0, 0, 0, 10, 20, 12]
    assert pets["series"][0]["p50_ms"] is None and pets["series"][0]["rps"] == 0
    assert pets["series"][3]["rps"] == 1.0
    assert pets["series"][5]["rps"] == 3.0  # the current bucket: 12 requests over its first 4 s
    assert pets["series"][4]["classes"] == {"2xx": 15, "5xx": 5}
    assert pets["series"][4]["errors"] == {"upstream_timeout": 5}
    # 12 in the current bucket: 8 at <= 1 ms (gw1), 4 at (250, 500] ms (gw2); p50 rank 6 of 12
    assert pets["series"][5]["p50_ms"] == pytest.approx(0.5 + 0.5 * 6 / 8)
    assert pets["series"][5]["p99_ms"] == pytest.approx(250 + 250 * (0.99 * 12 - 8) / 4)
    totals = pets["totals"]
    assert totals["requests"] == 42 and totals["rps"] == pytest.approx(42 / 54, abs=1e-3)
    assert totals["classes"] == {"2xx": 37, "5xx": 5} and totals["errors"] == {"upstream_timeout": 5}
    assert reports.traffic(1, project="cats", now=now)[0]["totals"]["requests"] == 1
    assert reports.traffic(1, environment="other", now=now) == []
    # the next report replaces the partial bucket, never adds to it; complete ones are not resent
    assert reports.receive(report("gw1", [{"start": 10_000, "projects": {"pets": traffic(9)}}])) == 9_990
    assert reports.traffic(1, project="pets", now=now)[0]["totals"]["requests"] == 43


def test_old_buckets_are_pruned_and_the_window_is_5_minutes() -> None:
    reports = GatewayReports()
    buckets = [{"start": s, "projects": {"pets": traffic(1)}} for s in range(9_000, 9_500, 10)]
    known = reports.receive(report("gw1", buckets[-40:]))  # 40 at most per report
    assert known == 9_480
    reports.receive(report("gw1", [{"start": 9_800, "projects": {"pets": traffic(1)}}]))  # 5 min later
    out = reports.traffic(5, now=9_805.0)[0]
    assert len(out["series"]) == 30 and out["series"][0]["start"] == 9_510
    # what is left of the first report is older than 9 500: gone from memory, not only from the view
    assert out["totals"]["requests"] == 1
    assert reports.receive(report("gw1", [{"start": 9_810, "projects": {}}])) == 0


def test_ha_is_fresh_for_10_s_and_report_only_gateways_are_listed() -> None:
    reports = GatewayReports()
    reports.receive(report("gw1", [], state="Passive"))
    ha = reports.ha("default", "gw1")
    assert ha is not None and ha["state"] == "Passive" and ha["history"][0]["from"] == "Passive"
    assert reports.ha("default", "gw2") is None and reports.reported_at("default", "gw2") is None
    listed = reports.gateways()
    assert [(g["name"], g["state"], g["applied"], g["pair"]) for g in listed] == [("gw1", "Passive", 3, "p1")]
    assert reports.ha("default", "gw1", now=reports._gateways[("default", "gw1")].received + 10.5) is None


def test_a_gateways_report_validates_and_a_new_ams_gets_the_whole_window() -> None:
    """The reporter's body is what the AMS schema takes; an AMS that knows nothing answers 0 and the
    next body carries every complete bucket, one that knows the newest only the partial one."""
    m = Metrics()
    status = {"server": "ags-a", "role": "primary", "type": "replicated", "state": "Passive", "epoch": 4,
              "lsn": 17, "serving": False, "since": "2026-12-01T00:00:00+00:00", "reason": "peer is active",
              "isolated": False, "lock": {"held": False, "path": "/x/lock", "holder": "ags-b"},
              "peer": {"state": "Active", "address": "127.0.0.1:1", "lag": 0, "replicated_lsn": 17},
              "history": [], "client_url": "http://127.0.0.1:8080", "pid": 1, "replication": {"x": 1}}
    rep = Reporter(GatewaySettings(name="ags-a", pair="pair1"), ["http://127.0.0.1:1"], lambda: status,
                   lambda: 7, lambda: merge([m.snapshot()]))
    for i in range(5):
        m.stats("pets").record(200, 0.003, 0.002)
        rep.ring.observe(merge([m.snapshot()]), 2_000 + 10 * i + 0.5)
    whole = rep.body(0)
    assert whole["ha"]["state"] == "Passive" and "pid" not in whole["ha"] and "replication" not in whole["ha"]
    assert [b["start"] for b in whole["traffic"]["buckets"]] == [2_000, 2_010, 2_020, 2_030, 2_040]
    parsed = GatewayReport.model_validate(whole).model_dump()
    ams = GatewayReports()
    assert ams.receive(parsed) == 2_030
    assert [b["start"] for b in rep.body(2_030)["traffic"]["buckets"]] == [2_040]
    assert ams.traffic(1, now=2_045.0)[0]["totals"]["requests"] == 4  # the partial one has none yet
