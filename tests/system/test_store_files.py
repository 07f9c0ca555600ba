"""The store at rest is its owner's only: after a real AMS start and a write, the
store folder is 0700 and every file in it (the SQLite database, its -wal and
-shm files, admin.token) is 0600. The database holds JWT HMAC secrets in clear."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tandem.config import init_home
from tests.support.harness import Home, fresh_ports, http_get, wait_for


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    path = tmp_path / "home"
    init_home(path)
    fresh_ports(path)
    h = Home(path)
    try:
        yield h
    finally:
        h.cleanup()


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_store_folder_and_files_are_private_after_start_and_a_write(home: Home) -> None:
    old_umask = os.umask(0o022)  # the usual umask: files would be 0644 unless the store sets them
    try:
        server = home.server("server1/AMS").start()
    finally:
        os.umask(old_umask)
    wait_for(lambda: server.active_code() == 200 or (server.proc is not None and server.proc.poll() is not None),
             20, "AMS active")
    assert server.active_code() == 200, server.output()
    url = f"http://127.0.0.1:{server.client_port}"
    data = home.path / "profiles" / "server1" / "AMS" / "data"
    wait_for(lambda: http_get(f"{url}/api/v1/health")[0] == 200 and (data / "admin.token").exists(), 10,
             "admin token written")
    token = (data / "admin.token").read_text().strip()
    secret = "hs-secret-0123456789abcdef"
    r = httpx.post(f"{url}/api/v1/consumers", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                   json={"name": "acme", "credentials": {"jwt": [{"key": "acme-iss", "secret": secret}]}})
    assert r.status_code == 201, r.text
    files = sorted(p for p in data.iterdir() if p.is_file())
    names = [p.name for p in files]
    assert {"store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm", "admin.token"} <= set(names), names
    assert _mode(data) == 0o700, oct(_mode(data))
    for p in files:
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    # the secret is in the store files (the gateway needs it in clear): only the owner may read them
    assert any(secret.encode() in p.read_bytes() for p in files if p.name.startswith("store.sqlite3"))
