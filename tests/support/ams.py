"""An AMS inside the test process, on a real store: for AMS tests and for the
gateway team's tests that need an AMS to pull configuration from.

    with InProcessAms(tmp_path) as ams:          # FastAPI TestClient, no socket
        ams.client.post("/api/v1/projects", json=..., headers=ams.headers)

    with InProcessAms(tmp_path) as ams, ams.serve() as url:   # uvicorn on a free port
        httpx.get(url + "/api/v1/projects", headers=ams.headers)

Nothing is faked: a real sqlite Store, the real app, real auth; the app runs in a
`HostStandIn` (tests/support/host.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tandem.store import Store
from tests.support.harness import free_port
from tests.support.host import HostStandIn


def bookkeeping(op: Any) -> bool:
    """An audit entry, or a token's last-use stamp."""
    from tandem.ams.audit import NS_AUDIT

    if op.ns == NS_AUDIT:
        return True
    return op.ns in ("ams.settings", "ams.user-tokens") and isinstance(op.value, dict) \
        and op.value.get("last_used_at") is not None


class InProcessAms:
    def __init__(self, folder: Path, name: str = "test") -> None:
        self.server = HostStandIn.for_ams(folder, name)
        from tandem.ams.app import create_app

        self.app = create_app(self.server)
        self._client: Any = None

    @property
    def store(self) -> Store:
        assert self.server.store is not None
        return self.server.store

    def config_changes(self, since_lsn: int) -> list[Any]:
        """The changes after `since_lsn` that touched configuration: not the audit trail's entries,
        not a token's last-use stamp (both are written by reads and refusals too)."""
        return [c for c in self.store.changes_since(since_lsn, limit=100_000) if not all(map(bookkeeping, c.ops))]

    def unchanged_since(self, since_lsn: int) -> bool:
        return not self.config_changes(since_lsn)

    @property
    def token_file(self) -> Path:
        return Path(self.server.db_location) / "admin.token"

    @property
    def token(self) -> str:
        """The clear admin token (created now if the app has not created it yet)."""
        if not self.token_file.exists():
            from tandem.ams.auth import ensure_admin_token

            ensure_admin_token(self.app.state.services.state)
        return self.token_file.read_text(encoding="utf-8").strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def client(self) -> Any:
        """A started FastAPI TestClient; the first use bootstraps the admin token."""
        if self._client is None:
            from fastapi.testclient import TestClient

            self._client = TestClient(self.app, raise_server_exceptions=False)
            self._client.__enter__()
            self._client.get("/api/v1/health")
        return self._client

    def __enter__(self) -> InProcessAms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None
        if self.server.store is not None:
            self.server.store.close()
            self.server.store = None

    @contextlib.contextmanager
    def serve(self, port: int | None = None) -> Iterator[str]:
        """Serve the app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
        import uvicorn

        port = port or free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                                access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
