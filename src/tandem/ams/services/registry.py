"""The gateway registry: every AGS that polls the config feed.

An entry is keyed by environment and gateway name and records the pair, the
HA state and the applied revision the gateway reported, the queued and dead
messages it reported (`queued`, `dead`; 0 until it reports them), and when it
was last seen. It is stored (so a new active AMS knows the gateways at once),
but a poll only commits when the pair, state or applied revision changed or
the stored `last_seen` is older than `REFRESH` seconds, so idle long polls do
not flood the change log. A change of `queued` or `dead` alone does not
commit: the new counts are written with the next commit (at most `REFRESH`
seconds later while the gateway polls).

A gateway is *live* when it was seen within `LIVE_WINDOW` seconds or is held
in a long poll on this AMS right now; deployments wait for live gateways only.

The listing adds what each gateway last reported (`reports.py`, in memory:
`ha`, `reported_at`), and the gateways that report but do not poll (a
passive AGS half), as not live.
"""

from __future__ import annotations

import time
from typing import Any

from tandem.ams.app_state import NS_GATEWAYS, AmsState, now_iso, parse_iso
from tandem.ams.services.environments import get_env
from tandem.ams.services.reports import GatewayReports
from tandem.store import Op

LIVE_WINDOW = 30.0
REFRESH = 10.0
JOBS_CHANNEL = "jobs"


def registry_key(env: str, name: str) -> str:
    return f"{env}/{name}"


class RegistryService:
    def __init__(self, state: AmsState, reports: GatewayReports | None = None) -> None:
        self.state = state
        self.reports = reports or GatewayReports()

    def register(self, env: str, name: str, pair: str | None, ha_state: str | None, applied: int | None,
                 queued: int | None = None, dead: int | None = None) -> None:
        now = time.time()
        with self.state.lock:
            store = self.state.store()
            key = registry_key(env, name)
            old = store.get(NS_GATEWAYS, key)
            entry = {
                "name": name,
                "environment": env,
                "pair": pair if pair is not None else (old or {}).get("pair"),
                "state": ha_state if ha_state is not None else (old or {}).get("state"),
                "applied": applied if applied is not None else (old or {}).get("applied", 0),
                "last_seen": now_iso(now),
                "queued": queued if queued is not None else (old or {}).get("queued", 0),
                "dead": dead if dead is not None else (old or {}).get("dead", 0),
            }
            if old is not None:
                # queued/dead change with every message: alone they wait for the next refresh
                same = all(old.get(k) == entry[k] for k in ("pair", "state", "applied"))
                if same and now - parse_iso(old["last_seen"]) < REFRESH:
                    return
            self.state.commit([Op(NS_GATEWAYS, key, entry)], JOBS_CHANNEL)

    def entries(self, env: str | None = None) -> list[dict[str, Any]]:
        store = self.state.store()
        prefix = f"{env}/" if env is not None else ""
        return [dict(v) for k, v in store.scan(NS_GATEWAYS, prefix) if env is None or k.startswith(prefix)]

    def live(self, env: str) -> list[dict[str, Any]]:
        now = time.time()
        polling = self.state.polling_now(env)
        return [e for e in self.entries(env)
                if e["name"] in polling or now - parse_iso(e["last_seen"]) < LIVE_WINDOW]

    def listing(self) -> list[dict[str, Any]]:
        """`GET /api/v1/gateways`: every entry with `live` and the environment's current revision."""
        store = self.state.store()
        out = []
        now = time.time()
        revisions: dict[str, int] = {}
        for e in self.entries():
            env = e["environment"]
            if env not in revisions:
                revisions[env] = int(get_env(store, env)["revision"])
            live = e["name"] in self.state.polling_now(env) or now - parse_iso(e["last_seen"]) < LIVE_WINDOW
            out.append({**e, "live": live, "revision": revisions[env],
                        "in_sync": e.get("applied") == revisions[env]})
        polled = {(e["environment"], e["name"]) for e in out}
        for r in self.reports.gateways():  # reporting, never polling here: a passive AGS half
            env = r["environment"]
            if (env, r["name"]) in polled:
                continue
            if env not in revisions:
                revisions[env] = int(get_env(store, env)["revision"])
            out.append({**r, "last_seen": r["reported_at"], "queued": 0, "dead": 0,
                        "live": False, "revision": revisions[env], "in_sync": r["applied"] == revisions[env]})
        for e in out:
            e["ha"] = self.reports.ha(e["environment"], e["name"])
            e["reported_at"] = self.reports.reported_at(e["environment"], e["name"]) or e.get("reported_at")
        return out
