"""Create a project from an OpenAPI 3 document (JSON or YAML).

- name: the `name` option, else `x-tandem-name`, else `info.title` made into a name
  ("Swagger Petstore" -> "swagger-petstore");
- version: `info.version`;
- targets: the `target` option, else every absolute http(s) URL in `servers`;
- context_path: the `context_path` option, else "/" + name (the server URL's own
  path, e.g. `/api/v3`, stays in the target, where the backend expects it);
- resources: one per path and operation (get, put, post, delete, options, head,
  patch, trace), with its operationId and summary.

Anything that is not an OpenAPI 3 document with `info` and `paths` is a 422
naming what is wrong. The result is validated as any project is.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from tandem.ams.api_errors import invalid
from tandem.ams.limits import MAX_NODES, json_depth

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_DOCUMENT = 10 * 1024 * 1024


def parse_document(raw: bytes, max_depth: int = 64) -> dict[str, Any]:
    if len(raw) > MAX_DOCUMENT:
        raise invalid("body", f"document larger than {MAX_DOCUMENT} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid("body", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if not text.strip():
        raise invalid("body", "empty document")
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise invalid("body", f"neither JSON nor YAML: {reason}") from exc
        except RecursionError:
            raise invalid("body", f"nested deeper than {max_depth} levels (AdminMaxJSONDepth)") from None
    # a JSON body was checked before (tandem.ams.limits); YAML here, within a node budget
    # (aliases can make a small document a huge tree)
    if json_depth(doc, max_depth) > max_depth:
        raise invalid("body", f"nested deeper than {max_depth} levels (AdminMaxJSONDepth), or too many "
                              f"nodes (more than {MAX_NODES})")
    if not isinstance(doc, dict):
        raise invalid("body", f"expected an OpenAPI document (an object), got {type(doc).__name__}")
    return doc


def slug(text: str) -> str:
    s = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip())).strip("-._").lower()
    return s[:64].rstrip("-._")


def _servers(doc: dict[str, Any]) -> list[str]:
    servers = doc.get("servers", [])
    if not isinstance(servers, list):
        raise invalid("servers", "must be a list")
    urls = []
    for i, s in enumerate(servers):
        if not isinstance(s, dict) or not isinstance(s.get("url"), str):
            raise invalid(f"servers[{i}].url", "missing or not a string")
        urls.append(s["url"])
    return urls


def project_from_openapi(doc: dict[str, Any], name: str | None = None, context_path: str | None = None,
                         target: str | None = None) -> dict[str, Any]:
    """A project document (not yet validated as a Project) built from `doc`."""
    version = doc.get("openapi")
    if not isinstance(version, str) or not re.match(r"^3\.\d+(\.\d+)?$", version):
        raise invalid("openapi", f"expected an OpenAPI 3 version string like '3.0.3', got {version!r}")
    info = doc.get("info")
    if not isinstance(info, dict):
        raise invalid("info", "missing or not an object")
    title = info.get("title")
    if not isinstance(title, str) or not title.strip():
        raise invalid("info.title", "missing or empty")
    api_version = info.get("version")
    if not isinstance(api_version, str | int | float) or isinstance(api_version, bool) or not str(api_version):
        raise invalid("info.version", "missing or not a string")
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise invalid("paths", "missing or not an object")
    resources = []
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid("paths", f"{path!r}: a path must start with '/'")
        if not isinstance(item, dict):
            raise invalid(f"paths.{path}", "must be an object")
        for method in OPERATIONS:
            op = item.get(method)
            if op is None:
                continue
            if not isinstance(op, dict):
                raise invalid(f"paths.{path}.{method}", "must be an object")
            op_id, summary = op.get("operationId"), op.get("summary")
            resources.append({"path": path, "method": method.upper(),
                              "operation_id": op_id if isinstance(op_id, str) else None,
                              "summary": summary if isinstance(summary, str) else None})
    if not resources:
        raise invalid("paths", "no operations: nothing to create a project from")
    servers = _servers(doc)
    absolute = [u for u in servers if urlsplit(u).scheme in ("http", "https")]
    if target is None and not absolute:
        raise invalid("servers", "no absolute http(s) server URL: pass the target option")
    x_name = doc.get("x-tandem-name")
    project_name = name or (x_name if isinstance(x_name, str) else None) or slug(title)
    if not project_name:
        raise invalid("info.title", f"{title!r} gives no usable project name: pass the name option")
    if context_path is None:
        context_path = f"/{project_name}"
    description = info.get("description")
    return {
        "name": project_name,
        "version": str(api_version),
        "description": description[:4096] if isinstance(description, str) else "",
        "context_path": context_path,
        "targets": [{"url": target, "weight": 1}] if target else [{"url": u, "weight": 1} for u in absolute],
        "hosts": [],
        "methods": [],
        "resources": resources,
        "policies": [],
    }
