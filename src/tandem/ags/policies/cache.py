"""`cache`: answer repeated GET/HEAD requests from memory, per project and per serving process.

Lookup (the last request step, after auth and limits, so a hit is still
identified and counted): a fresh entry is answered by the gateway itself
with the stored status, headers and body, plus `Age` and `X-Cache: HIT`; a
request whose `If-None-Match` matches the stored ETag gets a 304. A miss
adds `X-Cache: MISS` and, if the request may be stored, hangs a `Fill` on
the exchange (`ex.capture`) that collects the response body as it is
relayed and stores it when the response ended cleanly.

The key is host, path, query and the request's values of the `vary`
headers; GET and HEAD share entries (a HEAD is answered from a GET's entry,
a HEAD miss never stores).

A request bypasses the cache (`X-Cache: BYPASS`, not stored) when it has a
body, a `Range`, `Cache-Control: no-cache`/`no-store` (or `Pragma: no-cache`),
or an `Authorization` header on a project without an auth policy. With an
auth policy entries are shared by every identified caller: add the credential
header (`X-API-Key`, `Authorization`) to `vary` to keep them per caller.

A response is stored when its status is in `status_codes` (never 206 or
304), it has no `Set-Cookie`, its `Cache-Control` has none of `no-store`,
`no-cache`, `private`, its `Vary` is not `*` and names only headers in the
policy's `vary`, and its body fits `max_body_bytes` (a Content-Length
above it is not captured; a chunked body is captured up to it and dropped
beyond). `s-maxage` (else `max-age`) below `ttl` shortens the lifetime, an
upstream `Age` counts as already spent; `Expires` is not read. Stored
headers leave out framing, hop-by-hop and per-response lines
(Content-Length, Transfer-Encoding, Date, Age, X-Request-Id, ...): the
exchange writes those itself. The project's `response-headers` edits are
applied before storing, so a hit looks like a miss.

Bounds: `max_entries` (least recently used evicted first) and, for the
bytes, min(max_entries * max_body_bytes, 256 MiB) of bodies and headers per
project and process. Entries survive a redeploy that leaves the cache
policy, the targets and the response-headers policy unchanged; otherwise the
project's cache starts empty.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tandem.ags.policies.base import Answer, Step, add_response_header, request_headers
from tandem.ags.policies.chain import Context, builder, split_lines
from tandem.model.policies import CachePolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

MAX_BYTES = 256 * 1024 * 1024  # per project and process, whatever max_entries * max_body_bytes says
ENTRY_OVERHEAD = 256  # bytes counted per entry besides its body and header lines
HIT, MISS, BYPASS = b"X-Cache: HIT\r\n", b"X-Cache: MISS\r\n", b"X-Cache: BYPASS\r\n"
# response header lines never stored (the exchange writes its own, or they describe one response only)
NOT_STORED = frozenset({b"content-length", b"transfer-encoding", b"date", b"age", b"x-request-id", b"x-cache",
                        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                        b"proxy-authenticate", b"set-cookie"})
NEVER_STORED_STATUS = frozenset({206, 304})
_BYPASS_DIRECTIVES = (b"no-cache", b"no-store")


def directives(values: list[bytes]) -> dict[bytes, bytes | None]:
    """Cache-Control header values -> {lower-case directive: argument or None}."""
    out: dict[bytes, bytes | None] = {}
    for value in values:
        for item in value.split(b","):
            name, eq, arg = item.strip().partition(b"=")
            if name:
                out[name.lower()] = arg.strip().strip(b'"') if eq else None
    return out


def _seconds(arg: bytes | None) -> int | None:
    if arg is None or not arg.isdigit():
        return None
    return int(arg)


def request_bypasses(lines: list[tuple[bytes, bytes]] | tuple[()], has_auth: bool) -> bool:
    """Whether a request skips the cache by its own headers (see the module docstring)."""
    cc: list[bytes] = []
    pragma_no_cache = False
    for name, value in lines:
        low = name.lower()
        if low == b"cache-control":
            cc.append(value)
        elif low == b"range":
            return True
        elif low == b"authorization" and not has_auth:
            return True
        elif low == b"pragma" and b"no-cache" in value.lower():
            pragma_no_cache = True
    if cc:
        d = directives(cc)
        return any(x in d for x in _BYPASS_DIRECTIVES)
    return pragma_no_cache


def freshness(status: int, lines: list[list[bytes]], conf: CacheConf) -> tuple[float, float] | None:
    """(lifetime, age already spent) when this response may be stored, else None.
    `lines`: the response's [name, value] header pairs."""
    if status not in conf.status_codes or status in NEVER_STORED_STATUS:
        return None
    cc: list[bytes] = []
    age = 0.0
    for name, value in lines:
        low = name.lower()
        if low == b"set-cookie":
            return None
        if low == b"cache-control":
            cc.append(value)
        elif low == b"vary":
            for token in value.split(b","):
                t = token.strip().lower()
                if t == b"*" or (t and t not in conf.vary_set):
                    return None
        elif low == b"content-length":
            n = _seconds(value.strip())  # digits only
            if n is None or n > conf.max_body_bytes:
                return None
        elif low == b"age":
            a = _seconds(value.strip())
            if a is not None:
                age = float(a)
    lifetime = float(conf.ttl)
    if cc:
        d = directives(cc)
        if b"no-store" in d or b"no-cache" in d or b"private" in d:
            return None
        limit = _seconds(d.get(b"s-maxage")) if b"s-maxage" in d else _seconds(d.get(b"max-age"))
        if limit is not None and limit < lifetime:
            lifetime = float(limit)
    if lifetime - age <= 0:
        return None
    return lifetime, age


class CacheConf:
    __slots__ = ("ttl", "methods", "status_codes", "vary", "vary_set", "max_body_bytes", "max_entries",
                 "max_bytes")

    def __init__(self, policy: CachePolicy | Mapping[str, Any]) -> None:
        """From the validated policy (a document, with or without its `type`, is validated first)."""
        if not isinstance(policy, CachePolicy):
            policy = CachePolicy.model_validate({"type": "cache", **policy})
        self.ttl = float(policy.ttl)
        self.methods = frozenset(m.encode() for m in policy.methods)
        self.status_codes = frozenset(policy.status_codes)
        self.vary = [v.lower().encode("latin-1") for v in policy.vary]
        self.vary_set = frozenset(self.vary)
        self.max_body_bytes = policy.max_body_bytes
        self.max_entries = policy.max_entries
        self.max_bytes = min(self.max_entries * self.max_body_bytes, MAX_BYTES)


class Entry:
    __slots__ = ("status", "headers", "body", "stored_at", "expires", "etag", "size")

    def __init__(self, status: int, headers: list[bytes], body: bytes, stored_at: float, expires: float,
                 etag: bytes | None) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.stored_at, self.expires, self.etag = stored_at, expires, etag
        self.size = len(body) + sum(len(h) for h in headers) + ENTRY_OVERHEAD


class Store:
    """One project's entries in this process: LRU by entries and by bytes."""

    def __init__(self, signature: str) -> None:
        self.signature = signature
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.stores = self.evictions = 0

    def __repr__(self) -> str:
        return (f"<cache.Store entries={len(self.entries)} bytes={self.bytes} hits={self.hits} "
                f"misses={self.misses} stores={self.stores} evictions={self.evictions}>")

    def clear(self, signature: str) -> None:
        self.signature = signature
        self.entries.clear()
        self.bytes = 0

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            self.bytes -= entry.size
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry, conf: CacheConf) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if entry.size > conf.max_bytes:
            return
        self.entries[key] = entry
        self.bytes += entry.size
        self.stores += 1
        entries = self.entries
        while len(entries) > conf.max_entries or self.bytes > conf.max_bytes:
            _, gone = entries.popitem(last=False)
            self.bytes -= gone.size
            self.evictions += 1


class Fill:
    """A response being captured for the cache (`ex.capture`)."""

    __slots__ = ("step", "key", "chunks", "size", "status", "headers", "lifetime", "age", "etag")

    def __init__(self, step: CacheStep, key: bytes) -> None:
        self.step, self.key = step, key
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.status = 0
        self.headers: list[bytes] = []
        self.lifetime = self.age = 0.0
        self.etag: bytes | None = None

    def feed(self, data: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            return
        self.size += len(data)
        if self.size > self.step.conf.max_body_bytes:
            self.chunks = None  # too big: dropped, the response itself goes on
        else:
            chunks.append(data)

    def end(self, ex: Exchange) -> None:
        if self.chunks is None:
            return
        now = ex.cp.loop.time()
        stored_at = now - self.age
        entry = Entry(self.status, self.headers, b"".join(self.chunks), stored_at, stored_at + self.lifetime,
                      self.etag)
        self.step.store.put(self.key, entry, self.step.conf)


def _etag_matches(if_none_match: list[bytes], etag: bytes) -> bool:
    mine = etag.removeprefix(b"W/")
    for value in if_none_match:
        for tag in value.split(b","):
            t = tag.strip()
            if t == b"*" or t.removeprefix(b"W/") == mine:
                return True
    return False


class CacheStep(Step):
    kind = "cache"

    def __init__(self, conf: CacheConf, store: Store, has_auth: bool) -> None:
        self.conf, self.store, self.has_auth = conf, store, has_auth
        self.methods = conf.methods
        self.get_stores = b"GET" in conf.methods

    def __repr__(self) -> str:
        return f"<CacheStep ttl={self.conf.ttl:g} {self.store!r}>"

    def key(self, ex: Exchange) -> bytes:
        parts = [ex.host.lower(), ex.path + ex.query]
        for lname in self.conf.vary:
            parts.append(b",".join(request_headers(ex, lname)))
        return b"\n".join(parts)

    def request(self, ex: Exchange) -> Answer | None:
        method = ex.method
        if method not in self.methods:
            return None
        if ex.has_body or request_bypasses(ex.req_headers, self.has_auth):
            add_response_header(ex, BYPASS)
            return None
        key = self.key(ex)
        store = self.store
        now = ex.cp.loop.time()
        entry = store.get(key, now)
        if entry is not None:
            store.hits += 1
            extra = [b"Age: %d\r\n" % int(now - entry.stored_at), HIT]
            if entry.etag is not None:
                inm = request_headers(ex, b"if-none-match")
                if inm and _etag_matches(inm, entry.etag):
                    return Answer(304, None, None, headers=entry.headers + extra)
            return Answer(entry.status, None, None, headers=entry.headers + extra, body=entry.body)
        store.misses += 1
        add_response_header(ex, MISS)
        if method == b"GET" and self.get_stores:
            ex.capture = Fill(self, key)
        return None

    def on_response(self, ex: Exchange, status: int, parts: list[bytes]) -> None:
        """The upstream response head: keep capturing only if it may be stored."""
        fill = ex.capture
        if fill is None:
            return
        lines = split_lines(parts)
        fresh = freshness(status, lines, self.conf)
        if fresh is None:
            ex.capture = None
            return
        resp_edit = ex.hook.resp_edit if ex.hook is not None else None  # the chain: response-headers edits
        if resp_edit is not None:
            lines = resp_edit.apply(lines)
        kept: list[bytes] = []
        etag: bytes | None = None
        for name, value in lines:
            low = name.lower()
            if low in NOT_STORED:
                continue
            if low == b"etag":
                etag = value
            kept.append(name + b": " + value + b"\r\n")
        fill.status, fill.headers, fill.etag = status, kept, etag
        fill.lifetime, fill.age = fresh
        fill.chunks, fill.size = [], 0  # (a response dropped for a retry may have fed some bytes)


def _signature(ctx: Context) -> str:
    """What the entries depend on: this policy's document, the targets, the response-headers policy."""
    return json.dumps([ctx.policies[ctx.index], ctx.project.get("targets"), ctx.other("response-headers")],
                      sort_keys=True)


@builder("cache")
def build(policy: CachePolicy, ctx: Context) -> Step:
    conf = CacheConf(policy)
    signature = _signature(ctx)
    # one store per project name and process: a changed policy (or targets) empties it rather than
    # leaving the old one behind in Services for the life of the process
    store: Store = ctx.services.state(("cache", ctx.project["name"]), lambda: Store(signature))
    if store.signature != signature:
        store.clear(signature)
    return CacheStep(conf, store, ctx.has_auth)


__all__ = ["CacheConf", "CacheStep", "Fill", "Store", "directives", "freshness", "request_bypasses"]
