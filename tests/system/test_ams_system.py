"""A real AMS process through the CLI (`tandem server -mode AMS -profile server1
-nobackground` on a fresh home), driven by the `tandem api` CLI with --json:
CRUD, deploy, consumers and keys, export/import, OpenAPI import, bad input and
exit codes, the admin token file, and client failover from a refused URL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tandem.client import Client

PETSTORE = """openapi: 3.0.3
info: {title: Petstore, version: 1.0.0}
servers: [{url: "http://127.0.0.1:9/v1"}]
paths:
  /pets: {get: {operationId: listPets}, post: {operationId: createPet}}
  /pets/{id}: {get: {operationId: getPet}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tandem.cli.main", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def api(home: Path, *args: str) -> Any:
    r = cli(home, "api", "--json", *args)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return json.loads(r.stdout)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@dataclass
class Ams:
    home: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def token_file(self) -> Path:
        return self.home / "profiles" / "server1" / "AMS" / "data" / "admin.token"


@pytest.fixture
def ams(tmp_path: Path) -> Iterator[Ams]:
    home = tmp_path / "home"
    assert cli(tmp_path, "home", "init", str(home)).returncode == 0
    client_port, ha_port = free_port(), free_port()
    r = cli(home, "profile", "set", "server1/AMS", f"server.ClientPort={client_port}", f"server.HAPort={ha_port}")
    assert r.returncode == 0, r.stderr
    log = tmp_path / "ams.log"
    env = {k: v for k, v in os.environ.items() if k not in ("TANDEM_ADMIN_TOKEN", "TANDEM_TOKEN")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tandem.cli.main", "--home", str(home), "server",
                                 "-mode", "AMS", "-profile", "server1", "-nobackground"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{ha_port}/ha/active") == 200 or proc.poll() is not None,
                 20, "AMS active")
        assert proc.poll() is None, log.read_text()
        yield Ams(home, f"http://127.0.0.1:{client_port}", proc, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_crud_deploy_consumers_and_export_through_the_cli(ams: Ams, tmp_path: Path) -> None:
    home = ams.home
    assert api(home, "projects", "list") == [], "the CLI finds the URL and admin.token from the profile"
    token = ams.token_file.read_text().strip()
    assert (ams.token_file.stat().st_mode & 0o777) == 0o600
    project = tmp_path / "pets.yaml"
    project.write_text("name: pets\ncontext_path: /pets\ntargets: [{url: 'http://127.0.0.1:9/v1'}]\n"
                       "policies: [{type: api-key}, {type: rate-limit, limit: 100, window: 60}]\n")
    created = api(home, "projects", "create", str(project))
    assert created["name"] == "pets" and created["policies"][1]["limit"] == 100
    assert api(home, "projects", "show", "pets") == created
    project.write_text(project.read_text() + "version: '2.0'\n")
    assert api(home, "projects", "update", "pets", str(project))["version"] == "2.0"
    job = api(home, "deploy", "pets", "--env", "prod", "--wait", "10")
    assert job["status"] == "deployed" and job["environment"] == "prod" and job["revision"] == 1
    assert api(home, "deployments", "show", job["id"])["status"] == "deployed"
    assert api(home, "consumers", "create", "acme", "--description", "ACME")["name"] == "acme"
    key = api(home, "keys", "issue", "acme")
    assert key["key"].startswith("tk_")
    assert [k["id"] for k in api(home, "consumers", "show", "acme")["keys"]] == [key["id"]]
    assert [c["name"] for c in api(home, "consumers", "list")] == ["acme"]
    imported = api(home, "import-openapi", _write(tmp_path / "petstore.yaml", PETSTORE))
    assert imported["name"] == "petstore" and len(imported["resources"]) == 3
    assert api(home, "gateways") == []
    # export -> import: the configuration is unchanged
    exported = tmp_path / "export.json"
    api(home, "export", "--output", str(exported))
    assert api(home, "import", str(exported))["projects"] == 2
    after = api(home, "export")
    first = json.loads(exported.read_text())
    assert after["projects"] == first["projects"] and after["consumers"] == first["consumers"]
    # a document that leaves a project out removes it only with --prune
    smaller = _write(tmp_path / "smaller.json", json.dumps(
        {**first, "projects": [p for p in first["projects"] if p["name"] != "petstore"]}))
    r = cli(home, "api", "import", smaller)
    assert r.returncode == 1 and "HTTP 409" in r.stderr and "petstore" in r.stderr, r.stderr
    assert api(home, "import", smaller, "--prune")["projects"] == 1
    assert [p["name"] for p in api(home, "projects", "list")] == ["pets"]
    assert api(home, "import", str(exported))["projects"] == 2  # and back
    # a deployed project cannot be deleted: HTTP error -> one line, exit 1
    r = cli(home, "api", "projects", "delete", "pets")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "undeploy it first" in r.stderr
    assert api(home, "undeploy", "pets", "--env", "prod", "--wait", "10")["status"] == "deployed"
    assert cli(home, "api", "projects", "delete", "pets").returncode == 0
    r = cli(home, "api", "projects", "show", "pets")
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    assert cli(home, "api", "keys", "revoke", "acme", key["id"]).returncode == 0
    # human output is a table
    r = cli(home, "api", "projects", "list")
    assert r.returncode == 0 and r.stdout.split()[:3] == ["NAME", "VERSION", "CONTEXT_PATH"]
    assert token not in ams.log.read_text(), "the clear admin token must never reach the log"


def test_bad_input_exit_codes(ams: Ams, tmp_path: Path) -> None:
    home = ams.home
    bad = _write(tmp_path / "bad.json", json.dumps({"name": "x", "context_path": "/x",
                                                    "targets": [{"url": "http://"}]}))
    r = cli(home, "api", "projects", "create", bad)
    assert r.returncode == 1 and "HTTP 422" in r.stderr and "targets[0].url" in r.stderr
    r = cli(home, "api", "projects", "create", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = cli(home, "api", "projects", "create", _write(tmp_path / "garbage.yaml", "a: [\n"))
    assert r.returncode == 2 and "neither JSON nor YAML" in r.stderr
    r = cli(home, "api", "--token", "wrong", "projects", "list")
    assert r.returncode == 1 and "HTTP 401" in r.stderr
    assert api(home, "projects", "list") == []


def test_client_fails_over_from_a_refused_url_within_one_second(ams: Ams) -> None:
    api(ams.home, "projects", "list")  # the token file exists once the AMS served a request
    token = ams.token_file.read_text().strip()
    refused = f"http://127.0.0.1:{free_port()}"
    with Client(f"{refused};{ams.url}", token=token) as client:
        t0 = time.monotonic()
        assert client.get("/api/v1/projects") == []
        elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"failover took {elapsed:.3f} s"
    r = cli(ams.home, "api", "--json", "--url", f"{refused};{ams.url}", "consumers", "list")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
