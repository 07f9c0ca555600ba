"""One `tandem server` process: its two ports, its store, its HA controller.

Lifecycle: take the profile's pid lock, open the HA port (always open),
start the controller (which decides when the client port opens), then wait
for SIGTERM/SIGINT. Shutdown is graceful: the controller stops serving
first (client port refuses at once, in-flight requests drain), then the HA
port closes and the store is closed. A second signal forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tandem.config.model import Profile
from tandem.errors import NotDurable, StoreError
from tandem.ha.interfaces import ControllerFactory
from tandem.server.client_service import ClientService, ServiceFactory
from tandem.server.ha_port import HAPort
from tandem.server.pidlock import PidLock
from tandem.store import Store, open_store

log = logging.getLogger("tandem.server")


class ServerProcess:
    """The host of one client service and one HA controller (both chosen by the
    composition root, `tandem.composition`): it is their `ServiceHost` and `ServerOps`."""

    def __init__(self, profile: Profile, make_service: ServiceFactory, make_controller: ControllerFactory,
                 db_location: str | None = None) -> None:
        self.profile = profile
        self.db_location = db_location or profile.db_path
        self.store: Store | None = None
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self.metric_sources: list[Callable[[], bytes]] = []  # extra Prometheus text for /metrics
        self.preparing: asyncio.Task[None] | None = None  # the client service getting ready again
        self.client: ClientService = make_service(self)
        self.controller = make_controller(self)
        self.pidlock = PidLock(profile.run_dir / "server.pid")
        self._signals = 0
        self.ha_port = HAPort(self)

    def __repr__(self) -> str:
        st = self.controller.status()
        return (f"<ServerProcess {self.profile.name} mode={self.profile.mode} state={st.get('state')} "
                f"epoch={st.get('epoch')} serving={self.controller.serving}>")

    # ---- ServerOps (what the HA controller may ask) ----
    @property
    def client_open(self) -> bool:
        return self.client.serving

    def open_store(self) -> Store:
        if self.store is None:
            self.store = open_store(self.db_location)
        return self.store

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def set_aside_store(self) -> str:
        if self.db_location.startswith(("postgresql://", "postgres://")):
            raise StoreError("a diverged PostgreSQL store cannot be set aside automatically; "
                             "resolve it by hand (rule 6 keeps it as it is)")
        import shutil

        folder = Path(self.db_location)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = folder / "diverged" / stamp
        self.close_store()
        aside.mkdir(parents=True)
        for f in folder.iterdir():
            if f.is_file() and f.name.startswith("store.sqlite3"):
                shutil.move(str(f), aside / f.name)
        self.controller.store_reopened(self.open_store())
        return str(aside)

    async def durable(self) -> None:
        """Wait until everything committed so far may be acknowledged (rule 4)."""
        store = self.store
        if store is None:
            raise NotDurable("the store is closed: this server no longer serves")
        await self.controller.durable(store.last_lsn(), store.epoch)

    # ---- ServiceHost (what the client service may ask) ----
    @property
    def serving(self) -> bool:
        return self.controller.serving

    def ha_state(self) -> str:
        return str(self.controller.status().get("state") or "")

    def ha_status(self) -> dict[str, Any]:
        return self.status()

    async def switchover(self, requested_by: str) -> str | None:
        """Ask this server's own HA port to hand over, signed as `tandem ha switchover` signs (the
        same checks apply); the refusal, or None once the handover is done."""
        import json

        import httpx

        from tandem.ha.backchannel import AUTH_HEADER, OPERATOR, sign_request

        status = self.status()
        body = json.dumps({"requested_by": requested_by}).encode()
        auth, _ = sign_request(self.profile.ha.PairSecret, "POST", "/ha/switchover", body, sender=OPERATOR,
                               receiver=str(status.get("role")), epoch=int(status.get("epoch") or 0))
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
                r = await client.post(self.profile.ha_url + "/ha/switchover", content=body,
                                      headers={AUTH_HEADER: auth, "content-type": "application/json"})
        except httpx.HTTPError as exc:
            return f"the HA port did not answer: {exc}"
        if r.status_code == 200:
            return None
        try:
            return str(r.json().get("error", r.text))
        except ValueError:
            return r.text[:200]

    def add_metric_source(self, collect: Callable[[], bytes]) -> None:
        if collect not in self.metric_sources:
            self.metric_sources.append(collect)

    async def activate(self) -> None:
        if not self.client.serving:
            await self.client.start()

    async def deactivate(self, drain_timeout: float) -> None:
        if self.client.serving:
            await self.client.stop(drain_timeout)
            if not self.stopping.is_set():
                # ready for the next activation, off the step-down path: the lock is
                # released right after this, and the peer must not wait for process start-ups
                self.preparing = asyncio.get_running_loop().create_task(self.client.prepare())

    def console(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{stamp} {line}", flush=True)

    def status(self) -> dict[str, Any]:
        """`/ha/status`: this server, its HA state and its store."""
        st = self.controller.status()
        since = st.get("since") or self.started_at
        return {
            "server": self.profile.server.Name or self.profile.name,
            "profile": self.profile.name,
            "mode": self.profile.mode,
            "type": st.get("type", self.profile.ha.Type),
            "role": st.get("role", self.profile.ha.Role),
            "state": st.get("state"),
            "serving": self.controller.serving,
            "epoch": st.get("epoch", 0),
            "lsn": self.store.last_lsn() if self.store is not None else st.get("lsn"),
            "peer": st.get("peer", {}),
            "lock": st.get("lock", {}),
            "isolated": st.get("isolated", False),
            "since": datetime.fromtimestamp(since, UTC).isoformat(),
            "pid": os.getpid(),
            "client_url": self.profile.client_url,
            **{k: v for k, v in st.items() if k not in {"type", "role", "state", "epoch", "peer", "lock",
                                                         "isolated", "since", "lsn"}},
        }

    # ---- lifecycle ----
    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            self.console(f"SERVER  {signame} received: stopping (send again to force)")
            self.stopping.set()
        else:
            self.console(f"SERVER  {signame} received again: forcing exit")
            os._exit(1)

    async def _watchdog_reporter(self) -> None:
        """Tell the supervisor we are alive, from the event loop itself: a stalled
        loop or a stopped process stops these writes, and the supervisor kills us."""
        fd_text = os.environ.get("TANDEM_WATCHDOG_FD")
        if not fd_text:
            return
        fd = int(fd_text)
        interval = self.profile.ha.WatchdogTimeout / 1000 / 5
        while True:
            if self.controller.healthy():
                try:
                    os.write(fd, b".")
                except (BlockingIOError, BrokenPipeError):
                    pass
            await asyncio.sleep(interval)

    async def run(self) -> int:
        self.pidlock.acquire(self.profile.name)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            for signame in ("SIGTERM", "SIGINT"):
                loop.add_signal_handler(getattr(signal, signame), self._on_signal, signame)
            await self.ha_port.open(self.controller.routes())
            tasks.append(loop.create_task(self._watchdog_reporter()))
            self.console(f"SERVER  {self.profile.name} ({self.profile.mode}) pid={os.getpid()} "
                         f"status {self.profile.ha_url}/ha/status  client {self.profile.client_url}")
            await self.client.prepare()
            await self.controller.start()
            await self.stopping.wait()
            await self.controller.stop()
            await self.deactivate(drain_timeout=5.0)
            if self.preparing is not None:
                await asyncio.gather(self.preparing, return_exceptions=True)
            await self.client.close()
            return 0
        finally:
            for t in tasks:
                t.cancel()
            await self.ha_port.close()
            self.close_store()
            self.pidlock.release()
            self.console(f"SERVER  {self.profile.name} stopped")


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (worker processes inherit it):
    a gateway past 1,024 connections must not turn clients away with a reset. Returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def run_server(make_server: Callable[[], ServerProcess]) -> int:
    """Run the server `make_server` builds in the foreground until signalled; returns the exit code."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # request handlers run in threads; a 1 ms switch interval (default 5 ms) keeps the
    # event loop, which runs the HA loop, from waiting behind them for the GIL
    sys.setswitchinterval(0.001)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    raise_fd_limit()

    async def main() -> int:
        return await make_server().run()

    with contextlib.suppress(KeyboardInterrupt):
        return int(runner(main()))
    return 0
