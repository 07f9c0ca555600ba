"""The HA view: every pair this AMS knows, for `GET /api/v1/ha` (the console's first screen).

- The AMS pair: this server's own `/ha/status` (asked in-process) and its
  peer's, fetched from the peer's HA port (always open, whatever its state).
  The peer's answer is cached for PEER_CACHE seconds, so any number of open
  pages cost one small request per PEER_CACHE; an unreachable peer is shown
  as it is seen from here (`reachable: false`, this server's view of it).
- Gateway pairs: what each AGS half reported last (`tandem.ams.services.reports`
  via the registry listing), grouped by pair; a half whose report is stale
  shows `reachable: false`.
- `history`: the recent state changes of every half, newest first, with
  their reasons.

Nothing here writes to the store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tandem.ams.app_state import AmsState

PEER_CACHE = 0.5
PEER_TIMEOUT = 0.3
HISTORY = 100
FIELDS = ("server", "role", "type", "mode", "state", "serving", "epoch", "lsn", "peer", "lock", "isolated",
          "since", "reason", "waiting_reason", "client_url")


def half(status: dict[str, Any], reachable: bool = True) -> dict[str, Any]:
    out = {k: status.get(k) for k in FIELDS}
    out["reachable"] = reachable
    return out


class HAView:
    def __init__(self, state: AmsState) -> None:
        self.state = state
        self._peer: tuple[float, dict[str, Any] | None, str | None] = (0.0, None, None)
        self._fetching: asyncio.Lock | None = None

    def peer_url(self) -> str | None:
        profile = self.state.server.profile
        return None if profile.ha.Type == "none" else profile.peer_ha_url

    async def peer_status(self) -> tuple[dict[str, Any] | None, str | None]:
        """The peer's /ha/status (or None and why), at most PEER_CACHE seconds old."""
        url = self.peer_url()
        if url is None:
            return None, None
        if self._fetching is None:
            self._fetching = asyncio.Lock()
        async with self._fetching:  # concurrent pages share one fetch
            at, status, error = self._peer
            if time.monotonic() - at < PEER_CACHE:
                return status, error
            try:
                async with httpx.AsyncClient(timeout=PEER_TIMEOUT, trust_env=False) as client:
                    r = await client.get(url + "/ha/status")
                status, error = (r.json(), None) if r.status_code == 200 else (None, f"HTTP {r.status_code}")
            except (httpx.HTTPError, ValueError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._peer = (time.monotonic(), status, error)
            return status, error

    async def view(self, gateways: list[dict[str, Any]]) -> dict[str, Any]:
        own = self.state.server.ha_status()
        halves = [half(own)]
        histories = [(own.get("server"), "AMS", own.get("history") or [])]
        if self.peer_url() is not None:
            peer, error = await self.peer_status()
            if peer is not None:
                halves.append(half(peer))
                histories.append((peer.get("server"), "AMS", peer.get("history") or []))
            else:
                seen = own.get("peer") or {}
                halves.append({"server": seen.get("address") or self.peer_url(), "state": seen.get("state") or "Dead",
                               "reachable": False, "error": error, "role": _other_role(own.get("role"))})
        halves.sort(key=lambda h: str(h.get("role") or ""))
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in gateways:
            key = (str(entry.get("environment")), str(entry.get("pair") or entry.get("name")))
            report = entry.get("ha")
            if report:
                pairs.setdefault(key, []).append({**half(report), "gateway": entry.get("name")})
                histories.append((report.get("server") or entry.get("name"), "AGS", report.get("history") or []))
            else:
                pairs.setdefault(key, []).append({"gateway": entry.get("name"), "server": entry.get("name"),
                                                  "state": entry.get("state"), "reachable": False})
        history = [{**h, "server": server, "mode": mode} for server, mode, hs in histories for h in hs]
        history.sort(key=lambda h: str(h.get("at")), reverse=True)
        return {
            "ams": {"pair": self.state.server.profile.name.split("/")[0], "halves": halves,
                    "urls": [h["client_url"] for h in halves if h.get("client_url")]},
            "gateways": [{"environment": env, "pair": pair,
                          "halves": sorted(hs, key=lambda h: str(h.get("role") or ""))}
                         for (env, pair), hs in sorted(pairs.items())],
            "history": history[:HISTORY],
        }


def _other_role(role: Any) -> str:
    return "secondary" if role == "primary" else "primary"
