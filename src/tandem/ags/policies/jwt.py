"""`jwt`: the caller presents a signed JSON Web Token; the gateway checks it and names the consumer.

The token comes in `header` (default `Authorization: Bearer <token>`; any
other header takes the raw token or the Bearer form). The consumer is the one
whose jwt credential `key` equals the token's `key_claim` (default `iss`).

- Without `jwks_url`, that credential also holds the verification key: an
  HMAC `secret` (HS*) or a PEM `public_key` (RS*/ES*). The token's `alg`
  must be the credential's algorithm and one the policy allows.
- With `jwks_url`, the key is the JWKS entry whose `kid` is the token's (a
  token without `kid` is checked with the only key of a one-key set). The
  set is fetched off the request path's critical section with httpx, kept
  `jwks_cache_seconds` and then refreshed in the background while the old
  keys keep serving; an unknown `kid` refetches at once, at most once per
  `REFETCH_INTERVAL`. A JWKS that cannot be fetched while no key set is
  known is a 503 `auth_unavailable`, never a 401.

The signature is checked before any claim, so an unauthenticated token
never learns more than `invalid_credentials`. Then `required_claims`,
`exp` (401 `token_expired`) and `nbf` (401 `token_not_yet_valid`) with
`leeway` seconds of skew, `issuer` and `audience` when set (401
`invalid_claims`). `iat` is not checked.

Everything that can be is compiled in the builder (key objects from PEM, the
allowed algorithms). A verified token is remembered by its exact bytes until
it expires, at most `CACHE_TTL` seconds, in a bounded LRU of the step: a
client that reuses its token costs one dict lookup per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable
from time import monotonic, time
from typing import TYPE_CHECKING, Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt import PyJWK, PyJWT
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidTokenError, PyJWTError

from tandem.ags.policies.api_key import identified
from tandem.ags.policies.base import Answer, Step, drop_upstream_header, request_header
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import JWT_ALGORITHMS, JwtPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

log = logging.getLogger("tandem.ags.policies.jwt")

ALGORITHMS = JWT_ALGORITHMS  # the schema's: what a policy's `algorithms` may name
_ALGS: dict[str, Algorithm] = {name: alg for name, alg in get_default_algorithms().items() if name in ALGORITHMS}
# the algorithms a JWKS key without `alg` may serve, by kty (EC: by crv)
_JWK_ALGS = {"RSA": frozenset({"RS256", "RS384", "RS512"}), "oct": frozenset({"HS256", "HS384", "HS512"}),
             "P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"})}

CACHE_TTL = 60.0  # a verified token is checked again at least this often (key rotation, JWKS changes)
CACHE_SIZE = 4096  # verified tokens remembered per policy
CACHE_MAX_TOKEN = 4096  # longer tokens are verified every time rather than held
REFETCH_INTERVAL = 10.0  # an unknown kid refetches the JWKS at most this often
COLD_RETRY = 1.0  # with no key set yet, a failed fetch is retried at most this often (503 meanwhile)
JWKS_TIMEOUT = 5.0  # one whole fetch, connect to last byte
JWKS_MAX_BYTES = 1 << 20

_PARSER = PyJWT()
_NO_VERIFY: Any = {"verify_signature": False}
_MISSING_HEADERS = [b"WWW-Authenticate: Bearer\r\n"]
_INVALID_HEADERS = [b'WWW-Authenticate: Bearer error="invalid_token"\r\n']


def refuse(code: str, message: str) -> Answer:
    return Answer(401, code, message, _INVALID_HEADERS)


class Parsed:
    """A token read but not yet trusted."""

    __slots__ = ("alg", "kid", "claims", "signing_input", "signature")

    def __init__(self, alg: str, kid: str | None, claims: dict[str, Any], signing_input: bytes,
                 signature: bytes) -> None:
        self.alg, self.kid, self.claims = alg, kid, claims
        self.signing_input, self.signature = signing_input, signature


def parse(token: bytes) -> Parsed | Answer:
    try:
        d = _PARSER.decode_complete(token, options=_NO_VERIFY)
    except InvalidTokenError:
        return refuse("invalid_credentials", "the token is not a well-formed JWT")
    header = d["header"]
    alg = header.get("alg")
    if type(alg) is not str:
        return refuse("invalid_credentials", "the token header has no 'alg'")
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not implement make the token invalid
        return refuse("invalid_credentials", "the token uses JWS extensions this gateway does not support")
    return Parsed(alg, header.get("kid"), d["payload"], token[:token.rfind(b".")], d["signature"])


def _number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v)


class JwksKey:
    __slots__ = ("key", "algs")

    def __init__(self, key: Any, algs: frozenset[str]) -> None:
        self.key, self.algs = key, algs


def parse_jwks(body: bytes) -> dict[str | None, JwksKey]:
    """A JWKS document -> {kid: key}. Keys this gateway cannot use are skipped (and logged);
    a document that is not a JWKS raises ValueError."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    out: dict[str | None, JwksKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        kty = jwk.get("kty")
        algs = frozenset({alg}) if isinstance(alg, str) else _JWK_ALGS.get(str(jwk.get("crv") if kty == "EC" else kty))
        if (kid is not None and not isinstance(kid, str)) or not algs or not algs <= set(ALGORITHMS):
            log.warning("JWKS key %r skipped: kty %r alg %r is not supported", kid, kty, alg)
            continue
        try:
            out[kid] = JwksKey(PyJWK(jwk, next(iter(algs))).key, algs)
        except (PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
    return out


class Jwks:
    """One JWKS URL's keys in this process, shared by every policy and configuration naming it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: dict[str | None, JwksKey] | None = None  # None until a fetch succeeded
        self.fetched_at = -math.inf  # monotonic time of the last good fetch
        self.tried_at = -math.inf  # ... of the last attempt
        self.kid_refetch_at = -math.inf  # ... of the last refetch an unknown kid caused
        self.task: asyncio.Task[bool] | None = None  # the fetch in flight
        self.error: str | None = None
        self.fetches = 0

    def __repr__(self) -> str:
        keys = None if self.keys is None else len(self.keys)
        return f"<Jwks {self.url} keys={keys} fetches={self.fetches} error={self.error!r}>"

    def find(self, kid: str | None) -> JwksKey | None:
        keys = self.keys
        if not keys:
            return None
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        return keys.get(kid)

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[bool]:
        """The fetch in flight, or a new one."""
        if self.task is None:
            self.tried_at = monotonic()
            self.task = loop.create_task(self._fetch())
        return self.task

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            async with asyncio.timeout(JWKS_TIMEOUT), httpx.AsyncClient(timeout=JWKS_TIMEOUT, trust_env=False) as c:
                async with c.stream("GET", self.url, headers={"Accept": "application/json"}) as r:
                    if r.status_code != 200:
                        raise ValueError(f"answered {r.status_code}")
                    body = b""
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > JWKS_MAX_BYTES:
                            raise ValueError(f"the document is larger than {JWKS_MAX_BYTES} bytes")
            keys = parse_jwks(body)
        except Exception as exc:  # noqa: BLE001 - any failure of the dependency keeps the old keys
            self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("JWKS %s: fetch failed (%s); %s", self.url, self.error,
                        "no key set yet" if self.keys is None else "keeping the previous key set")
            return False
        finally:
            self.task = None
        self.keys, self.fetched_at, self.error = keys, monotonic(), None
        log.info("JWKS %s: %d keys", self.url, len(keys))
        return True


Verified = tuple[str, float]  # (consumer, cache until: wall clock)


class JwtStep(Step):
    kind = "jwt"

    def __init__(self, header: bytes, allowed: frozenset[str], key_claim: str, issuer: str | None,
                 audience: str | None, required: tuple[str, ...], leeway: float, hide: bool,
                 creds: dict[str, tuple[str, str, Any]], consumer_of: dict[str, str], jwks: Jwks | None,
                 jwks_cache_seconds: float) -> None:
        self.header, self.lheader = header, header.lower()
        self.bearer_only = self.lheader == b"authorization"
        self.allowed, self.key_claim, self.issuer, self.audience = allowed, key_claim, issuer, audience
        self.required, self.leeway, self.hide = required, leeway, hide
        self.creds = creds  # credential key -> (consumer, algorithm, prepared key); allowed algorithms only
        self.consumer_of = consumer_of  # credential key -> consumer (JWKS mode)
        self.jwks, self.jwks_cache_seconds = jwks, jwks_cache_seconds
        self.verified: OrderedDict[bytes, Verified] = OrderedDict()
        where = "Authorization: Bearer <token>" if self.bearer_only else f"header {header.decode()}"
        self.missing = Answer(401, "missing_credentials", f"this API needs a JWT ({where})", _MISSING_HEADERS)

    def __repr__(self) -> str:
        return f"<JwtStep {sorted(self.allowed)} creds={len(self.creds)} jwks={self.jwks!r} cached={len(self.verified)}>"

    def token(self, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        value = value.strip()
        if value[:7].lower() == b"bearer ":
            return value[7:].strip() or None
        return None if self.bearer_only else value or None

    def request(self, ex: Exchange) -> Answer | Awaitable[Answer | None] | None:
        token = self.token(request_header(ex, self.lheader))
        if token is None:
            return self.missing
        now = time()
        hit = self.verified.get(token)
        if hit is not None:
            if hit[1] > now:
                self.verified.move_to_end(token)
                self.admit(ex, hit[0])
                return None
            del self.verified[token]
        p = parse(token)
        if not isinstance(p, Parsed):
            return p
        if p.alg not in self.allowed:
            return refuse("invalid_credentials", f"the token's algorithm {p.alg!r} is not allowed here")
        jw = self.jwks
        if jw is None:
            return self.finish(ex, token, self.check_local(p, now))
        mono = monotonic()
        if jw.keys is None:
            if jw.task is None and mono - jw.tried_at < COLD_RETRY:
                return self.unavailable(jw)
            return self.after_fetch(ex, token, p, jw.start(ex.cp.loop))
        if (mono - jw.fetched_at > self.jwks_cache_seconds and jw.task is None
                and mono - jw.tried_at >= min(self.jwks_cache_seconds, REFETCH_INTERVAL)):
            jw.start(ex.cp.loop)  # in the background: the cached keys serve meanwhile
        key = jw.find(p.kid)
        if key is None:
            if jw.task is not None:
                return self.after_fetch(ex, token, p, jw.task)
            if mono - jw.kid_refetch_at >= REFETCH_INTERVAL:
                jw.kid_refetch_at = mono
                return self.after_fetch(ex, token, p, jw.start(ex.cp.loop))
            return self.unknown_kid(p)
        return self.finish(ex, token, self.check_jwks(p, key, now))

    async def after_fetch(self, ex: Exchange, token: bytes, p: Parsed, task: asyncio.Task[bool]) -> Answer | None:
        jw = self.jwks
        assert jw is not None
        ok = await asyncio.shield(task)
        key = jw.find(p.kid)
        if key is None:
            return self.unknown_kid(p) if ok else self.unavailable(jw)
        return self.finish(ex, token, self.check_jwks(p, key, time()))

    @staticmethod
    def unavailable(jw: Jwks) -> Answer:
        return Answer(503, "auth_unavailable", f"the keys to check this token could not be fetched ({jw.error})")

    @staticmethod
    def unknown_kid(p: Parsed) -> Answer:
        what = f"key {p.kid!r}" if p.kid is not None else "no key id (kid)"
        return refuse("invalid_credentials", f"the token names {what} this API does not know")

    def admit(self, ex: Exchange, consumer: str) -> None:
        if self.hide:
            drop_upstream_header(ex, self.lheader)
        identified(ex, consumer)

    def finish(self, ex: Exchange, token: bytes, r: Verified | Answer) -> Answer | None:
        if isinstance(r, Answer):
            return r
        if len(token) <= CACHE_MAX_TOKEN:
            cache = self.verified
            cache[token] = r
            if len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        self.admit(ex, r[0])
        return None

    # ---- checking one token (no I/O) ----
    def check_local(self, p: Parsed, now: float) -> Verified | Answer:
        """Without JWKS: the credential named by the key claim verifies the token."""
        name = p.claims.get(self.key_claim)
        cred = self.creds.get(name) if type(name) is str else None
        if cred is None:
            return refuse("invalid_credentials", f"the token's {self.key_claim!r} claim names no known credential")
        consumer, alg, key = cred
        if p.alg != alg:
            return refuse("invalid_credentials", f"the token is signed with {p.alg}, its credential uses {alg}")
        if not verify_signature(p, key):
            return refuse("invalid_credentials", "the token's signature is not valid")
        r = self.check_claims(p.claims, now)
        return r if isinstance(r, Answer) else (consumer, r)

    def check_jwks(self, p: Parsed, key: JwksKey, now: float) -> Verified | Answer:
        if p.alg not in key.algs:
            return refuse("invalid_credentials", f"the token's key {p.kid!r} is not for {p.alg}")
        if not verify_signature(p, key.key):
            return refuse("invalid_credentials", "the token's signature is not valid")
        r = self.check_claims(p.claims, now)
        if isinstance(r, Answer):
            return r
        name = p.claims.get(self.key_claim)
        consumer = self.consumer_of.get(name) if type(name) is str else None
        if consumer is None:
            return refuse("invalid_credentials", f"the token's {self.key_claim!r} claim names no known consumer")
        return consumer, r

    def check_claims(self, claims: dict[str, Any], now: float) -> float | Answer:
        """The wall-clock time until which the token stays valid (for the cache), or the refusal."""
        for name in self.required:
            if claims.get(name) is None:
                return refuse("invalid_claims", f"the token has no {name!r} claim")
        leeway = self.leeway
        until = now + CACHE_TTL
        exp = claims.get("exp")
        if exp is not None:
            if not _number(exp):
                return refuse("invalid_claims", "the token's 'exp' claim is not a number")
            if exp <= now - leeway:
                return refuse("token_expired", "the token has expired")
            until = min(until, exp + leeway)
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _number(nbf):
                return refuse("invalid_claims", "the token's 'nbf' claim is not a number")
            if nbf > now + leeway:
                return refuse("token_not_yet_valid", "the token is not valid yet")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return refuse("invalid_claims", "the token's issuer is not the one this API expects")
        if self.audience is not None:
            aud = claims.get("aud")
            if not (aud == self.audience or (type(aud) is list and self.audience in aud)):
                return refuse("invalid_claims", "the token's audience is not this API")
        return until


def verify_signature(p: Parsed, key: Any) -> bool:
    try:
        return _ALGS[p.alg].verify(p.signing_input, key, p.signature)
    except (ValueError, TypeError):  # a signature of the wrong shape for the key
        return False


def prepare_credential(cred: dict[str, Any]) -> tuple[str, Any]:
    """(algorithm, key object) of one consumer credential; ValueError when it is unusable."""
    alg = cred.get("algorithm") or "HS256"
    if alg not in _ALGS:
        raise ValueError(f"algorithm {alg!r} is not supported")
    material = cred.get("secret") if alg.startswith("HS") else cred.get("public_key")
    if not isinstance(material, str) or not material:
        raise ValueError(f"{alg} needs a {'secret' if alg.startswith('HS') else 'public_key'}")
    try:
        key = _ALGS[alg].prepare_key(material)
    except (PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"{alg} key: {exc}") from exc
    if isinstance(key, (RSAPrivateKey, EllipticCurvePrivateKey)):  # verification needs only the public half
        key = key.public_key()
    return alg, key


@builder("jwt")
def build(policy: JwtPolicy, ctx: Context) -> Step:
    unknown = [a for a in policy.algorithms if a not in _ALGS]
    if unknown:  # (the schema's algorithms are PyJWT's: only a PyJWT without them gets here)
        raise ValueError(f"algorithms {unknown} are not supported by this gateway")
    allowed = frozenset(policy.algorithms)
    jwks_url = policy.jwks_url
    jwks: Jwks | None = None
    creds: dict[str, tuple[str, str, Any]] = {}
    consumer_of: dict[str, str] = {}
    if jwks_url:
        jwks = ctx.services.state(("jwt-jwks", jwks_url), lambda: Jwks(jwks_url))
        consumer_of = {key: consumer for key, (consumer, _) in ctx.consumers.jwt.items()}
    else:
        for key, (consumer, cred) in ctx.consumers.jwt.items():
            try:
                alg, prepared = prepare_credential(cred)
            except ValueError as exc:
                log.warning("project %r: jwt credential %r of consumer %r skipped: %s",
                            ctx.project.get("name"), key, consumer, exc)
                continue
            if alg in allowed:
                creds[key] = (consumer, alg, prepared)
    return JwtStep(policy.header.encode("latin-1"), allowed, policy.key_claim, policy.issuer, policy.audience,
                   tuple(policy.required_claims), float(policy.leeway), policy.hide_credentials, creds,
                   consumer_of, jwks, float(policy.jwks_cache_seconds))


__all__ = ["JwtStep", "Jwks", "parse", "parse_jwks", "prepare_credential"]
