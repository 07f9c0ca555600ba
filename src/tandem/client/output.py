"""How `tandem api` prints results: `--json` for scripts, tables and key: value lines for people."""

from __future__ import annotations

import argparse
import json
from typing import Any

# columns per kind of row, recognised by a key only that kind has
COLUMNS: list[tuple[str, list[str]]] = [
    ("context_path", ["name", "version", "context_path", "targets", "policies"]),
    ("action", ["id", "project", "environment", "action", "status", "revision", "error"]),
    ("in_sync", ["environment", "name", "pair", "state", "applied", "revision", "live", "last_seen"]),
    ("credentials", ["name", "description", "keys"]),
    ("status", ["name", "pair", "state", "applied", "status", "last_seen"]),
    ("created_at", ["id", "name", "created_at"]),
]


def cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "targets" and isinstance(value, list):
        return ",".join(str(t.get("url")) for t in value if isinstance(t, dict))
    if key == "policies" and isinstance(value, list):
        return ",".join(str(p.get("type")) for p in value if isinstance(p, dict)) or "-"
    if key == "keys" and isinstance(value, list):
        return str(len(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = next((c for marker, c in COLUMNS if marker in rows[0]), list(rows[0])[:6])
    cells = [[cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def record(obj: dict[str, Any]) -> str:
    width = max((len(k) for k in obj), default=0)
    lines = []
    for key, value in obj.items():
        if key == "gateways" and isinstance(value, list) and value:
            lines.append(f"{key}:")
            lines += ["  " + line for line in table(value).splitlines()]
        else:
            lines.append(f"{key.ljust(width)}  {cell(value)}")
    return "\n".join(lines)


def print_result(args: argparse.Namespace, result: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
        return
    if result is None:
        print("ok")
    elif isinstance(result, list):
        print(table(result))
    elif isinstance(result, dict):
        print(record(result))
        if "key" in result or "token" in result:
            print("(shown once: store it now; the AMS keeps only its hash)")
    else:
        print(result)
