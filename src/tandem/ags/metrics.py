"""Per-project gateway metrics, cheap enough for the hot path, as Prometheus text.

Each serving process counts in plain lists (`ProjectStats`): one increment
per status class, one bisect per histogram. Worker processes send a
`snapshot()` to the server process about once a second; the server sums the
snapshots of live workers plus whatever retired workers had counted, and
renders the sum on the HA port's `/metrics`:

    tandem_gateway_requests_total{project, class}          counter, class = 1xx..5xx
    tandem_gateway_request_seconds{project}                histogram, client-side latency
    tandem_gateway_upstream_seconds{project}               histogram, request sent -> response done
    tandem_gateway_errors_total{project, code}              counter, the gateway's own error answers by
                                                           their JSON `code` (rate_limited, invalid_credentials,
                                                           upstream_timeout, ...: docs/policies.md)
    tandem_gateway_refused_total{reason}                   counter, client connections refused or cut by a
                                                           client-side limit: header_timeout, body_timeout,
                                                           send_timeout, keepalive_timeout, max_connections
    tandem_gateway_config_revision                         gauge, the configuration being served
    tandem_gateway_config_rejected_total                   counter, fetched documents refused
    tandem_gateway_workers                                 gauge, live serving processes

Requests that match no project are counted under `project="_no_route"`. The
limit counters travel in the same snapshot under the key `REFUSED` (not a
possible project name), as a `{reason: count}` dict.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NO_ROUTE: Final = "_no_route"
REFUSED: Final = "#refused"  # snapshot key of the client-side limit counters
REFUSED_REASONS: Final = ("header_timeout", "body_timeout", "send_timeout", "keepalive_timeout", "max_connections")
_N = len(BUCKETS) + 1


class ProjectStats:
    __slots__ = ("classes", "lat", "lat_sum", "up", "up_sum", "errors")

    def __init__(self) -> None:
        self.classes = [0, 0, 0, 0, 0, 0]
        self.lat = [0] * _N
        self.lat_sum = 0.0
        self.up = [0] * _N
        self.up_sum = 0.0
        self.errors: dict[str, int] = {}  # the gateway's own error answers, by code (never on the 2xx path)

    def error(self, code: str) -> None:
        errors = self.errors
        errors[code] = errors.get(code, 0) + 1

    def record(self, status: int, seconds: float, upstream_seconds: float | None) -> None:
        """One answered request: its status class, its latency and upstream time. (Has an inlined copy in
        Exchange.on_end: tests/unit/test_inlined_copies.py runs both.)"""
        self.classes[status // 100 if status < 600 else 5] += 1
        self.lat[bisect_left(BUCKETS, seconds)] += 1
        self.lat_sum += seconds
        if upstream_seconds is not None:
            self.up[bisect_left(BUCKETS, upstream_seconds)] += 1
            self.up_sum += upstream_seconds

    def to_json(self) -> list[Any]:
        return [self.classes, self.lat, self.lat_sum, self.up, self.up_sum, self.errors]


class Metrics:
    """The counters of one serving process."""

    def __init__(self) -> None:
        self.projects: dict[str, ProjectStats] = {}
        self.refused: dict[str, int] = {}  # client-side limits hit, by reason (never on the request path)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def stats(self, project: str) -> ProjectStats:
        st = self.projects.get(project)
        if st is None:
            st = self.projects[project] = ProjectStats()
        return st

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {name: st.to_json() for name, st in self.projects.items() if any(st.classes)}
        if self.refused:
            snap[REFUSED] = dict(self.refused)
        return snap


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum snapshots (of workers, retired workers, the in-process gateway) per project."""
    total: dict[str, Any] = {}
    for snap in snapshots:
        for name, value in snap.items():
            if name == REFUSED:
                acc_r = total.setdefault(REFUSED, {})
                for reason, n in value.items():
                    acc_r[reason] = acc_r.get(reason, 0) + n
                continue
            classes, lat, lat_sum, up, up_sum, errors = value
            acc = total.get(name)
            if acc is None:
                total[name] = [list(classes), list(lat), lat_sum, list(up), up_sum, dict(errors)]
                continue
            for i, v in enumerate(classes):
                acc[0][i] += v
            for i, v in enumerate(lat):
                acc[1][i] += v
            acc[2] += lat_sum
            for i, v in enumerate(up):
                acc[3][i] += v
            acc[4] += up_sum
            for code, n in errors.items():
                acc[5][code] = acc[5].get(code, 0) + n
    return total


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram(out: list[str], name: str, project: str, counts: list[int], total: float) -> None:
    cumulative = 0
    for bound, n in zip(BUCKETS, counts, strict=False):
        cumulative += n
        out.append(f'{name}_bucket{{project="{project}",le="{bound}"}} {cumulative}')
    cumulative += counts[-1]
    out.append(f'{name}_bucket{{project="{project}",le="+Inf"}} {cumulative}')
    out.append(f'{name}_sum{{project="{project}"}} {total}')
    out.append(f'{name}_count{{project="{project}"}} {cumulative}')


def render(merged: dict[str, Any], revision: int, rejected: int, workers: int) -> bytes:
    out = [
        "# HELP tandem_gateway_config_revision revision of the configuration being served",
        "# TYPE tandem_gateway_config_revision gauge",
        f"tandem_gateway_config_revision {revision}",
        "# HELP tandem_gateway_config_rejected_total fetched configuration documents refused",
        "# TYPE tandem_gateway_config_rejected_total counter",
        f"tandem_gateway_config_rejected_total {rejected}",
        "# HELP tandem_gateway_workers live gateway serving processes",
        "# TYPE tandem_gateway_workers gauge",
        f"tandem_gateway_workers {workers}",
        "# HELP tandem_gateway_refused_total client connections refused or cut by a client-side limit",
        "# TYPE tandem_gateway_refused_total counter",
    ]
    refused = merged.get(REFUSED, {})
    out += [f'tandem_gateway_refused_total{{reason="{reason}"}} {refused.get(reason, 0)}'
            for reason in sorted(set(REFUSED_REASONS) | set(refused))]
    out += [
        "# HELP tandem_gateway_requests_total requests by project and status class",
        "# TYPE tandem_gateway_requests_total counter",
    ]
    names = sorted(name for name in merged if name != REFUSED)
    for name in names:
        for i, n in enumerate(merged[name][0]):
            if n and i:
                out.append(f'tandem_gateway_requests_total{{project="{_label(name)}",class="{i}xx"}} {n}')
    for metric, idx, help_text in (("tandem_gateway_request_seconds", 1, "request latency seen by the client"),
                                   ("tandem_gateway_upstream_seconds", 3, "upstream time, request sent to response done")):
        out.append(f"# HELP {metric} {help_text}")
        out.append(f"# TYPE {metric} histogram")
        for name in names:
            _histogram(out, metric, _label(name), merged[name][idx], merged[name][idx + 1])
    out.append("# HELP tandem_gateway_errors_total the gateway's own error answers by project and code")
    out.append("# TYPE tandem_gateway_errors_total counter")
    for name in names:
        for code, n in sorted(merged[name][5].items()):
            out.append(f'tandem_gateway_errors_total{{project="{_label(name)}",code="{_label(code)}"}} {n}')
    return ("\n".join(out) + "\n").encode()
