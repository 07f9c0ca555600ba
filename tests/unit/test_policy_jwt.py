"""The jwt policy's token checking, without sockets: build the step, check tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from types import SimpleNamespace
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tandem.ags.policies import Answer, Consumers, Services, compile_chain
from tandem.ags.policies.chain import Context
from tandem.ags.policies.jwt import JwtStep, build, parse, parse_jwks, prepare_credential

SECRET = "s3cret-" * 9 + "0"  # 64 bytes: long enough for HS512
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> str:
    data: bytes = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return data.decode()


CONSUMERS = [
    {"name": "acme", "credentials": {"jwt": [{"key": "acme-hs", "algorithm": "HS256", "secret": SECRET}]}},
    {"name": "globex", "credentials": {"jwt": [{"key": "globex-rs", "algorithm": "RS256", "public_key": pem(RSA_KEY)}]}},
    {"name": "initech", "credentials": {"jwt": [{"key": "initech-es", "algorithm": "ES256",
                                                 "public_key": pem(EC_KEY)}]}},
    {"name": "hooli", "credentials": {"jwt": [{"key": "hooli-512", "algorithm": "HS512", "secret": SECRET}]}},
    {"name": "broken", "credentials": {"jwt": [{"key": "broken-rs", "algorithm": "RS256",
                                                "public_key": "-----BEGIN PUBLIC KEY-----\nnope\n"}]}},
]


def step(consumers: list[dict[str, Any]] | None = None, **policy: Any) -> JwtStep:
    doc = {"type": "jwt", **policy}
    project = {"name": "p", "policies": [doc]}
    s = build(doc, Context(project, Consumers(CONSUMERS if consumers is None else consumers), Services(), 0))
    assert isinstance(s, JwtStep)
    return s


def hs(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return pyjwt.encode(claims, secret, algorithm=alg, headers=headers or None)


def claims(iss: str = "acme-hs", **more: Any) -> dict[str, Any]:
    return {"iss": iss, "exp": int(time.time()) + 300, **more}


def exchange(value: str | None, header: bytes = b"Authorization") -> Any:
    headers = [(b"Host", b"api.test")]
    if value is not None:
        headers.append((header, value.encode()))
    hparts = [x for name, v in headers if name.lower() != b"host" for x in (name, b": ", v, b"\r\n")]
    return SimpleNamespace(req_headers=headers, edit=None, consumer=None, resp_extra=None,
                           hparts=hparts + [b"X-Forwarded-For: ...\r\n\r\n"], nhead=len(hparts))


def upstream(ex: Any) -> list[bytes]:
    """The header names the backend would receive."""
    return [ex.hparts[i].lower() for i in range(0, ex.nhead, 4)]


def run(s: JwtStep, token: str | None, bearer: bool = True, header: bytes = b"Authorization") -> tuple[Any, Any]:
    ex = exchange(None if token is None else ("Bearer " + token if bearer else token), header)
    return s.request(ex), ex


def refused(s: JwtStep, token: str | None, code: str, status: int = 401, **kw: Any) -> Answer:
    r, ex = run(s, token, **kw)
    assert isinstance(r, Answer), r
    assert (r.status, r.code) == (status, code), r.message
    assert ex.consumer is None and ex.edit is None and b"x-consumer-name" not in upstream(ex)
    return r


def admitted(s: JwtStep, token: str, consumer: str, **kw: Any) -> Any:
    r, ex = run(s, token, **kw)
    assert r is None, getattr(r, "message", r)
    assert ex.consumer == consumer
    i = upstream(ex).index(b"x-consumer-name") * 4
    assert ex.hparts[i:i + 4] == [b"X-Consumer-Name", b": ", consumer.encode(), b"\r\n"]
    return ex


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed by hand with any key bytes (PyJWT refuses a PEM as an HMAC secret)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def test_hs_rs_es_tokens_identify_their_consumers() -> None:
    s = step(algorithms=["HS256", "RS256", "ES256"])
    admitted(s, hs(claims()), "acme")
    admitted(s, pyjwt.encode(claims("globex-rs"), RSA_KEY, algorithm="RS256"), "globex")
    admitted(s, pyjwt.encode(claims("initech-es"), EC_KEY, algorithm="ES256"), "initech")
    ex = admitted(s, hs(claims()), "acme")
    assert b"authorization" in upstream(ex)  # the token goes upstream unless hidden
    ex = admitted(step(hide_credentials=True), hs(claims()), "acme")
    assert b"authorization" not in upstream(ex)  # hidden


def test_missing_and_malformed_tokens() -> None:
    s = step()
    r = refused(s, None, "missing_credentials")
    assert r.headers == [b"WWW-Authenticate: Bearer\r\n"]
    ex = exchange("Basic YWxhZGRpbjpvcGVuc2VzYW1l")
    assert isinstance(a := s.request(ex), Answer) and a.code == "missing_credentials"
    refused(s, "", "missing_credentials")
    r = refused(s, "not-a-jwt", "invalid_credentials")
    assert r.headers == [b'WWW-Authenticate: Bearer error="invalid_token"\r\n']
    refused(s, "a.b.c", "invalid_credentials")
    refused(s, hs(claims()), "missing_credentials", bearer=False)  # Authorization needs the Bearer scheme
    admitted(s, hs(claims()), "acme", bearer=True)
    # lower-case scheme and extra spaces are fine
    ex = exchange("bearer   " + hs(claims()) + " ")
    assert s.request(ex) is None and ex.consumer == "acme"


def test_another_header_takes_the_raw_token_or_the_bearer_form() -> None:
    s = step(header="X-Token")
    admitted(s, hs(claims()), "acme", bearer=False, header=b"x-token")
    admitted(s, hs(claims()), "acme", bearer=True, header=b"X-TOKEN")
    refused(s, hs(claims()), "missing_credentials", header=b"Authorization")
    ex = admitted(step(header="X-Token", hide_credentials=True), hs(claims()), "acme", bearer=False, header=b"X-Token")
    assert b"x-token" not in upstream(ex)  # hidden


def test_bad_signatures_unknown_keys_and_wrong_algorithms() -> None:
    s = step(algorithms=["HS256", "RS256", "ES256"])
    refused(s, hs(claims(), secret="another-secret-another-secret-00"), "invalid_credentials")
    good = hs(claims())
    h, p, sig = good.split(".")
    tampered = b64(json.dumps(claims(admin=True)).encode())
    refused(s, f"{h}.{tampered}.{sig}", "invalid_credentials")
    refused(s, hs(claims("nobody")), "invalid_credentials")
    refused(s, hs({"exp": int(time.time()) + 60}), "invalid_credentials")  # no key claim at all
    refused(s, forge({"alg": "HS256"}, claims() | {"iss": ["acme-hs"]}, SECRET.encode()), "invalid_credentials")
    admitted(s, forge({"alg": "HS256"}, claims(), SECRET.encode()), "acme")  # (the hand-made signer works)
    # an RS256 token signed by a key that is not the credential's
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(s, pyjwt.encode(claims("globex-rs"), other, algorithm="RS256"), "invalid_credentials")
    # algorithm confusion: HS256 "signed" with the consumer's RSA public key as the secret
    refused(s, forge({"alg": "HS256", "typ": "JWT"}, claims("globex-rs"), pem(RSA_KEY).encode()),
            "invalid_credentials")
    # the credential's algorithm is not allowed by this policy (HS512), nor is "none"
    refused(s, hs(claims("hooli-512"), alg="HS512"), "invalid_credentials")
    admitted(step(algorithms=["HS512"]), hs(claims("hooli-512"), alg="HS512"), "hooli")
    refused(s, forge({"alg": "none"}, claims(), b"").rsplit(".", 1)[0] + ".", "invalid_credentials")
    # a token whose alg is allowed but is not its credential's (same secret, weaker hash)
    both = step(algorithms=["HS256", "HS512"])
    admitted(both, hs(claims("hooli-512"), alg="HS512"), "hooli")
    refused(both, hs(claims("hooli-512"), alg="HS256"), "invalid_credentials")
    # an ES256 signature of the wrong length, and JWS extensions we do not implement
    h, p, _ = pyjwt.encode(claims("initech-es"), EC_KEY, algorithm="ES256").split(".")
    refused(s, f"{h}.{p}.{b64(b'x' * 10)}", "invalid_credentials")
    refused(s, hs(claims(), crit=["exp"]), "invalid_credentials")
    # the credential with an unusable key was skipped; the policy still works for the others
    refused(s, pyjwt.encode(claims("broken-rs"), RSA_KEY, algorithm="RS256"), "invalid_credentials")


def test_time_claims_with_leeway() -> None:
    s = step()
    now = int(time.time())
    refused(s, hs(claims(exp=now - 5)), "token_expired")
    refused(s, hs(claims(nbf=now + 30)), "token_not_yet_valid")
    lenient = step(leeway=60)
    admitted(lenient, hs(claims(exp=now - 5)), "acme")
    admitted(lenient, hs(claims(nbf=now + 30)), "acme")
    refused(lenient, hs(claims(exp=now - 120)), "token_expired")
    refused(s, hs(claims(exp="tomorrow")), "invalid_claims")
    refused(s, hs(claims(nbf=None, exp=now + 60) | {"nbf": "soon"}), "invalid_claims")
    # an expired token with a bad signature says nothing about its expiry
    refused(s, hs(claims(exp=now - 5), secret="x" * 32), "invalid_credentials")


def test_required_claims_issuer_and_audience() -> None:
    s = step()
    refused(s, hs({"iss": "acme-hs"}), "invalid_claims")  # exp is required by default
    admitted(step(required_claims=[]), hs({"iss": "acme-hs"}), "acme")
    refused(step(required_claims=["exp", "sub"]), hs(claims()), "invalid_claims")
    admitted(step(required_claims=["exp", "sub"]), hs(claims(sub="u1")), "acme")
    strict = step(issuer="acme-hs", audience="pets")
    admitted(strict, hs(claims(aud="pets")), "acme")
    admitted(strict, hs(claims(aud=["other", "pets"])), "acme")
    refused(strict, hs(claims(aud="other")), "invalid_claims")
    refused(strict, hs(claims()), "invalid_claims")
    refused(step(issuer="https://idp"), hs(claims()), "invalid_claims")
    # no audience configured: a token with one is fine
    admitted(s, hs(claims(aud="anything")), "acme")


def test_verified_tokens_are_cached_until_they_expire() -> None:
    s = step()
    exp = int(time.time()) + 30
    token = hs(claims(exp=exp))
    admitted(s, token, "acme")
    consumer, until = s.verified[token.encode()]
    assert consumer == "acme" and until <= exp
    admitted(s, token, "acme")  # from the cache
    assert len(s.verified) == 1
    # an entry past its time is checked again, not trusted
    old = hs(claims(exp=int(time.time()) - 1))
    s.verified[old.encode()] = ("acme", time.time() - 0.5)
    refused(s, old, "token_expired")
    assert old.encode() not in s.verified
    refused(s, hs(claims(), secret="y" * 32), "invalid_credentials")
    assert len(s.verified) == 1  # refusals are not cached


def test_builder_refuses_bad_policies_and_the_chain_fails_closed() -> None:
    for bad in ({"algorithms": ["HS256", "PS256"]}, {"algorithms": ["none"]}, {"leeway": -1},
                {"jwks_url": "ftp://keys"}, {"jwks_cache_seconds": 0}, {"required_claims": [1]}):
        with pytest.raises(ValueError):
            step(**bad)
        project = {"name": "p", "policies": [{"type": "jwt", **bad}]}
        chain, refusal = compile_chain(project, Consumers(CONSUMERS), Services())
        assert chain is None and refusal and "jwt" in refusal


def test_prepare_credential() -> None:
    assert prepare_credential({"algorithm": "HS256", "secret": SECRET}) == ("HS256", SECRET.encode())
    priv = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    alg, key = prepare_credential({"algorithm": "RS256", "public_key": priv})
    assert alg == "RS256" and isinstance(key, rsa.RSAPublicKey)  # only the public half is kept
    for bad in ({"algorithm": "RS256"}, {"algorithm": "ES256", "public_key": pem(RSA_KEY)},
                {"algorithm": "HS256", "secret": pem(RSA_KEY)}, {"algorithm": "PS256", "public_key": "x"},
                {"algorithm": "ES384", "public_key": pem(EC_KEY)}):
        with pytest.raises(ValueError):
            prepare_credential(bad)


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        d = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        d = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**d, "kid": kid, **extra}


def test_parse_jwks_and_check_tokens_against_its_keys() -> None:
    doc = {"keys": [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1"), jwk(RSA_KEY, "enc", use="enc"),
                    {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
                    {"kty": "RSA", "kid": "junk", "n": "!!", "e": "AQAB"}, "not a key"]}
    keys = parse_jwks(json.dumps(doc).encode())
    assert sorted(k for k in keys if k) == ["e1", "r1"]
    assert keys["r1"].algs == {"RS256", "RS384", "RS512"} and keys["e1"].algs == {"ES256"}
    with pytest.raises(ValueError):
        parse_jwks(b'{"no": "keys"}')
    with pytest.raises(ValueError):
        parse_jwks(b"<html>")

    s = step(jwks_url="http://127.0.0.1:1/jwks", algorithms=["RS256", "ES256"],
             consumers=[{"name": "acme", "credentials": {"jwt": [{"key": "idp-acme"}]}}])
    now = time.time()

    def check(token: str, kid: str) -> Any:
        p = parse(token.encode())
        assert not isinstance(p, Answer)
        return s.check_jwks(p, keys[kid], now)

    ok = check(pyjwt.encode(claims("idp-acme"), RSA_KEY, algorithm="RS256", headers={"kid": "r1"}), "r1")
    assert ok[0] == "acme"
    ok = check(pyjwt.encode(claims("idp-acme"), EC_KEY, algorithm="ES256", headers={"kid": "e1"}), "e1")
    assert ok[0] == "acme"
    bad = check(pyjwt.encode(claims("nobody"), RSA_KEY, algorithm="RS256", headers={"kid": "r1"}), "r1")
    assert bad.code == "invalid_credentials"  # a good signature, but no consumer with that key
    bad = check(pyjwt.encode(claims("idp-acme"), RSA_KEY, algorithm="RS384", headers={"kid": "r1"}), "e1")
    assert bad.code == "invalid_credentials"  # an RSA algorithm against an EC key
    bad = check(pyjwt.encode(claims("idp-acme", exp=int(now) - 10), RSA_KEY, algorithm="RS256"), "r1")
    assert bad.code == "token_expired"
