"""bench/gateway.py's pure helpers: HAProxy's config, the rotation of N contestants, wrk's output,
the consumers it imports, the table rows, the per-request cost and scaling figures, the goals'
verdicts and the sections it writes."""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.harness import load_bench


@pytest.fixture(scope="module")
def bg() -> ModuleType:
    return load_bench("gateway")


def test_haproxy_config_is_one_thread_keep_alive_no_log(bg: ModuleType) -> None:
    conf = bg.haproxy_config(8080, 9090)
    lines = [ln.strip() for ln in conf.splitlines()]
    assert "nbthread 1" in lines and "mode http" in lines
    assert "option http-keep-alive" in lines and "http-reuse always" in lines
    assert "bind 127.0.0.1:8080 backlog 4096" in lines
    assert any(ln.startswith("server backend 127.0.0.1:9090") for ln in lines)
    assert not any(ln.startswith("log") for ln in lines)
    assert all(int(ln.split()[1]) >= 50 for ln in lines if ln.startswith("maxconn"))
    assert "nbthread 4" in bg.haproxy_config(1, 2, threads=4)


def test_rotation_puts_each_contestant_first_in_turn(bg: ModuleType) -> None:
    assert [bg.rotation(3, i) for i in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    assert [bg.rotation(2, i) for i in range(2)] == [[0, 1], [1, 0]]  # A B, B A as before


WRK = """Running 3s test @ http://127.0.0.1:4000/api7/items/42
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.43ms    1.20ms  30.00ms   90.00%
  Latency Distribution
     50%    2.25ms
     75%    2.80ms
     90%    3.10ms
     99%  850.00us
  54000 requests in 3.00s, 10.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  18000.50
Transfer/sec:      3.33MB
"""


def test_parse_wrk(bg: ModuleType) -> None:
    r = bg.parse_wrk(WRK, cpu_s=1.08)
    assert r["rps"] == 18000.5 and r["non2xx"] == 12.0
    assert r["p50"] == 2.25 and r["p99"] == pytest.approx(0.85)
    assert r["cpu_us"] == pytest.approx(20.0)
    assert math.isnan(bg.parse_wrk(WRK)["cpu_us"])
    with pytest.raises(RuntimeError):
        bg.parse_wrk("unable to connect to 127.0.0.1:4000 Connection refused")


def test_top_child_share(bg: ModuleType) -> None:
    assert bg.top_child_share(1, {1: 0, 2: 10, 3: 10}, {1: 5, 2: 40, 3: 20}) == pytest.approx(0.75)
    assert math.isnan(bg.top_child_share(1, {1: 0, 2: 0}, {1: 1, 2: 9}))  # one worker: no split


def test_consumer_records_hold_the_bench_key_and_are_quick(bg: ModuleType) -> None:
    recs = bg.consumer_records(100_000, "tk_secret")
    assert len(recs) == 100_000 and len({c["name"] for c in recs}) == 100_000
    assert recs[0]["keys"][0]["sha256"] == hashlib.sha256(b"tk_secret").hexdigest()
    assert len({c["keys"][0]["sha256"] for c in recs}) == 100_000
    assert len({c["keys"][0]["id"] for c in recs}) == 100_000


def runs(*rps: float, cpu: float = 10.0, p99: float = 2.0) -> list[dict[str, float]]:
    return [{"rps": x, "cpu_us": cpu, "p50": 1.0, "p99": p99, "non2xx": 0.0} for x in rps]


def test_render_row_three_way_and_two_way(bg: ModuleType) -> None:
    row = bg.Row("default", "default", {"nginx": runs(100.0, 110.0, 90.0), "haproxy": runs(80.0),
                                        "tandem": runs(60.0, p99=3.0)})
    line = bg.render_row(row)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:6] == ["default", "100", "80", "60", "**0.60x**", "**0.75x**"]
    assert cells[7] == "2.00 / 2.00 / 3.00" and cells[8] == "**1.50x**"
    assert cells[10] == "20% / 0% / 0%"
    two = bg.render_row(bg.Row("n", "n", {"nginx": runs(100.0), "tandem": runs(50.0)}))
    cells = [c.strip() for c in two.strip("|").split("|")]
    assert cells[2] == "-" and cells[5] == "-" and cells[7] == "2.00 / - / 2.00"


def results(bg: ModuleType, nginx: float = 100.0, tandem: float = 85.0) -> object:
    r = bg.Results()
    r.rows.append(bg.Row("default", "d", {"nginx": runs(nginx), "haproxy": runs(90.0), "tandem": runs(tandem)}))
    r.rows.append(bg.Row("default-keyauth", "k", {"nginx": runs(100.0), "haproxy": runs(90.0),
                                                  "tandem": runs(65.0, p99=4.0)}, True))
    r.routing = bg.Flat("10 projects", "10,000 projects", {"10 projects": runs(100.0, cpu=40.0),
                                                           "10,000 projects": runs(95.0, cpu=41.0)}, (500.0, 510.0))
    r.consumers = bg.Flat("10 consumers", "100,000 consumers", {"10 consumers": runs(100.0, cpu=40.0),
                                                                "100,000 consumers": runs(90.0, cpu=44.0)})
    r.scaling = bg.Scaling({"1 worker": runs(100.0, cpu=40.0), "2 workers": runs(150.0, cpu=44.0)})
    return r


def test_verdicts(bg: ModuleType) -> None:
    v = {g: (m, x) for g, m, x in bg.verdicts(results(bg))}
    assert v["no policies >= 0.80x nginx"] == ("0.85", "MET")
    assert v["no policies >= 0.90x HAProxy"] == ("0.94", "MET")
    assert v["api-key + rate-limit >= 0.70x nginx"] == ("0.65", "MISSED")
    assert v["p99 <= 1.5x nginx's (no policies)"] == ("1.00", "MET")
    assert v["p99 <= 1.5x nginx's (api-key + rate-limit)"] == ("2.00", "MISSED")
    assert v["CPU/request at 10,000 projects within 5% of 10"] == ("+2.5%", "MET")
    assert v["CPU/request at 100,000 consumers within 5% of 10"] == ("+10.0%", "MISSED")
    m, x = v["2 workers >= 1.7x one (derived from CPU/request)"]
    assert m == "1.82 (raw req/s 1.50x)" and x == "MET"
    empty = bg.verdicts(bg.Results())
    assert len(empty) == 8 and {x for _, _, x in empty} == {"not measured"}


def test_scaling_figures(bg: ModuleType) -> None:
    s = bg.Scaling({"1 worker": runs(20_000.0, cpu=45.0), "2 workers": runs(30_000.0, cpu=45.0)})
    assert s.derived == pytest.approx(2.0) and s.busy_one == pytest.approx(0.9)


def args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"runs": 5, "duration": 10, "warmup": 3, "only": "", **kw})


def test_sections_name_the_default_the_goals_and_the_command(bg: ModuleType) -> None:
    r = results(bg)
    text = bg.render(args(runs=1, duration=3, only="default"), r, 2, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), 1.0)
    assert text.startswith("## Gateway\n")
    assert "`python bench/gateway.py --runs 1 --duration 3 --only default`" in text
    assert "Workers = 1" in text and "access log on" in text and "deployed from an AMS" in text
    assert bg.GOAL_TEXT in text and "| api-key + rate-limit >= 0.70x nginx | 0.65 | **MISSED** |" in text
    assert "| 10,000 projects | 95 |" in text and "| 100,000 consumers | 90 |" in text
    assert "Workers = 2" in text and "Method:" in text
    assert "| d |" in text and "| k |" not in text  # rows with policies go to the next section
    pol = bg.render_policies(args(), r, 2, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert pol.startswith("## Gateway with policies\n") and "| k |" in pol and "`python bench/gateway.py`" in pol


def test_write_section_replaces_only_its_own(bg: ModuleType, tmp_path: Path) -> None:
    f = tmp_path / "b.md"
    f.write_text("# Benchmarks\n\n## Gateway\nold\n\n## Gateway with policies\nold p\n\n## Other\nkept\n")
    bg.write_section(f, "## Gateway\nnew\n")
    bg.write_section(f, "## Gateway with policies\nnew p\n", "Gateway with policies")
    assert f.read_text() == "# Benchmarks\n\n## Gateway\nnew\n\n## Gateway with policies\nnew p\n\n## Other\nkept\n"
    g = tmp_path / "new.md"
    bg.write_section(g, "## Gateway\nx\n")
    assert g.read_text().endswith("## Gateway\nx\n")
