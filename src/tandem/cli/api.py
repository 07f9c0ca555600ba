"""`tandem api ...`: the admin API from the command line.

Where to: `--url URL[;URL...]` (failover list), else the client URLs of
`--profile` (default `server1`; a pair such as `haprofile1` or one half of it
gives both halves' URLs, so the CLI finds the active). Token: `--token`, env
`TANDEM_TOKEN`, else the `admin.token` file of the profile (or of its pair).
Output: tables for people, `--json` for scripts. Errors: one line on stderr,
exit 1 when the server refused or could not be reached, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tandem.client import Client, ClientError
from tandem.client.output import print_result
from tandem.errors import UsageError

DEFAULT_PROFILE = "server1"


def _common(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the sub-command; leaves don't override the group's values."""
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", default=d(None), help="AMS URL(s), ';'-separated (default: from --profile)")
    p.add_argument("--profile", "-profile", default=d(None),
                   help=f"AMS profile or pair whose client URL(s) and admin.token to use (default {DEFAULT_PROFILE})")
    p.add_argument("--token", default=d(None), help="bearer token (default: env TANDEM_TOKEN, then admin.token)")
    p.add_argument("--json", action="store_true", default=d(False), help="print JSON for scripts")
    p.add_argument("--timeout", type=float, default=d(10.0), help="seconds per request (default 10)")
    return p


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("api", help="the AMS admin API: projects, deployments, consumers, keys, users, "
                                              "audit",
                                  parents=[_common(True)])
    sub = group.add_subparsers(dest="api_command", metavar="COMMAND", required=True)
    leaf = _common(False)

    def add(parent: Any, name: str, func: Any, help_text: str, *args: tuple[str, dict[str, Any]]) -> None:
        p = parent.add_parser(name, help=help_text, parents=[leaf])
        for flag, kwargs in args:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=lambda a: run(a, func))

    name_arg = ("name", {"help": "project name"})
    file_arg = ("file", {"help": "JSON or YAML file ('-' for stdin)"})
    env_arg = ("--env", {"default": "default", "help": "environment (default 'default')"})
    wait_arg = ("--wait", {"type": float, "nargs": "?", "const": 60.0, "default": None, "metavar": "SECONDS",
                           "help": "wait until deployed or failed (default 60 s)"})

    projects = sub.add_parser("projects", help="API projects").add_subparsers(dest="what", required=True)
    add(projects, "list", lambda c, a: c.get("/api/v1/projects"), "list projects")
    add(projects, "show", lambda c, a: c.get(f"/api/v1/projects/{a.name}"), "show a project", name_arg)
    add(projects, "create", lambda c, a: c.post("/api/v1/projects", json=read_document(a.file)),
        "create a project from a file", file_arg)
    add(projects, "update", lambda c, a: c.put(f"/api/v1/projects/{a.name}", json=read_document(a.file)),
        "replace a project from a file", name_arg, file_arg)
    add(projects, "delete", lambda c, a: c.delete(f"/api/v1/projects/{a.name}"), "delete a project", name_arg)

    add(sub, "deploy", lambda c, a: deploy(c, a, "deploy"), "deploy a project to an environment",
        name_arg, env_arg, wait_arg)
    add(sub, "undeploy", lambda c, a: deploy(c, a, "undeploy"), "remove a project from an environment",
        name_arg, env_arg, wait_arg)
    deployments = sub.add_parser("deployments", help="deployment jobs").add_subparsers(dest="what", required=True)
    add(deployments, "list", lambda c, a: c.get("/api/v1/deployments"), "newest deployments first")
    add(deployments, "show", lambda c, a: c.get(f"/api/v1/deployments/{a.id}"), "one deployment, per gateway",
        ("id", {"help": "deployment id"}))

    consumers = sub.add_parser("consumers", help="consumers (applications)").add_subparsers(dest="what",
                                                                                             required=True)
    add(consumers, "list", lambda c, a: c.get("/api/v1/consumers"), "list consumers")
    add(consumers, "show", lambda c, a: c.get(f"/api/v1/consumers/{a.name}"), "show a consumer",
        ("name", {"help": "consumer name"}))
    add(consumers, "create", create_consumer, "create a consumer",
        ("name", {"help": "consumer name"}), ("--description", {"default": ""}),
        ("--file", {"default": None, "help": "JSON/YAML with description and credentials"}))
    add(consumers, "delete", lambda c, a: c.delete(f"/api/v1/consumers/{a.name}"), "delete a consumer",
        ("name", {"help": "consumer name"}))

    keys = sub.add_parser("keys", help="API keys of consumers").add_subparsers(dest="what", required=True)
    add(keys, "issue", lambda c, a: c.post(f"/api/v1/consumers/{a.consumer}/keys"),
        "issue an API key (shown once)", ("consumer", {}))
    add(keys, "revoke", lambda c, a: c.delete(f"/api/v1/consumers/{a.consumer}/keys/{a.key_id}"),
        "revoke an API key", ("consumer", {}), ("key_id", {}))

    add(sub, "export", export, "the whole configuration as one document",
        ("--output", {"default": None, "help": "write to this file instead of stdout"}),
        ("--audit", {"action": "store_true", "help": "also the audit trail"}))
    add(sub, "import", lambda c, a: c.post("/api/v1/import", json=read_document(a.file),
                                           params={"prune": "true"} if a.prune else None),
        "make the configuration equal to an exported document (all or nothing)", file_arg,
        ("--prune", {"action": "store_true",
                     "help": "also delete what the document leaves out (never a deployed project)"}))
    add(sub, "import-openapi", import_openapi, "create a project from an OpenAPI 3 document", file_arg,
        ("--name", {"default": None}), ("--context-path", {"default": None}), ("--target", {"default": None}))
    add(sub, "gateways", lambda c, a: c.get("/api/v1/gateways"), "gateways that pull configuration")
    tokens = sub.add_parser("gateway-tokens", help="tokens for gateways").add_subparsers(dest="what", required=True)
    add(tokens, "list", lambda c, a: c.get("/api/v1/gateway-tokens"), "list gateway tokens")
    add(tokens, "issue", lambda c, a: c.post("/api/v1/gateway-tokens", json={"name": a.name}),
        "issue a gateway token (shown once)", ("name", {}))
    add(tokens, "revoke", lambda c, a: c.delete(f"/api/v1/gateway-tokens/{a.id}"), "revoke a gateway token",
        ("id", {}))

    expiry: list[tuple[str, dict[str, Any]]] = [("--expires-at", {"default": None, "metavar": "ISO", "help": "expiry, e.g. 2027-01-31T00:00:00Z"}),
              ("--expires-in", {"type": float, "default": None, "metavar": "DAYS", "help": "expiry in days"})]
    user_arg = ("user", {"help": "user name"})
    users = sub.add_parser("users", help="users and their roles").add_subparsers(dest="what", required=True)
    add(users, "list", lambda c, a: c.get("/api/v1/users"), "list users (roles, tokens' ids and last use)")
    add(users, "show", lambda c, a: c.get(f"/api/v1/users/{a.user}"), "show a user", user_arg)
    add(users, "create", create_user, "create a user; prints its first token (shown once)", user_arg,
        ("--role", {"required": True, "choices": ("viewer", "operator", "admin")}),
        ("--description", {"default": ""}), ("--token-name", {"default": "default"}), *expiry)
    add(users, "set-role", lambda c, a: c.put(f"/api/v1/users/{a.user}",
                                              json={"role": a.role, "description": a.description}),
        "change a user's role", user_arg, ("role", {"choices": ("viewer", "operator", "admin")}),
        ("--description", {"default": ""}))
    add(users, "delete", lambda c, a: c.delete(f"/api/v1/users/{a.user}"), "delete a user and revoke its tokens",
        user_arg)
    user_tokens = sub.add_parser("tokens", help="users' tokens").add_subparsers(dest="what", required=True)
    add(user_tokens, "list", lambda c, a: c.get(f"/api/v1/users/{a.user}")["tokens"], "a user's tokens",
        user_arg)
    add(user_tokens, "issue", issue_token, "issue another token for a user (shown once)", user_arg,
        ("--name", {"default": "default", "help": "the token's name"}), *expiry)
    add(user_tokens, "revoke", lambda c, a: c.delete(f"/api/v1/users/{a.user}/tokens/{a.id}"), "revoke a token",
        user_arg, ("id", {"help": "token id (from tokens list)"}))
    add(sub, "whoami", lambda c, a: c.get("/api/v1/whoami"), "the user and role of the token in use")
    add(sub, "audit", audit_trail, "the audit trail, newest first",
        ("--since", {"default": None, "help": "ISO time"}), ("--actor", {"default": None}),
        ("--action", {"default": None}), ("--limit", {"type": int, "default": 100}))


def run(args: argparse.Namespace, func: Any) -> int:
    from tandem.client.target import resolve_target

    urls, token = resolve_target(args.home, args.url, args.profile or DEFAULT_PROFILE, args.token)
    try:
        client = Client(urls, token=token, timeout=args.timeout)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from exc
    with client:
        result = func(client, args)
    print_result(args, result)
    return 0


def read_document(path: str) -> Any:
    """A JSON or YAML file as data; bad input is a UsageError (exit 2)."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: neither JSON nor YAML: {' '.join(str(exc).split())}") from exc


def deploy(client: Client, args: argparse.Namespace, action: str) -> Any:
    job = client.post(f"/api/v1/projects/{args.name}/{action}", json={"environment": args.env})
    if args.wait is None:
        return job
    deadline = time.monotonic() + args.wait
    while job["status"] in ("pending", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get(f"/api/v1/deployments/{job['id']}")
    if job["status"] != "deployed":
        print_result(args, job)
        raise ClientError(f"deployment {job['id']} is {job['status']}"
                          + (f": {job['error']}" if job.get("error") else f" after {args.wait:g} s"))
    return job


def create_consumer(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"name": args.name, "description": args.description}
    if args.file:
        extra = read_document(args.file)
        if not isinstance(extra, dict):
            raise UsageError(f"{args.file}: expected an object with description and/or credentials")
        body.update(extra)
        body["name"] = args.name
    return client.post("/api/v1/consumers", json=body)


def export(client: Client, args: argparse.Namespace) -> Any:
    doc = client.get("/api/v1/export", params={"audit": "true"} if args.audit else None)
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return {"written": args.output, "projects": len(doc["projects"]), "consumers": len(doc["consumers"])}
    return doc


def expires_at(args: argparse.Namespace) -> str | None:
    """--expires-at as given, or --expires-in DAYS from now (UTC); not both."""
    from datetime import UTC, datetime, timedelta

    if args.expires_at is not None and args.expires_in is not None:
        raise UsageError("--expires-at and --expires-in: give one of them")
    if args.expires_in is None:
        return str(args.expires_at) if args.expires_at is not None else None
    if args.expires_in <= 0:
        raise UsageError(f"--expires-in: {args.expires_in:g} is not a positive number of days")
    return (datetime.now(UTC) + timedelta(days=args.expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_user(client: Client, args: argparse.Namespace) -> Any:
    return client.post("/api/v1/users", json={"name": args.user, "role": args.role, "description": args.description,
                                              "token_name": args.token_name, "expires_at": expires_at(args)})


def issue_token(client: Client, args: argparse.Namespace) -> Any:
    return client.post(f"/api/v1/users/{args.user}/tokens", json={"name": args.name, "expires_at": expires_at(args)})


def audit_trail(client: Client, args: argparse.Namespace) -> Any:
    params = {k: v for k, v in (("since", args.since), ("actor", args.actor), ("action", args.action),
                                ("limit", args.limit)) if v is not None}
    return client.get("/api/v1/audit", params=params)["entries"]


def import_openapi(client: Client, args: argparse.Namespace) -> Any:
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"{args.file}: cannot read: {exc.strerror or exc}") from exc
    params = {k: v for k, v in (("name", args.name), ("context_path", args.context_path),
                                ("target", args.target)) if v is not None}
    ctype = "application/json" if raw.lstrip()[:1] in (b"{", b"[") else "application/yaml"
    return client.post("/api/v1/import/openapi", content=raw, params=params, headers={"Content-Type": ctype})

