"""The queue's counters per project and their `/metrics` text (docs/delivery.md, "Watching it")."""

from __future__ import annotations

from typing import Any

from tandem.ags.metrics import BUCKETS

LATENCY_BUCKETS = (*BUCKETS, 60.0, 300.0, 3600.0)  # seconds from accepted to delivered (retries take long)
TRY_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 1000)  # attempts a delivered message took


class Counters:
    __slots__ = ("accepted", "duplicates", "full", "too_large", "unavailable", "delivered", "dead", "attempts",
                 "failed_attempts", "lat", "lat_sum", "tries", "tries_sum", "held", "held_bytes", "dead_now",
                 "pending")

    def __init__(self) -> None:
        self.accepted = self.duplicates = self.full = self.too_large = self.unavailable = 0
        self.delivered = self.dead = self.attempts = self.failed_attempts = 0
        self.lat = [0] * (len(LATENCY_BUCKETS) + 1)
        self.lat_sum = 0.0
        self.tries = [0] * (len(TRY_BUCKETS) + 1)
        self.tries_sum = 0
        self.held = self.held_bytes = 0  # messages holding a body (queued, delivering, dead, pending)
        self.dead_now = 0  # dead messages kept
        self.pending: dict[str, float] = {}  # accepted, not yet delivered or dead: id -> accepted_at (in order)

    def open(self, mid: str, accepted_at: float) -> None:
        self.pending[mid] = accepted_at

    def shut(self, mid: str) -> None:
        self.pending.pop(mid, None)


def render(stats: dict[str, dict[str, Any]]) -> str:
    """Prometheus text of `MessageQueue.stats()`."""
    lines = []

    def family(name: str, kind: str, text: str, values: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, v in values:
            lines.append(f"{name}{{{labels}}} {v}")

    names = sorted(stats)
    lab = {n: 'project="' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names}
    family("tandem_delivery_queue_depth", "gauge", "messages queued or in delivery",
           [(lab[n], stats[n]["depth"]) for n in names])
    family("tandem_delivery_dead", "gauge", "dead messages kept (redrivable)",
           [(lab[n], stats[n]["dead_now"]) for n in names])
    family("tandem_delivery_oldest_age_seconds", "gauge", "age of the oldest message not yet delivered",
           [(lab[n], f"{stats[n]['oldest']:.3f}") for n in names])
    family("tandem_delivery_held_bytes", "gauge", "body bytes held (the max_bytes budget)",
           [(lab[n], stats[n]["c"].held_bytes) for n in names])
    for attr, text in (("accepted", "messages accepted (202, durable)"),
                       ("duplicates", "requests answered with an earlier message's id (Idempotency-Key)"),
                       ("delivered", "messages delivered"), ("dead", "messages that became dead"),
                       ("attempts", "delivery attempts"), ("failed_attempts", "delivery attempts that failed")):
        family(f"tandem_delivery_{attr}_total", "counter", text,
               [(lab[n], getattr(stats[n]["c"], attr)) for n in names])
    refused = []
    for n in names:
        c = stats[n]["c"]
        refused += [(lab[n] + ',reason="queue_full"', c.full), (lab[n] + ',reason="payload_too_large"', c.too_large),
                    (lab[n] + ',reason="unavailable"', c.unavailable)]
    family("tandem_delivery_refused_total", "counter", "messages not accepted, by reason", refused)
    histogram(lines, "tandem_delivery_latency_seconds", "from accepted to delivered", names, lab, stats,
              LATENCY_BUCKETS, "lat", "lat_sum")
    histogram(lines, "tandem_delivery_attempts", "attempts a delivered message took", names, lab, stats,
              TRY_BUCKETS, "tries", "tries_sum")
    return "\n".join(lines) + "\n"





def histogram(lines: list[str], name: str, text: str, names: list[str], lab: dict[str, str],
              stats: dict[str, dict[str, Any]], buckets: tuple[float, ...], counts: str, total: str) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} histogram")
    for n in names:
        c = stats[n]["c"]
        per = getattr(c, counts)
        acc = 0
        for i, b in enumerate(buckets):
            acc += per[i]
            lines.append(f'{name}_bucket{{{lab[n]},le="{b:g}"}} {acc}')
        acc += per[-1]
        lines.append(f'{name}_bucket{{{lab[n]},le="+Inf"}} {acc}')
        lines.append(f"{name}_sum{{{lab[n]}}} {getattr(c, total):g}")
        lines.append(f"{name}_count{{{lab[n]}}} {acc}")
