"""One project's queued-delivery settings, compiled from a configuration (its `delivery` policy,
its targets and their clients, its `timeout` policy, its redrive counter)."""

from __future__ import annotations

from typing import Any

from tandem.ags.balancer import Balancer, Target
from tandem.ags.delivery.client import TargetClient
from tandem.ags.delivery.decide import Rules
from tandem.ags.health import Check
from tandem.model.policies import DeliveryPolicy, project_timeouts


class Spec:
    """One project's delivery settings, compiled from a configuration."""

    __slots__ = ("name", "rules", "concurrency", "max_messages", "max_bytes", "max_body_bytes", "retention",
                 "order_header", "balancer", "clients", "connect_timeout", "read_timeout", "redrive", "digest",
                 "health")

    def __init__(self, project: dict[str, Any], policy: DeliveryPolicy, connect_timeout: float,
                 read_timeout: float, old: Spec | None) -> None:
        self.name: str = project["name"]
        self.rules = Rules(policy.max_attempts, policy.backoff_initial, policy.backoff_max, float(policy.ttl),
                           frozenset(policy.delivered_statuses) if policy.delivered_statuses else None)
        self.concurrency = policy.concurrency
        self.max_messages, self.max_bytes = policy.max_messages, policy.max_bytes
        self.max_body_bytes, self.retention = policy.max_body_bytes, float(policy.retention)
        self.order_header = policy.order_by_header.lower() if policy.order_by_header else None
        self.connect_timeout, self.read_timeout = project_timeouts(project.get("policies") or [], connect_timeout,
                                                                   read_timeout)
        targets = [Target(t["url"], t.get("weight", 1)) for t in project["targets"]]
        self.health = Check(project["health_check"]) if project.get("health_check") else None
        self.digest = repr([(t.url, t.weight) for t in targets])
        self.balancer: Balancer
        self.clients: dict[Target, TargetClient]
        if old is not None and old.digest == self.digest:  # same targets: keep their state and connections
            self.balancer, self.clients = old.balancer, old.clients
        else:
            if old is not None:
                for c in old.clients.values():
                    c.close()
            self.balancer = Balancer(targets)
            self.clients = {t: TargetClient(str(t.host), t.port, t.scheme == "https") for t in targets}
        r = project.get("redrive", 0)
        self.redrive = r if isinstance(r, int) and not isinstance(r, bool) else 0

    def __repr__(self) -> str:
        return f"<Spec {self.name} targets={len(self.clients)} concurrency={self.concurrency}>"


def delivery_policy(project: dict[str, Any]) -> DeliveryPolicy | None:
    """The project's queued-delivery policy, or None (none, `direct`, or invalid: the chain refuses those)."""
    for p in project.get("policies") or []:
        if p.get("type") == "delivery":
            try:
                m = DeliveryPolicy.model_validate(p)
            except ValueError:
                return None
            return m if m.mode == "queued" else None
    return None
