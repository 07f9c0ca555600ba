"""The configuration document an AGS pulls (docs/config-feed.md), as pure functions.

Both sides use these: the AMS builds a document with `build_document`, the
gateway checks one with `verify_document` before it replaces a good
configuration. The digest is the sha256 hex of the canonical JSON
(`json.dumps(obj, sort_keys=True, separators=(",", ":"))`, UTF-8) of
`{"environment", "revision", "projects", "consumers"}`.

A project object may carry `"redrive": n` (n > 0): the environment's redrive
counter for that project (`POST /api/v1/projects/{name}/messages/redrive`). A
gateway puts the project's dead messages back in its queue when it applies a
document whose `redrive` is greater than the last one it acted on. A project
without a counter carries no such key, so documents built before redrive
existed hash the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_FIELDS = ("environment", "revision", "projects", "consumers")
RESERVED_CONTEXT = "/_tandem"  # the gateway answers /_tandem/messages/{id} itself (docs/delivery.md)


def reserved_context(context_path: str) -> bool:
    """Whether `context_path` is the gateway's own (`/_tandem` or under it): the AMS refuses it, a
    gateway handed one anyway does not serve it."""
    path = context_path.rstrip("/")
    return path == RESERVED_CONTEXT or path.startswith(RESERVED_CONTEXT + "/")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def document_digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: doc[k] for k in DIGEST_FIELDS})).hexdigest()


def feed_consumer(record: Mapping[str, Any]) -> dict[str, Any]:
    """A consumer as a gateway sees it: key hashes and hashed credentials, no clear secret
    except JWT HMAC secrets (a gateway cannot verify an HS256 token without one)."""
    return {
        "name": record["name"],
        "keys": [{"id": k["id"], "sha256": k["sha256"]} for k in record.get("keys", [])],
        "credentials": record.get("credentials", {}),
    }


def feed_project(snapshot: Mapping[str, Any], redrive: int) -> Any:
    """A deployed snapshot as the feed carries it: with `redrive` when its counter is above 0
    (on a copy: the stored snapshot is never changed), else the snapshot itself."""
    if redrive > 0:
        return {**snapshot, "redrive": redrive}
    return snapshot


def build_document(environment: str, revision: int, projects: Mapping[str, Any],
                   consumers: Iterable[Mapping[str, Any]], generated_at: str,
                   redrive: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The 200 body of the feed; projects and consumers sorted by name. `redrive` maps a
    project name to its redrive counter (absent or 0: the project carries no `redrive`)."""
    counters = redrive or {}
    doc: dict[str, Any] = {
        "environment": environment,
        "revision": revision,
        "generated_at": generated_at,
        "projects": [feed_project(projects[name], int(counters.get(name, 0))) for name in sorted(projects)],
        "consumers": sorted((feed_consumer(c) for c in consumers), key=lambda c: str(c["name"])),
    }
    doc["digest"] = document_digest(doc)
    return doc


def verify_document(doc: Any) -> str | None:
    """Why `doc` must not be applied, or None when it is whole and untampered."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, got {type(doc).__name__}"
    for key in (*DIGEST_FIELDS, "digest"):
        if key not in doc:
            return f"missing field {key!r}"
    if not isinstance(doc["revision"], int) or isinstance(doc["revision"], bool) or doc["revision"] < 0:
        return f"revision: expected a non-negative integer, got {doc['revision']!r}"
    if not isinstance(doc["projects"], list) or not isinstance(doc["consumers"], list):
        return "projects and consumers must be lists"
    try:
        expected = document_digest(doc)
    except (TypeError, ValueError, RecursionError) as exc:  # (nested too deep: RecursionError)
        return f"cannot canonicalise: {str(exc)[:200]}"
    if doc["digest"] != expected:
        return (f"digest mismatch (document says {str(doc['digest'])[:16]}..., content hashes to "
                f"{expected[:16]}...): partial or corrupted document")
    return None
