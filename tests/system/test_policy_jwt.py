"""The jwt policy as users run it: a consumer with jwt credentials and a project with a jwt
policy created through the admin API of a real AMS, deployed to a real AGS (both started
through the CLI), and HS256 / RS256 tokens sent through the gateway to an echo backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.harness import CliCluster, echo_backend, logged_requests, wait_for

SECRET = "system-test-secret-0123456789abcdef"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(iss: str, key: Any, alg: str, **claims: Any) -> str:
    return pyjwt.encode({"iss": iss, "exp": int(time.time()) + 300, **claims}, key, algorithm=alg)


def test_hs256_and_rs256_through_real_processes(tmp_path: Path) -> None:
    log = tmp_path / "backend.jsonl"
    with echo_backend(log, "jwt-backend") as (url, _), CliCluster(tmp_path / "cluster") as c:
        c.start("AMS")
        c.start("AGS")
        r = c.api.post("/api/v1/consumers", json={"name": "acme", "credentials": {"jwt": [
            {"key": "acme-hs", "algorithm": "HS256", "secret": SECRET},
            {"key": "acme-rs", "algorithm": "RS256", "public_key": PUBLIC_PEM}]}})
        assert r.status_code == 201, r.text
        assert SECRET not in r.text  # the secret is never shown back
        r = c.api.post("/api/v1/projects", json={
            "name": "secure", "context_path": "/secure", "targets": [{"url": url + "/v1"}],
            "policies": [{"type": "jwt", "algorithms": ["HS256", "RS256"], "hide_credentials": True}]})
        assert r.status_code == 201, r.text
        r = c.api.post("/api/v1/projects/secure/deploy", json={"environment": "default"})
        assert r.status_code == 202, r.text
        wait_for(lambda: c.gateway_get("/secure/x").status_code == 401, 10, "the jwt project deployed")

        def get(tok: str | None, **headers: str) -> tuple[int, dict[str, Any], Any]:
            if tok is not None:
                headers["Authorization"] = "Bearer " + tok
            resp = c.gateway_get("/secure/pets/1", headers=headers)
            return resp.status_code, dict(resp.headers), resp.json()

        status, _, body = get(token("acme-hs", SECRET, "HS256"), **{"X-Consumer-Name": "someone-else"})
        assert status == 200, body
        seen = {k.lower(): v for k, v in body["headers"]}
        assert body["path"] == "/v1/pets/1" and seen["x-consumer-name"] == "acme"
        assert "authorization" not in seen  # hide_credentials
        status, _, body = get(token("acme-rs", RSA_KEY, "RS256"))
        assert status == 200, body
        assert ("X-Consumer-Name", "acme") in [tuple(h) for h in body["headers"]]
        assert len(logged_requests(log)) == 2

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused = [
            (None, 401, "missing_credentials"),
            (token("acme-hs", SECRET, "HS256", exp=int(time.time()) - 30), 401, "token_expired"),
            (token("acme-rs", RSA_KEY, "RS256", exp=int(time.time()) - 30), 401, "token_expired"),
            (token("acme-hs", "not-the-secret-0123456789abcdefgh", "HS256"), 401, "invalid_credentials"),
            (token("acme-rs", other, "RS256"), 401, "invalid_credentials"),
            (token("acme-rs", SECRET, "HS256"), 401, "invalid_credentials"),
            (token("stranger", SECRET, "HS256"), 401, "invalid_credentials"),
        ]
        for tok, want_status, code in refused:
            status, headers, body = get(tok)
            assert (status, body["code"]) == (want_status, code), (tok, body)
            assert headers["www-authenticate"].startswith("Bearer")
            assert body["request_id"] == headers["x-request-id"]
        # one more allowed request after the refused ones: the backend logs each request before it
        # answers, so had any refused one been forwarded it would be in the log before this one
        assert get(token("acme-hs", SECRET, "HS256", jti="last"))[0] == 200
        logged = logged_requests(log)
        assert len(logged) == 3 and logged[-1]["path"] == "/v1/pets/1", logged
