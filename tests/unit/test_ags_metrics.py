"""Per-project metrics: counting, merging snapshots of several processes, Prometheus text."""

from __future__ import annotations

from tandem.ags.metrics import Metrics, merge, render


def test_record_merge_render() -> None:
    a, b = Metrics(), Metrics()
    a.stats("pets").record(200, 0.002, 0.0015)
    a.stats("pets").record(502, 0.0001, None)
    b.stats("pets").record(204, 0.3, 0.29)
    b.stats('we"ird').record(404, 0.0001, None)
    text = render(merge([a.snapshot(), b.snapshot()]), revision=7, rejected=2, workers=2).decode()
    assert 'tandem_gateway_requests_total{project="pets",class="2xx"} 2' in text
    assert 'tandem_gateway_requests_total{project="pets",class="5xx"} 1' in text
    assert 'tandem_gateway_requests_total{project="we\\"ird",class="4xx"} 1' in text
    assert 'tandem_gateway_request_seconds_bucket{project="pets",le="0.0025"} 2' in text
    assert 'tandem_gateway_request_seconds_bucket{project="pets",le="+Inf"} 3' in text
    assert 'tandem_gateway_upstream_seconds_count{project="pets"} 2' in text
    assert "tandem_gateway_config_revision 7" in text
    assert "tandem_gateway_config_rejected_total 2" in text
    assert "tandem_gateway_workers 2" in text


def test_idle_projects_are_not_in_snapshots() -> None:
    m = Metrics()
    m.stats("idle")
    assert m.snapshot() == {}


def test_prometheus_parser_accepts_the_text() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    m.stats("p").record(200, 0.01, 0.009)
    families = {f.name: f for f in text_string_to_metric_families(render(merge([m.snapshot()]), 1, 0, 1).decode())}
    assert families["tandem_gateway_request_seconds"].type == "histogram"
    assert families["tandem_gateway_requests"].type == "counter"


def test_errors_by_code_are_merged_across_processes_and_rendered() -> None:
    a, b = Metrics(), Metrics()
    for m, code in ((a, "rate_limited"), (a, "rate_limited"), (b, "rate_limited"), (b, "invalid_credentials")):
        m.stats("pets").record(429 if code == "rate_limited" else 401, 0.0001, None)
        m.stats("pets").error(code)
    b.stats("cats").record(200, 0.001, 0.001)
    text = render(merge([a.snapshot(), b.snapshot()]), 1, 0, 2).decode()
    assert 'tandem_gateway_errors_total{project="pets",code="rate_limited"} 3' in text
    assert 'tandem_gateway_errors_total{project="pets",code="invalid_credentials"} 1' in text
    assert 'tandem_gateway_errors_total{project="cats"' not in text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tandem_gateway_errors"].type == "counter"
    assert {s.labels["code"]: s.value for s in families["tandem_gateway_errors"].samples} == {
        "invalid_credentials": 1, "rate_limited": 3}
