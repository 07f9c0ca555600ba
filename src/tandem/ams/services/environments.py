"""Environments: a revision number and the set of project snapshots deployed there.

An environment exists from its first deployment. Its revision grows by one
with every change a gateway of that environment must learn about: a
deployment, an undeployment, or any consumer change (consumers are global, so
a consumer change bumps every environment). A deployed project is a snapshot
taken at deploy time: editing a project changes nothing on the gateways until
it is deployed again.

Beside the snapshots, `record["redrive"]` maps a deployed project to its
redrive counter (absent = 0): each `POST /projects/{name}/messages/redrive`
adds one and bumps the revision, and the feed document carries the counter in
that project's object, so every gateway of the environment learns that it
should put the project's dead messages back in its queue. The counter survives
a redeploy (which replaces only the snapshot) and an undeploy: it only ever
grows, so a gateway that remembers the last value it acted on (even one that
missed the undeploy) never ignores a later redrive.
"""

from __future__ import annotations

from typing import Any

from tandem.ams.app_state import NS_ENVS
from tandem.ams.models import routes_conflict
from tandem.store import Op, Store


def get_env(store: Store, env: str) -> dict[str, Any]:
    record = store.get(NS_ENVS, env)
    if record is None:
        return {"name": env, "revision": 0, "projects": {}}
    return dict(record)


def redrive_counters(record: dict[str, Any]) -> dict[str, int]:
    """The environment's redrive counters (a copy; {} when it has none)."""
    return {str(k): int(v) for k, v in (record.get("redrive") or {}).items()}


def list_envs(store: Store) -> list[dict[str, Any]]:
    return [dict(v) for _, v in store.scan(NS_ENVS)]


def env_op(record: dict[str, Any]) -> Op:
    return Op(NS_ENVS, record["name"], record)


def channel(env: str) -> str:
    return f"env:{env}"


def bump_all(store: Store) -> tuple[list[Op], list[str]]:
    """Ops raising every environment's revision by one, and the channels to wake."""
    ops, channels = [], []
    for record in list_envs(store):
        record["revision"] += 1
        ops.append(env_op(record))
        channels.append(channel(record["name"]))
    return ops, channels


def route_conflict(deployed: dict[str, Any], project: dict[str, Any]) -> str | None:
    """The name of a project deployed in the set that `project` cannot share it with."""
    for name, other in sorted(deployed.items()):
        if name != project["name"] and routes_conflict(other, project):
            return name
    return None


def deployed_in(store: Store, project: str) -> list[str]:
    return [r["name"] for r in list_envs(store) if project in r.get("projects", {})]
