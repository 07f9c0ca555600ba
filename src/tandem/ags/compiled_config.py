"""Validate a feed document (docs/config-feed.md) and compile it for serving.

`validate_document` is the gate every configuration passes before it is
stored or served: JSON object, the expected environment, an integer
revision, the digest recomputed over the canonical JSON, and every project
well formed. Anything else raises `ConfigRejected` with the reason, and the
caller keeps the configuration it has.

`compile_config` turns a valid document into what the hot path reads: a
`Router` over `Project` objects, each with its balancer over pooled targets.
Projects whose document did not change since the previous configuration are
reused as they are (with their balancer position and health marks), so a
redeploy of one project among 5,000 costs little.

Each project's policies are validated with the shared schema
(`tandem.model.policies`) and compiled here too, into its `chain`
(`tandem.ags.policies`); `timeout` sets the project's upstream timeouts. A
policy the gateway has no builder for (or that the schema or its builder
refuses) makes its project answer every request with 501
`policy_not_supported`: the gateway fails closed. A project with an auth
policy is rebuilt when the consumers change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tandem.ags.balancer import Balancer, Target
from tandem.ags.delivery.endpoint import MessagesRoute
from tandem.ags.health import Check
from tandem.ags.policies import Consumers, Services, compile_chain
from tandem.ags.policies.chain import AUTH_KINDS
from tandem.ags.router import Router, context_key, split_host
from tandem.model.document import reserved_context, verify_document
from tandem.model.policies import project_timeouts

log = logging.getLogger("tandem.ags")



class ConfigRejected(ValueError):
    """A configuration document that must not replace the current one; str() is the reason."""


def validate_document(raw: bytes | str | dict[str, Any], environment: str) -> dict[str, Any]:
    """The parsed document if it may be applied; raises ConfigRejected naming what is wrong."""
    if isinstance(raw, dict):
        doc = raw
    else:
        try:
            doc = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (nested too deep: RecursionError)
            raise ConfigRejected(f"not JSON ({str(exc)[:200]})") from exc
    reason = verify_document(doc)  # the shape and the digest: the rule the AMS side checks too
    if reason is not None:
        raise ConfigRejected(reason)
    if doc["environment"] != environment:
        raise ConfigRejected(f"environment {doc['environment']!r}, this gateway serves {environment!r}")
    seen: dict[tuple[bytes, Any, Any], str] = {}
    for i, p in enumerate(doc["projects"]):
        where = f"projects[{i}]" + (f" ({p.get('name')!r})" if isinstance(p, dict) else "")
        try:
            key = _check_project(p)
        except ValueError as exc:
            raise ConfigRejected(f"{where}: {exc}") from exc
        if key in seen:
            raise ConfigRejected(f"{where}: same context_path, hosts and methods as {seen[key]!r}")
        seen[key] = p["name"]
    for i, c in enumerate(doc["consumers"]):
        try:
            _check_consumer(c)
        except ValueError as exc:
            raise ConfigRejected(f"consumers[{i}]: {exc}") from exc
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_objects(value: Any, field: str, *strings: str) -> None:
    """ValueError naming `field` unless `value` is absent or a list of objects whose `strings` fields
    are strings."""
    if value is None:
        return
    if not isinstance(value, list):
        raise ValueError(f"{field}: expected a list, got {type(value).__name__}")
    for j, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in strings):
            raise ValueError(f"{field}[{j}]: expected an object with string {', '.join(strings)}, got {item!r:.100}")


def _check_consumer(c: Any) -> None:
    """A consumer as `tandem.model.document.feed_consumer` builds it: name, keys (id, sha256) and
    credentials (basic_auth: username, password_hash; jwt: key)."""
    if not isinstance(c, dict):
        raise ValueError(f"expected an object, got {type(c).__name__}")
    if not isinstance(c.get("name"), str) or not c["name"]:
        raise ValueError(f"name: expected a non-empty string, got {c.get('name')!r:.100}")
    _check_objects(c.get("keys"), "keys", "id", "sha256")
    creds = c.get("credentials")
    if creds is None:
        return
    if not isinstance(creds, dict):
        raise ValueError(f"credentials: expected an object, got {type(creds).__name__}")
    _check_objects(creds.get("basic_auth"), "credentials.basic_auth", "username", "password_hash")
    _check_objects(creds.get("jwt"), "credentials.jwt", "key")


def _str_list(p: dict[str, Any], field: str) -> list[str]:
    value = p.get(field) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{field}: expected a list of non-empty strings, got {value!r}")
    return value


def _check_project(p: Any) -> tuple[bytes, Any, Any]:
    if not isinstance(p, dict):
        raise ValueError(f"expected an object, got {type(p).__name__}")
    if not isinstance(p.get("name"), str) or not p["name"]:
        raise ValueError(f"name: expected a non-empty string, got {p.get('name')!r}")
    cp = p.get("context_path")
    if not isinstance(cp, str) or not cp.startswith("/"):
        raise ValueError(f"context_path: expected a path starting with '/', got {cp!r}")
    targets = p.get("targets")
    if not isinstance(targets, list):
        raise ValueError(f"targets: expected a list, got {targets!r}")
    for j, t in enumerate(targets):
        if not isinstance(t, dict) or not isinstance(t.get("url"), str):
            raise ValueError(f"targets[{j}]: expected {{'url': ..., 'weight': ...}}, got {t!r}")
        w = t.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"targets[{j}].weight: expected a non-negative integer, got {w!r}")
        Target(t["url"], w)  # raises ValueError naming the url
    hc = p.get("health_check")
    if hc is not None:
        if not isinstance(hc, dict):
            raise ValueError(f"health_check: expected an object, got {hc!r}")
        Check(hc)  # raises ValueError naming the bad field
    hosts = frozenset(h.lower() for h in _str_list(p, "hosts")) or None
    methods = frozenset(m.upper() for m in _str_list(p, "methods")) or None
    policies = p.get("policies") or []
    if not isinstance(policies, list) or not all(isinstance(x, dict) and isinstance(x.get("type"), str)
                                                 for x in policies):
        raise ValueError(f"policies: expected a list of objects with a 'type', got {policies!r}")
    return context_key(cp), hosts, methods


class Project:
    """A compiled project: what the hot path reads for one route."""

    __slots__ = ("name", "context", "hosts", "wild_hosts", "methods", "balancer", "refusal",
                 "connect_timeout", "read_timeout", "stats", "raw", "log_name", "chain", "consumers_digest",
                 "health")

    def __init__(self, raw: dict[str, Any], pool_for: Callable[[Target], Any], stats: Any,
                 connect_timeout: float, read_timeout: float, consumers: Consumers | None = None,
                 services: Services | None = None) -> None:
        self.raw = raw
        self.name: str = raw["name"]
        self.log_name = json.dumps(self.name).encode()  # for the access log
        self.context = context_key(raw["context_path"])
        # a request's Host is compared without its port, so a configured port is dropped too
        hosts = [split_host(h.encode("idna")) for h in raw.get("hosts") or []]
        exact = frozenset(h for h in hosts if not h.startswith(b"*."))
        self.wild_hosts = tuple(h[1:] for h in hosts if h.startswith(b"*."))
        self.hosts = (exact or frozenset()) if hosts else None
        methods = raw.get("methods") or []
        self.methods = frozenset(m.upper().encode("ascii") for m in methods) if methods else None
        targets = []
        for t in raw["targets"]:
            target = Target(t["url"], t.get("weight", 1))
            target.pool = pool_for(target)
            targets.append(target)
        self.balancer = Balancer(targets)
        self.health = Check(raw["health_check"]) if raw.get("health_check") else None
        self.stats = stats
        policies = raw.get("policies") or []
        self.connect_timeout, self.read_timeout = project_timeouts(policies, connect_timeout, read_timeout)
        consumers = consumers if consumers is not None else Consumers([])
        self.consumers_digest = (consumers.digest if any(p["type"] in AUTH_KINDS for p in policies)
                                 else None)
        self.chain, self.refusal = compile_chain(raw, consumers, services if services is not None else Services())

    def __repr__(self) -> str:
        return f"<Project {self.name} context={self.context!r} targets={len(self.balancer.targets)}>"


class CompiledConfig:
    __slots__ = ("revision", "environment", "router", "projects", "digest")

    def __init__(self, revision: int, environment: str, projects: dict[str, Project], digest: str,
                 local: MessagesRoute | None = None) -> None:
        self.revision, self.environment, self.projects, self.digest = revision, environment, projects, digest
        self.router = Router([*projects.values(), *([local] if local is not None else [])])

    @classmethod
    def empty(cls, environment: str = "default") -> CompiledConfig:
        return cls(0, environment, {}, "")

    def __repr__(self) -> str:
        return f"<CompiledConfig {self.environment} revision={self.revision} projects={len(self.projects)}>"


def compile_config(doc: dict[str, Any], pool_for: Callable[[Target], Any], stats_for: Callable[[str], Any],
                   connect_timeout: float, read_timeout: float,
                   previous: CompiledConfig | None = None, services: Services | None = None) -> CompiledConfig:
    """Build the serving form of a validated document, reusing unchanged projects of `previous`."""
    old = previous.projects if previous is not None else {}
    projects: dict[str, Project] = {}
    consumers = Consumers(doc.get("consumers") or [])
    services = services if services is not None else Services()
    for raw in doc["projects"]:
        if reserved_context(raw["context_path"]):
            log.error("project %r not served: its context path %r is reserved for the gateway's own "
                      "endpoints", raw["name"], raw["context_path"])
            continue
        prev = old.get(raw["name"])
        if prev is not None and prev.raw == raw and prev.consumers_digest in (None, consumers.digest):
            projects[raw["name"]] = prev
        else:
            projects[raw["name"]] = Project(raw, pool_for, stats_for(raw["name"]), connect_timeout, read_timeout,
                                            consumers, services)
    return CompiledConfig(doc["revision"], doc["environment"], projects, doc.get("digest", ""),
                          MessagesRoute(services, stats_for("_tandem")))
