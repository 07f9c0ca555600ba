"""Declarative export and import of the whole AMS configuration.

The document holds projects, consumers (with key hashes and hashed
passwords), gateway tokens (hashes), users and their tokens (hashes), and each
environment's revision and deployed snapshots; with `?audit=true` also the
audit trail (never read back by an import: history is not configuration). It
leaves out what is not configuration: the admin token, tokens' last use,
the gateway registry, deployment history and the redrive counters (an import
keeps an environment's counters for the projects that stay deployed there). Every list is sorted, so
export -> import into a fresh AMS -> export gives the same document.

Import is all-or-nothing: the whole document is validated (each part by the
same models as the API, plus cross-checks: unique names, context paths,
credentials, every deployed snapshot naming a project of the document), then
ONE commit makes the configuration equal to it. `format` and `version` are
required (so `{}` is a 422 and changes nothing).

What an import may take away (the rule that keeps a careless document from
emptying the gateways):

- A project deployed now is never removed by an import, with or without
  `?prune=true`: a document that would delete it, or leave it out of an
  environment where it is deployed (or leave that environment out), gets 409
  `deployed` naming each project and environment; undeploy it through the API
  first, exactly as `DELETE /projects/{name}` demands.
- Anything else the document lacks (undeployed projects, consumers, gateway
  tokens) is deleted only with `?prune=true`; without it the import gets 409
  `would_delete` naming them.

An environment's revision becomes the document's, or one more than the
current one if that is higher, so gateways always see a change. Jobs still
open are marked failed ("superseded by import").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tandem.ams.api_errors import ApiError, invalid
from tandem.ams.app_state import (
    NS_CONSUMERS,
    NS_DEPLOYMENTS,
    NS_ENVS,
    NS_GATEWAY_TOKENS,
    NS_OPEN_JOBS,
    NS_PROJECTS,
    NS_USER_TOKENS,
    NS_USERS,
    AmsState,
    now_iso,
)
from tandem.ams.audit import NS_AUDIT
from tandem.ams.models import (
    AuditEntry,
    Ident,
    JwtCredential,
    Name,
    Project,
    Strict,
    UserRole,
    routes_conflict,
)
from tandem.ams.services.environments import channel, get_env, list_envs, redrive_counters
from tandem.ams.services.registry import JOBS_CHANNEL
from tandem.ams.services.users import BUILTIN
from tandem.store import Op

FORMAT = "tandem-ams"
HEX64 = r"^[0-9a-f]{64}$"


class KeyRecord(Strict):
    id: Name
    sha256: str = Field(pattern=HEX64)
    created_at: str


class BasicAuthRecord(Strict):
    username: Ident = Field(min_length=1, max_length=128, pattern=r"^[^:\s]+$")
    password_hash: str = Field(pattern=r"^(sha256\$([0-9a-f]{2})+\$[0-9a-f]{64}"
                                       r"|scrypt\$[0-9]{1,2}\$[0-9]{1,2}\$[0-9]{1,2}\$([0-9a-f]{2})+\$([0-9a-f]{2})+)$")


class CredentialsRecord(Strict):
    basic_auth: list[BasicAuthRecord] = Field(default_factory=list)
    jwt: list[JwtCredential] = Field(default_factory=list)


class ConsumerRecord(Strict):
    name: Name
    description: str = Field(default="", max_length=4096)
    credentials: CredentialsRecord = Field(default_factory=CredentialsRecord)
    keys: list[KeyRecord] = Field(default_factory=list)


class GatewayTokenRecord(Strict):
    id: Name
    name: Name
    created_at: str
    sha256: str = Field(pattern=HEX64)


class EnvironmentRecord(Strict):
    name: Name
    revision: int = Field(ge=0)
    projects: list[Project] = Field(default_factory=list)


class UserRecord(Strict):
    name: Name
    role: UserRole
    description: str = Field(default="", max_length=4096)
    created_at: str


class UserTokenRecord(Strict):
    sha256: str = Field(pattern=HEX64)
    id: Name
    user: Name
    name: Name
    created_at: str
    expires_at: str | None = None


class ExportDocument(Strict):
    format: Literal["tandem-ams"] = Field(description="required: always 'tandem-ams'")
    version: Literal[1] = Field(description="required: the document format's version, 1")
    projects: list[Project] = Field(default_factory=list)
    consumers: list[ConsumerRecord] = Field(default_factory=list)
    gateway_tokens: list[GatewayTokenRecord] = Field(default_factory=list)
    environments: list[EnvironmentRecord] = Field(default_factory=list)
    users: list[UserRecord] | None = Field(default=None, description="users (not the built-in admin); "
                                                                      "left out: an import keeps the users")
    user_tokens: list[UserTokenRecord] | None = Field(default=None, description="users' tokens (hashes); "
                                                                                "left out: an import keeps them")
    audit: list[AuditEntry] | None = Field(default=None, description="the audit trail, oldest first, with "
                                                                     "`?audit=true`; an import never changes it")


def export_document(state: AmsState, with_audit: bool = False) -> dict[str, Any]:
    with state.lock:  # one consistent view: writers hold the lock
        store = state.store()
        doc = {
            "format": FORMAT,
            "version": 1,
            "projects": [v for _, v in store.scan(NS_PROJECTS)],
            "consumers": [v for _, v in store.scan(NS_CONSUMERS)],
            "gateway_tokens": sorted(({**v, "sha256": k} for k, v in store.scan(NS_GATEWAY_TOKENS)),
                                     key=lambda t: t["sha256"]),
            "environments": [{"name": e["name"], "revision": e["revision"],
                              "projects": [e["projects"][n] for n in sorted(e["projects"])]}
                             for e in list_envs(store)],
            "users": [{k: v.get(k, "") for k in ("name", "role", "description", "created_at")}
                      for _, v in store.scan(NS_USERS)],
            "user_tokens": sorted(({"sha256": k, **{f: v.get(f) for f in ("id", "user", "name", "created_at",
                                                                           "expires_at")}}
                                   for k, v in store.scan(NS_USER_TOKENS)), key=lambda t: t["sha256"]),
        }
        if with_audit:
            doc["audit"] = [v for _, v in store.scan(NS_AUDIT)]
        return doc


def _unique(items: list[Any], attr: str, where: str) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            raise invalid(f"{where}[{i}].{attr}", f"{value!r} repeats {where}[{seen[value]}]")
        seen[value] = i


def _no_route_clash(projects: list[dict[str, Any]], where: str) -> None:
    for i, p in enumerate(projects):
        for j in range(i):
            if routes_conflict(projects[j], p):
                raise invalid(f"{where}[{i}].context_path",
                              f"{p['context_path']!r} clashes with {where}[{j}] ({projects[j]['name']!r})")


def check_document(doc: ExportDocument) -> None:
    """Cross-checks the per-field models cannot make; raise 422 naming the field."""
    _unique(doc.projects, "name", "projects")
    _no_route_clash([p.model_dump(mode="json") for p in doc.projects], "projects")
    _unique(doc.consumers, "name", "consumers")
    _unique(doc.gateway_tokens, "sha256", "gateway_tokens")
    _unique(doc.environments, "name", "environments")
    users = {BUILTIN}
    for i, u in enumerate(doc.users or []):
        if u.name == BUILTIN:
            raise invalid(f"users[{i}].name", f"{BUILTIN!r} is the built-in user: it is not in a document")
        users.add(u.name)
    _unique(doc.users or [], "name", "users")
    _unique(doc.user_tokens or [], "sha256", "user_tokens")
    _unique(doc.user_tokens or [], "id", "user_tokens")
    if doc.user_tokens is not None:
        known = users if doc.users is not None else None
        for i, t in enumerate(doc.user_tokens):
            if known is not None and t.user not in known:
                raise invalid(f"user_tokens[{i}].user", f"{t.user!r} is not one of the document's users")
    names = {p.name for p in doc.projects}
    for i, env in enumerate(doc.environments):
        _unique(env.projects, "name", f"environments[{i}].projects")
        for j, p in enumerate(env.projects):
            if p.name not in names:  # a deployed project cannot be deleted: not in a document either
                raise invalid(f"environments[{i}].projects[{j}].name",
                              f"{p.name!r} is deployed here but is not one of the document's projects")
        _no_route_clash([p.model_dump(mode="json") for p in env.projects], f"environments[{i}].projects")
    keys: dict[str, str] = {}
    owners: dict[tuple[str, str], str] = {}
    for i, c in enumerate(doc.consumers):
        for j, k in enumerate(c.keys):
            if k.sha256 in keys or k.id in keys.values():
                raise invalid(f"consumers[{i}].keys[{j}]", f"key {k.id!r} appears twice")
            keys[k.sha256] = k.id
        for kind, ids in (("basic_auth", [b.username for b in c.credentials.basic_auth]),
                          ("jwt", [t.key for t in c.credentials.jwt])):
            for ident in ids:
                if (kind, ident) in owners:
                    raise invalid(f"consumers[{i}].credentials.{kind}",
                                  f"{ident!r} also belongs to consumer {owners[(kind, ident)]!r}")
                owners[(kind, ident)] = c.name


def check_removals(store: Any, doc: ExportDocument, prune: bool) -> None:
    """409 if the document would take a deployed project off a gateway, or (without
    `prune`) delete anything else."""
    wanted_envs = {e.name: {p.name for p in e.projects} for e in doc.environments}
    wanted_projects = {p.name for p in doc.projects}
    deployed: list[str] = []
    for env in list_envs(store):
        for name in sorted(env["projects"]):
            if name not in wanted_envs.get(env["name"], set()) or name not in wanted_projects:
                deployed.append(f"{name} ({env['name']})")
    if deployed:
        raise _conflict("deployed", "projects", deployed,
                        f"the document would remove deployed projects: {', '.join(deployed)}; an import never "
                        "takes a deployed project off its gateways (not even with ?prune=true): undeploy "
                        "them first")
    if prune:
        return
    gone = [f"project {k}" for k, _ in store.scan(NS_PROJECTS) if k not in wanted_projects]
    gone += [f"consumer {k}" for k, _ in store.scan(NS_CONSUMERS) if k not in {c.name for c in doc.consumers}]
    gone += [f"gateway token {v.get('id', '?')} ({v.get('name', '')})" for k, v in store.scan(NS_GATEWAY_TOKENS)
             if k not in {t.sha256 for t in doc.gateway_tokens}]
    if doc.users is not None:
        gone += [f"user {k}" for k, _ in store.scan(NS_USERS) if k not in {u.name for u in doc.users}]
    if doc.user_tokens is not None:
        gone += [f"token {v.get('id', '?')} of user {v.get('user', '?')}" for k, v in store.scan(NS_USER_TOKENS)
                 if k not in {t.sha256 for t in doc.user_tokens}]
    if gone:
        raise _conflict("would_delete", "body", gone,
                        f"the document would delete {', '.join(gone)}; repeat with ?prune=true to delete "
                        "what the document leaves out")


def _conflict(code: str, field: str, names: list[str], message: str) -> ApiError:
    return ApiError(409, code, message, field, names=names)


def import_document(state: AmsState, doc: ExportDocument, prune: bool = False) -> dict[str, Any]:
    check_document(doc)
    with state.lock:
        store = state.store()
        check_removals(store, doc, prune)
        ops: list[Op] = []
        parts: list[tuple[str, dict[str, Any]]] = [
            (NS_PROJECTS, {p.name: p.model_dump(mode="json") for p in doc.projects}),
            (NS_CONSUMERS, {c.name: c.model_dump(mode="json") for c in doc.consumers}),
            (NS_GATEWAY_TOKENS, {t.sha256: t.model_dump(mode="json", exclude={"sha256"}) for t in doc.gateway_tokens})]
        if doc.users is not None:
            parts.append((NS_USERS, {u.name: u.model_dump(mode="json") for u in doc.users}))
        if doc.user_tokens is not None:
            parts.append((NS_USER_TOKENS, {t.sha256: {**t.model_dump(mode="json", exclude={"sha256"}),
                                                      "last_used_at": (store.get(NS_USER_TOKENS, t.sha256) or {})
                                                      .get("last_used_at")} for t in doc.user_tokens}))
        for ns, wanted in parts:
            ops += [Op(ns, key, None) for key, _ in store.scan(ns) if key not in wanted]
            ops += [Op(ns, key, value) for key, value in sorted(wanted.items())]
        channels = [JOBS_CHANNEL]
        imported = {e.name: e for e in doc.environments}
        for name in sorted(set(imported) | {e["name"] for e in list_envs(store)}):
            current = store.get(NS_ENVS, name)
            revision = imported[name].revision if name in imported else 0
            if current is not None:
                revision = max(revision, int(get_env(store, name)["revision"]) + 1)
            projects = {p.name: p.model_dump(mode="json") for p in imported[name].projects} if name in imported else {}
            record: dict[str, Any] = {"name": name, "revision": revision, "projects": projects}
            # redrive counters are not configuration (not exported) but must never go back: keep them
            # for the projects that stay deployed, or a gateway would ignore the next redrives
            counters = {p: n for p, n in redrive_counters(get_env(store, name)).items() if p in projects}
            if counters:
                record["redrive"] = counters
            ops.append(Op(NS_ENVS, name, record))
            channels.append(channel(name))
        for job_id, _ in store.scan(NS_OPEN_JOBS):
            job = store.get(NS_DEPLOYMENTS, job_id)
            if job is not None:
                ops.append(Op(NS_DEPLOYMENTS, job_id, {**job, "status": "failed", "error": "superseded by import",
                                                      "updated_at": now_iso()}))
            ops.append(Op(NS_OPEN_JOBS, job_id, None))
        change = state.commit(ops, *channels)
    return {"projects": len(doc.projects), "consumers": len(doc.consumers),
            "gateway_tokens": len(doc.gateway_tokens), "environments": len(doc.environments), "lsn": change.lsn}
