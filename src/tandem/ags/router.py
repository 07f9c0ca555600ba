"""The router: longest `context_path` prefix first, then host, then method.

Compiled once per configuration into a dict keyed by path prefix (no
trailing slash; the root `/` is the empty key). A lookup walks the request
path from the full path to the root, one dict probe per `/`, so its cost
follows the depth of the path, never the number of projects.

Within one prefix, candidates are ordered most specific first: projects
with hosts before those without, with methods before those without. A
request whose host or method matches no candidate of a prefix falls back
to shorter prefixes, then to `no_route`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote


class Routable(Protocol):
    name: str
    context: bytes  # normalised context path: b"/petstore", b"" for "/"
    hosts: frozenset[bytes] | None  # exact hosts, lower case, no port
    wild_hosts: tuple[bytes, ...]  # suffixes of "*.example.com" entries: b".example.com"
    methods: frozenset[bytes] | None


def context_key(context_path: str) -> bytes:
    """The wire form of a context path without its trailing slash ("/" -> b"")."""
    wire = quote(context_path, safe="/:@!$&'()*+,;=-._~%").encode("ascii")
    return wire.rstrip(b"/")


def host_matches(route: Routable, host: bytes) -> bool:
    if route.hosts is None:
        return True
    if host in route.hosts:
        return True
    return any(host.endswith(suffix) for suffix in route.wild_hosts)


class Router:
    def __init__(self, routes: Iterable[Any]) -> None:
        table: dict[bytes, list[Any]] = {}
        for route in routes:
            table.setdefault(route.context, []).append(route)
        self.table: dict[bytes, tuple[Any, ...]] = {
            key: tuple(sorted(cands, key=lambda r: (r.hosts is None, r.methods is None, r.name)))
            for key, cands in table.items()
        }
        self.uses_hosts = any(r.hosts is not None for c in self.table.values() for r in c)
        # the most "/" in a key: a longer prefix of a path cannot be a key, so a lookup starts at the
        # path cut before its (depth + 1)-th "/" (for "/api7/items/42" and depth 1: "/api7")
        self.depth = max((key.count(b"/") for key in self.table), default=0)
        # prefixes whose most specific candidate takes any host and method: the answer without a loop
        self.plain = {key: cands[0] for key, cands in self.table.items()
                      if cands[0].hosts is None and cands[0].methods is None}
        self.size = sum(len(c) for c in self.table.values())

    def match(self, path: bytes, host: bytes, method: bytes) -> Any | None:
        """The route for a normalised path (starting with "/"), or None. (Its first probe has an inlined
        copy in ClientProtocol.on_headers_complete: tests/unit/test_inlined_copies.py runs both.)"""
        table = self.table
        depth = self.depth
        if depth == 1:  # the usual case: one-segment context paths ("/petstore")
            i = path.find(b"/", 1)
            p = path[:i] if i > 0 else path
            r = self.plain.get(p)
            if r is not None:
                return r
        else:
            p = path
            i = -1
            for _ in range(depth + 1):
                i = path.find(b"/", i + 1)
                if i < 0:
                    break
            else:
                p = path[:i]
        while True:
            cands = table.get(p)
            if cands is not None:
                for r in cands:
                    if (r.hosts is None or host_matches(r, host)) and (r.methods is None or method in r.methods):
                        return r
            i = p.rfind(b"/")
            if i < 0:
                return None
            p = p[:i]

    def __repr__(self) -> str:
        return f"<Router prefixes={len(self.table)} routes={self.size}>"


def normalize_path(path: bytes) -> bytes | None:
    """Remove dot segments (also %2e-encoded ones) so that `/api/../admin` cannot
    escape a context path on the way to a backend; None when the path climbs
    above the root or is not origin-form."""
    if not path.startswith(b"/"):
        return None
    if path.find(b"/.") < 0 and path.find(b"%2") < 0:
        return path  # the fast path: nothing to normalise
    text = path.replace(b"%2e", b".").replace(b"%2E", b".")
    out: list[bytes] = []
    segments = text.split(b"/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b".":
            if last:
                out.append(b"")
            continue
        if seg == b"..":
            if not out:
                return None
            out.pop()
            if last:
                out.append(b"")
            continue
        out.append(seg)
    return b"/" + b"/".join(out)


def split_host(host_header: bytes) -> bytes:
    """Lower-case host without the port (IPv6 literals keep their brackets)."""
    host = host_header.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    i = host.rfind(b":")
    return host[:i] if i >= 0 else host
