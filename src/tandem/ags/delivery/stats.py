"""The queue's counters per project and their `/metrics` text (docs/delivery.md, "Watching it")."""

from __future__ import annotations

from typing import Any

from tandem.ags.metrics import BUCKETS


class Counters:
    __slots__ = ("accepted", "duplicates", "full", "too_large", "unavailable", "delivered", "dead", "attempts",
                 "failed_attempts", "lat", "lat_sum", "held", "held_bytes")

    def __init__(self) -> None:
        self.accepted = self.duplicates = self.full = self.too_large = self.unavailable = 0
        self.delivered = self.dead = self.attempts = self.failed_attempts = 0
        self.lat = [0] * (len(BUCKETS) + 1)
        self.lat_sum = 0.0
        self.held = self.held_bytes = 0  # messages holding a body (queued, delivering, dead, pending)


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
    lines.append("# HELP tandem_delivery_latency_seconds from accepted to delivered")
    lines.append("# TYPE tandem_delivery_latency_seconds histogram")
    for n in names:
        c = stats[n]["c"]
        acc = 0
        for i, b in enumerate(BUCKETS):
            acc += c.lat[i]
            lines.append(f'tandem_delivery_latency_seconds_bucket{{{lab[n]},le="{b:g}"}} {acc}')
        acc += c.lat[-1]
        lines.append(f'tandem_delivery_latency_seconds_bucket{{{lab[n]},le="+Inf"}} {acc}')
        lines.append(f"tandem_delivery_latency_seconds_sum{{{lab[n]}}} {c.lat_sum:.6f}")
        lines.append(f"tandem_delivery_latency_seconds_count{{{lab[n]}}} {acc}")
    return "\n".join(lines) + "\n"



