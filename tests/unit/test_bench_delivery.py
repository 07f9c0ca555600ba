"""bench/delivery.py's pure helpers: percentiles, wrk's output, the metrics page, the client log,
delivery latencies, verdicts and the section it writes."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.harness import load_bench


@pytest.fixture(scope="module")
def bd() -> ModuleType:
    return load_bench("delivery")


def test_percentile_is_nearest_rank(bd: ModuleType) -> None:
    xs = [float(x) for x in range(100, 0, -1)]  # 1..100, unsorted
    assert bd.percentile(xs, 50) == 50.0
    assert bd.percentile(xs, 99) == 99.0
    assert bd.percentile(xs, 100) == 100.0
    assert bd.percentile(xs, 0) == 1.0
    assert bd.percentile([7.0], 99) == 7.0
    assert bd.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert math.isnan(bd.percentile([], 50))


WRK = """Running 10s test @ http://127.0.0.1:4000/q/m
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    2.01ms  40.00ms   80.00%
    Req/Sec     9.80k   500.00    10.50k    70.00%
  Latency Distribution
     50%    4.80ms
     75%    6.00ms
     90%    7.50ms
     99%   12.34ms
  98000 requests in 10.01s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 17
Requests/sec:   9790.21
Transfer/sec:      2.00MB
"""


def test_parse_wrk(bd: ModuleType) -> None:
    r = bd.parse_wrk(WRK)
    assert r["requests"] == 98000
    assert r["seconds"] == pytest.approx(10.01)
    assert r["rps"] == pytest.approx(9790.21)
    assert r["p50"] == pytest.approx(4.8)
    assert r["p99"] == pytest.approx(12.34)
    assert r["non2xx"] == 17
    assert r["errors"] == 5
    r = bd.parse_wrk(WRK.replace("12.34ms", "1.20s").replace("4.80ms", "900.00us"))
    assert r["p99"] == pytest.approx(1200.0)
    assert r["p50"] == pytest.approx(0.9)


def test_parse_metric(bd: ModuleType) -> None:
    page = "\n".join([
        "# HELP tandem_delivery_queue_depth messages waiting",
        "# TYPE tandem_delivery_queue_depth gauge",
        'tandem_delivery_queue_depth{project="qq"} 5',
        'tandem_delivery_queue_depth{project="q"} 12',
        'tandem_delivery_delivered_total{target="t1",project="q"} 3.0',
        "tandem_ha_port_connections 2",
    ])
    assert bd.parse_metric(page, "tandem_delivery_queue_depth", "q") == 12.0
    assert bd.parse_metric(page, "tandem_delivery_queue_depth", "qq") == 5.0
    assert bd.parse_metric(page, "tandem_delivery_delivered_total", "q") == 3.0
    assert bd.parse_metric(page, "tandem_delivery_dead_total", "q") is None
    assert bd.parse_metric("", "tandem_delivery_queue_depth", "q") is None


def test_client_log_and_delivery_latencies(bd: ModuleType) -> None:
    log = "202 a 10.000000\n202 b 10.500000\n503 - 10.600000\n202 c 11.000000\nbroken line\n"
    statuses, accepted = bd.parse_client_log(log)
    assert statuses == Counter({202: 3, 503: 1})
    assert accepted == [("a", 10.0), ("b", 10.5), ("c", 11.0)]
    lat, missing = bd.delivery_latencies(accepted, {"a": 10.002, "b": 10.499, "zz": 1.0})
    assert missing == 1
    assert lat == pytest.approx([2.0, -1.0])


def test_verdicts_and_formatting(bd: ModuleType) -> None:
    assert bd.verdict(8000.0, 8000.0) == "met"
    assert bd.verdict(7999.0, 8000.0) == "MISSED"
    assert bd.verdict(25.0, 25.0, higher_is_better=False) == "met"
    assert bd.verdict(25.1, 25.0, higher_is_better=False) == "MISSED"
    assert bd.verdict(float("nan"), 1.0) == "n/a"
    assert bd.fmt_rate(12345.6) == "12,346"
    assert bd.fmt_ms(1.234) == "1.23" and bd.fmt_ms(12.34) == "12.3" and bd.fmt_ms(1234.0) == "1,234"
    assert bd.ratio(1.0, 4.0) == "0.25x" and bd.ratio(1.0, 0.0) == "n/a"
    assert bd.med([3.0, float("nan"), 1.0, 2.0]) == 2.0


def results(bd: ModuleType, burst_p99: float) -> object:
    r = bd.Results(fsync_rate=2000.0, fsync_p50=0.2, fsync_p99=3.0, fsync_end=2100.0)
    r.burst_rate += [9000.0, 8500.0, 9500.0]
    r.burst_p50 += [3.0, 3.5, 2.5]
    r.burst_p99 += [burst_p99] * 3
    r.rabbit_rate += [10000.0, 9000.0, 11000.0]
    r.rabbit_p50 += [4.0] * 3
    r.rabbit_p99 += [20.0] * 3
    r.sus_accepted += [4000.0]
    r.sus_delivered += [3500.0]
    r.sus_p50 += [2.0]
    r.sus_p99 += [9.0]
    r.statuses[202] = 100
    return r


def test_section_states_met_and_missed_targets(bd: ModuleType) -> None:
    good = bd.render_section(results(bd, 20.0), "cmd --x", "2 cpus", "2026-12-04 19:00 UTC", 3.0)
    assert good.startswith("## Queued delivery\n")
    assert "| burst accept, messages/s | 9,000 | 10,000 | 0.90x | >= 8,000 | met |" in good
    assert "| burst accept latency p99, ms | 20.0 | 20.0 | 1.00x | <= 25 | met |" in good
    # sustained: the lower of accepted and delivered counts against the target
    assert "| sustained accept + delivery (the lower of the two), messages/s | 3,500 |" in good
    assert "Every target met: burst accept above the disk's fsync rate; burst accept >= 8,000 messages/s; " \
        "burst accept p99 <= 25 ms; sustained accept + delivery >= 3,000 messages/s." in good
    assert "MISSED" not in good
    assert "Command: `cmd --x`" in good
    # the floor: the higher of the two fsync rates (2,000/s at the start, 2,100/s at the end)
    assert "one fsync per message): burst / fsync 4.29x | met |" in good
    bad = bd.render_section(results(bd, 30.0), "cmd", "2 cpus", "2026-12-04 19:00 UTC", 3.0)
    assert "| <= 25 | MISSED |" in bad
    assert "Targets MISSED: burst accept p99 <= 25 ms. Met: burst accept above" in bad
    slow = results(bd, 20.0)
    slow.fsync_end = 10_000.0  # the disk did more fsyncs per second than the burst accepted messages
    assert "one fsync per message): burst / fsync 0.90x | MISSED |" in bd.render_section(slow, "c", "m", "d", 1.0)


def test_section_replaces_only_its_own(bd: ModuleType, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from failover import write_section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Gateway\n\ngw\n\n## Faults\n\nf\n")
    section = bd.render_section(results(bd, 20.0), "c", "m", "d", 1.0)
    write_section(doc, bd.SECTION, section)
    write_section(doc, bd.SECTION, section)  # a second run replaces, never appends again
    text = doc.read_text()
    assert text.count("## Queued delivery") == 1
    assert "## Gateway\n\ngw" in text and "## Faults\n\nf" in text
