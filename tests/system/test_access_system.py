"""[access] through real processes: a replicated AMS pair started through the CLI.

- Users are made with `tandem api users create`; their roles hold over real sockets.
- An operator writes consumers (each request with its own `X-Request-Id`) while
  the active is killed with SIGKILL: the new active's audit trail holds an
  `accepted` entry for every write that got a 201, and the consumer itself.
- No secret made in this test (user tokens, an API key, a gateway token, a
  basic-auth password, a JWT secret, a token that was refused) appears in any
  file the servers wrote under the home (logs, LockFiles, profiles; not the
  stores, which hold what the gateways need, nor the admin.token files), in
  `/metrics`, in the HA status or in the audit trail.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.harness import Home, Server, http_get, run_cli, wait_for

PAIR = "haprofile1"
TOKEN = "test-admin-token-access-" + secrets.token_hex(8)
ENV = {"TANDEM_ADMIN_TOKEN": TOKEN}


def url(srv: Server) -> str:
    return str(srv.prof.client_url)


def hdr(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


class OperatorWriter(threading.Thread):
    """Creates consumers as one user, failing over between the two URLs; request id = consumer name."""

    def __init__(self, urls: list[str], token: str) -> None:
        super().__init__(daemon=True)
        self.urls, self.token = urls, token
        self.acked: list[str] = []
        self.other: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(3.0, connect=0.3)) as c:
            for i in range(5000):
                if self.halt.is_set():
                    return
                name = f"w{i:05d}"
                deadline = time.monotonic() + 20
                attempt = 0
                while time.monotonic() < deadline and not self.halt.is_set():
                    base = self.urls[attempt % 2]
                    attempt += 1
                    try:
                        r = c.post(f"{base}/api/v1/consumers", json={"name": name},
                                   headers=hdr(self.token, **{"X-Request-Id": f"{name}-{attempt}"}))
                    except httpx.ConnectError:
                        time.sleep(0.02)  # refused: nothing happened, try the peer
                        continue
                    except httpx.HTTPError:
                        break  # sent, no answer: neither acknowledged nor refused
                    if r.status_code == 201:
                        self.acked.append(f"{name}-{attempt}")
                    elif r.status_code == 503:
                        time.sleep(0.02)
                        continue
                    elif r.status_code != 409:  # 409: a retry of one that landed unanswered
                        self.other.append(f"{name}:{r.status_code}")
                    break

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def cli_json(home: Home, *args: str) -> Any:
    proc = run_cli(home.path, "api", *args, "--json", "--profile", PAIR, "--token", TOKEN)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def audit_ids(c: httpx.Client, srv: Server, actor: str) -> set[str]:
    ids: set[str] = set()
    before: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"actor": actor, "action": "consumer.create", "limit": 1000}
        if before:
            params["before"] = before
        r = c.get(f"{url(srv)}/api/v1/audit", params=params, headers=hdr(TOKEN))
        assert r.status_code == 200, r.text
        page = r.json()
        ids |= {e["request_id"] for e in page["entries"] if e["status"] == "accepted"}
        before = page["next_before"]
        if before is None:
            return ids
    raise AssertionError("audit paging did not end")


def test_roles_audit_across_a_kill9_failover_and_no_secret_anywhere(home: Home) -> None:
    p, s = home.start_pair(PAIR, "AMS", env=ENV)
    ops = cli_json(home, "users", "create", "ops", "--role", "operator", "--expires-in", "30")
    view = cli_json(home, "users", "create", "view", "--role", "viewer")
    assert ops["role"] == "operator" and ops["tokens"][0]["expires_at"] is not None
    ops_token, view_token = ops["token"], view["token"]
    listed = cli_json(home, "users", "list")
    assert [u["name"] for u in listed] == ["admin", "ops", "view"]
    assert ops_token not in json.dumps(listed)
    refused_token = "tu_" + secrets.token_urlsafe(32)  # never issued: its 401 must not be logged either
    password, jwt_secret = "pw-" + secrets.token_hex(12), "jwt-" + secrets.token_hex(16)
    with httpx.Client(timeout=10) as c:
        base = url(p)
        assert c.get(f"{base}/api/v1/whoami", headers=hdr(refused_token)).status_code == 401
        r = c.post(f"{base}/api/v1/consumers", json={"name": "nope"}, headers=hdr(view_token))
        assert r.status_code == 403 and r.json()["role"] == "operator", r.text
        r = c.post(f"{base}/api/v1/users", json={"name": "x", "role": "admin"}, headers=hdr(ops_token))
        assert r.status_code == 403 and r.json()["role"] == "admin", r.text
        r = c.post(f"{base}/api/v1/consumers", headers=hdr(ops_token), json={
            "name": "creds", "credentials": {"basic_auth": [{"username": "u1", "password": password}],
                                             "jwt": [{"key": "iss1", "algorithm": "HS256", "secret": jwt_secret}]}})
        assert r.status_code == 201, r.text
        api_key = c.post(f"{base}/api/v1/consumers/creds/keys", headers=hdr(ops_token)).json()["key"]
        gw_token = c.post(f"{base}/api/v1/gateway-tokens", json={"name": "g1"}, headers=hdr(TOKEN)).json()["token"]
        # a secret pasted into a path: refused, and redacted in the entry
        c.delete(f"{base}/api/v1/consumers/{api_key}", headers=hdr(ops_token))

        writer = OperatorWriter([url(p), url(s)], ops_token)
        writer.start()
        try:
            wait_for(lambda: len(writer.acked) >= 20, 20, "writes flowing on the first active")
            p.kill9()
            s.wait_state("Standalone", "Active", timeout=10)
            at_takeover = len(writer.acked)
            wait_for(lambda: len(writer.acked) >= at_takeover + 20, 20, "writes flowing on the new active")
        finally:
            writer.stop()
        assert not writer.other, writer.other[:5]
        acked = set(writer.acked)
        print(f"acknowledged writes: {len(acked)} ({at_takeover} before the kill)")
        missing = acked - audit_ids(c, s, "ops")
        assert not missing, f"{len(missing)} acknowledged writes without an audit entry: {sorted(missing)[:10]}"
        names = {x["name"] for x in c.get(f"{url(s)}/api/v1/consumers", headers=hdr(TOKEN)).json()}
        assert {a.rsplit("-", 1)[0] for a in acked} <= names
        # the roles and tokens replicated: the viewer is still a viewer on the new active
        assert c.post(f"{url(s)}/api/v1/consumers", json={"name": "n2"}, headers=hdr(view_token)).status_code == 403
        assert c.get(f"{url(s)}/api/v1/whoami", headers=hdr(ops_token)).json()["role"] == "operator"
        trail = c.get(f"{url(s)}/api/v1/export", params={"audit": "true"}, headers=hdr(TOKEN)).json()["audit"]
        assert any(e["target"].endswith("/[redacted]") for e in trail), "the pasted key was not redacted"

        p.start(env=ENV)
        p.wait_state("Passive", timeout=30)
        wait_for(lambda: len(home.in_sync(PAIR, "AMS")) == 2, 20, "returning server in sync")
        exposed = [f"{srv.ha}/metrics" for srv in (p, s)] + [f"{srv.ha}/ha/status" for srv in (p, s)]
        texts = {u: c.get(u).text for u in exposed}
    texts["audit"] = json.dumps(trail)
    for path in sorted(home.path.rglob("*")):
        if path.is_file() and not _store_or_token_file(path):
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 10
    for secret, what in ((ops_token, "operator token"), (view_token, "viewer token"), (refused_token, "bad token"),
                         (api_key, "API key"), (gw_token, "gateway token"), (password, "password"),
                         (jwt_secret, "JWT secret")):
        found = [where for where, text in texts.items() if secret in text]
        assert not found, f"the {what} appears in {found}"
    leaked_admin = [w for w, t in texts.items() if TOKEN in t]
    assert not leaked_admin, f"the admin token appears in {leaked_admin}"
    code, _ = http_get(f"{s.ha}/ha/status")
    assert code == 200


def _store_or_token_file(path: Path) -> bool:
    """The stores (they hold credentials the gateways need) and admin.token (the admin token by design)."""
    return path.name == "admin.token" or ".sqlite3" in path.name
