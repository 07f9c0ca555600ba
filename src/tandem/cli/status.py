"""`tandem status`: every profile of the home with its live state, one table."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tandem.config import list_profiles, load_profile
from tandem.errors import ConfigError
from tandem.server.pidlock import running_pid


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="every profile's live state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _row(home: Any, name: str) -> dict[str, Any]:
    try:
        prof = load_profile(home, name)
    except ConfigError as exc:
        return {"profile": name, "mode": "?", "type": "?", "role": "?", "pid": None, "state": "invalid",
                "epoch": None, "lsn": None, "serving": False, "ha_url": "", "error": str(exc)}
    pid = running_pid(prof.run_dir / "server.pid")
    row: dict[str, Any] = {"profile": name, "mode": prof.mode, "type": prof.ha.Type, "role": prof.ha.Role,
                           "pid": pid, "state": "stopped", "epoch": None, "lsn": None, "serving": False,
                           "ha_url": prof.ha_url}
    try:
        st = httpx.get(f"{prof.ha_url}/ha/status", timeout=0.5).json()
        row.update(state=st.get("state"), epoch=st.get("epoch"), lsn=st.get("lsn"),
                   serving=bool(st.get("serving")), pid=st.get("pid", pid))
    except (httpx.HTTPError, ValueError):
        if pid:
            row["state"] = "unreachable"
    return row


def run(args: argparse.Namespace) -> int:
    names = list_profiles(args.home)
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(lambda n: _row(args.home, n), names))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["profile", "mode", "type", "role", "pid", "state", "epoch", "lsn", "serving", "ha_url"]
    table = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    return 0
