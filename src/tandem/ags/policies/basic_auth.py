"""`basic-auth`: HTTP Basic credentials of a consumer.

Passwords are stored with a slow hash (`tandem.passwords`, scrypt). The
first request with a given (username, password) pays for one verification
in a worker thread, never on the event loop; the verdict is then cached
under a keyed blake2b digest of the pair (the clear password is not kept),
so later requests cost a dict lookup. The cache is per process, bounded,
and keyed by the stored hash too: a changed password invalidates it.

401 `missing_credentials` (with `WWW-Authenticate: Basic realm=...`) when
no credentials are sent, 401 `invalid_credentials` when they do not match.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from tandem.ags.policies.api_key import identified
from tandem.ags.policies.base import Answer, Step, drop_upstream_header, request_header
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import BasicAuthPolicy
from tandem.passwords import verify_password

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

CACHE_SIZE = 10_000


class VerdictCache:
    """(username, password, stored hash) -> verified, bounded LRU; shared by a process's projects."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.key = secrets.token_bytes(32)
        self.entries: OrderedDict[bytes, bool] = OrderedDict()
        self.pending: dict[bytes, asyncio.Future[bool]] = {}

    def digest(self, username: bytes, password: bytes, stored: str) -> bytes:
        h = hashlib.blake2b(key=self.key, digest_size=32)
        for part in (username, password, stored.encode()):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def get(self, d: bytes) -> bool | None:
        v = self.entries.get(d)
        if v is not None:
            self.entries.move_to_end(d)
        return v

    def put(self, d: bytes, ok: bool) -> None:
        self.entries[d] = ok
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


class BasicAuthStep(Step):
    kind = "basic-auth"

    def __init__(self, realm: str, hide: bool, users: dict[str, tuple[str, str]], cache: VerdictCache) -> None:
        self.challenge = [b'WWW-Authenticate: Basic realm="%s", charset="UTF-8"\r\n' % realm.encode("utf-8")]
        self.hide, self.users, self.cache = hide, users, cache

    def denied(self, code: str, message: str) -> Answer:
        return Answer(401, code, message, list(self.challenge))

    def request(self, ex: Exchange) -> Any:
        value = request_header(ex, b"authorization")
        if value is None or value[:6].lower() != b"basic ":
            return self.denied("missing_credentials", "this API needs HTTP Basic credentials")
        try:
            decoded = binascii.a2b_base64(value[6:].strip())
        except binascii.Error:
            return self.denied("invalid_credentials", "the Basic credentials are not valid base64")
        username, sep, password = decoded.partition(b":")
        try:
            user = username.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        entry = self.users.get(user) if sep else None
        if entry is None:
            return self.denied("invalid_credentials", "unknown username or wrong password")
        consumer, stored = entry
        d = self.cache.digest(username, password, stored)
        verdict = self.cache.get(d)
        if verdict is None:
            return self.verify(ex, d, password, stored, consumer)
        return self.decide(ex, verdict, consumer)

    def decide(self, ex: Exchange, ok: bool, consumer: str) -> Answer | None:
        if not ok:
            return self.denied("invalid_credentials", "unknown username or wrong password")
        if self.hide:
            drop_upstream_header(ex, b"authorization")
        identified(ex, consumer)
        return None

    async def verify(self, ex: Exchange, d: bytes, password: bytes, stored: str, consumer: str) -> Answer | None:
        cache = self.cache
        fut = cache.pending.get(d)
        if fut is None:  # one verification per distinct credentials, however many requests wait for it
            fut = cache.pending[d] = asyncio.get_running_loop().create_future()
            try:
                ok = await asyncio.to_thread(verify_password, password.decode("utf-8", "replace"), stored)
            except Exception as exc:
                fut.set_exception(exc)
                fut.exception()  # (retrieved: waiters re-raise it)
                raise
            finally:
                cache.pending.pop(d, None)
            cache.put(d, ok)
            fut.set_result(ok)
        else:
            ok = await asyncio.shield(fut)
        return self.decide(ex, ok, consumer)


@builder("basic-auth")
def build(policy: BasicAuthPolicy, ctx: Context) -> Step:
    cache = ctx.services.state("basic-auth-verdicts", VerdictCache)
    return BasicAuthStep(policy.realm, policy.hide_credentials, ctx.consumers.basic, cache)
