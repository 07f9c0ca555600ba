"""Worker processes: N gateway processes sharing the client port with SO_REUSEPORT.

The server process (the parent) owns the store, the HA role and the config
feed; workers only serve. Each worker is `python -m tandem.ags.workers FD`
with a Unix socket to the parent. Frames are a 4-byte big-endian length,
then one type byte, then the payload:

    parent -> worker   C <document JSON>     serve this configuration (b"" for none)
                       S <drain seconds>     stop accepting, drain, exit
                       q <id status remaining end>   answer to a Q (ASCII, space-separated)
                       d <JSON [id, status, message id, detail]>   answer to a D
                       g <id> <JSON view or null>                   answer to a G
    worker -> parent   R                     listening (after the first C)
                       E <reason>            could not listen: start fails
                       A <revision>          configuration applied
                       M <metrics JSON>      counters snapshot (about once a second)
                       Q <JSON [id, project, identity, subject, period, limit]>
                                             count one request against a quota (the
                                             parent's book answers q once it is durable)
                       D <id> \n <JSON meta> \n <body>   queue one message (queued delivery;
                                             the parent's queue answers d once it is durable)
                       G <id> <message id>   a queued message's state

A worker listens only after it has its first configuration, so a restarted
gateway never answers from an empty table when it has a stored one. That
also lets a passive keep its workers warm (`prepare()`): started, imported,
waiting for their first `C`, listening on nothing; activation then costs a
frame and a `listen`, not a Python start-up per worker. A
worker dies with its parent (PR_SET_PDEATHSIG, and EOF on the control
socket): a server killed by its watchdog never leaves a worker serving.
A worker that dies while the parent serves is restarted.

Node-scope rate limits are counted in a table the parent creates in shared
memory before the first worker starts (`policies.node_counts`) and passes to
every worker (a restarted one too) as an inherited descriptor: one budget per
gateway, however many workers.

Quotas are counted by the parent (`tandem.ags.quota_book`), which owns the
store: a worker's `quota` steps send `Q` through `RemoteQuota` and resume on
the matching `q`; an answer that does not come within the book's timeout is
503 `quota_unavailable`. Queued-delivery messages go the same way to the
parent's message queue (`tandem.ags.delivery`: `RemoteQueue`, frames `D`/`d`
and `G`/`g`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from tandem.ags.delivery.queue import UNAVAILABLE as QUEUE_UNAVAILABLE
from tandem.ags.delivery.remote import RemoteQueue, decode_submit, encode_view
from tandem.ags.delivery.remote import encode_answer as encode_queued
from tandem.ags.policies.node_counts import ENV_FD, create_table, from_environment
from tandem.ags.quota_book import UNAVAILABLE, RemoteQuota, decode_take, encode_answer
from tandem.ags.settings import GatewaySettings
from tandem.errors import ServerError

if TYPE_CHECKING:
    from tandem.ags.delivery.queue import Accepted, MessageQueue
    from tandem.ags.quota_book import QuotaBook, Result

log = logging.getLogger("tandem.ags.workers")

START_TIMEOUT = 20.0
APPLY_TIMEOUT = 30.0
METRICS_INTERVAL = 1.0


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    body = await reader.readexactly(size)
    return body[:1], body[1:]


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + kind + payload


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.applied = 0
        self.applied_event = asyncio.Event()
        self.metrics: dict[str, Any] = {}
        self.reader_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Worker {self.index} pid={pid} applied={self.applied}>"

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame(kind, payload))


class WorkerSet:
    """The parent's view of its workers."""

    def __init__(self, settings: GatewaySettings, quota: QuotaBook | None = None) -> None:
        self.settings = settings
        self.quota = quota  # answers the workers' Q frames
        self.queue: MessageQueue | None = None  # answers the workers' D and G frames
        self.workers: list[Worker] = []
        self.retired: list[dict[str, Any]] = []  # counters of workers that exited
        self.document = b""
        self.stopping = False
        self.started = False  # start() ran: workers get a configuration and listen
        self._spawning = asyncio.Lock()  # prepare() and start() never spawn side by side
        self._monitor: list[asyncio.Task[None]] = []
        self.node_counts = -1  # the shared node-scope rate-limit table (a memfd), made at the first start

    def __repr__(self) -> str:
        return f"<WorkerSet n={len(self.workers)} stopping={self.stopping}>"

    @property
    def live(self) -> int:
        return sum(1 for w in self.workers if w.proc is not None and w.proc.returncode is None)

    def _begin(self) -> None:
        """Before spawning: not stopping, and the shared node-count table exists (once)."""
        self.stopping = False
        if self.node_counts < 0 and self.settings.workers > 1:
            self.node_counts = create_table()

    async def prepare(self) -> None:
        """Spawn every worker without a configuration: each starts, imports and waits.
        Nothing listens until `start()`. Idempotent."""
        async with self._spawning:
            if self.workers or self.started:
                return
            self._begin()
            self.workers = [await self._spawn(i) for i in range(self.settings.workers)]

    async def start(self, document: bytes) -> None:
        """Give every worker `document` (spawning those not prepared, or gone); returns once
        all listen. Raises ServerError."""
        async with self._spawning:
            self.document = document
            self._begin()
            warm = {w.index: w for w in self.workers if w.proc is not None and w.proc.returncode is None}
            self.started = True
            self.workers = [warm[i] if i in warm else await self._spawn(i)
                            for i in range(self.settings.workers)]
            for w in warm.values():
                w.send(b"C", document)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready for w in self.workers)), START_TIMEOUT)
        except (TimeoutError, ServerError) as exc:
            await self.stop(0)
            reason = str(exc) or f"workers did not listen within {START_TIMEOUT:.0f} s"
            raise ServerError(f"gateway workers could not start: {reason}") from exc

    async def _spawn(self, index: int) -> Worker:
        w = Worker(index)
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ, TANDEM_AGS_SETTINGS=self.settings.to_json(), TANDEM_AGS_WORKER=str(index),
                   TANDEM_AGS_PARENT=str(os.getpid()))
        env.pop("TANDEM_WATCHDOG_FD", None)
        env.pop(ENV_FD, None)
        fds = [child_sock.fileno()]
        if self.node_counts >= 0:
            env[ENV_FD] = str(self.node_counts)
            fds.append(self.node_counts)
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tandem.ags.workers", str(child_sock.fileno()),
                pass_fds=fds, env=env, stdin=asyncio.subprocess.DEVNULL)
        finally:
            child_sock.close()
        reader, w.writer = await asyncio.open_unix_connection(sock=parent_sock)
        if self.started:  # a warm worker waits for start(): it must not listen before
            w.send(b"C", self.document)
        w.reader_task = asyncio.get_running_loop().create_task(self._read(w, reader))
        return w

    async def _read(self, w: Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == b"Q":  # the hot one: a quota step waits for the book
                    self._quota(w, payload)
                elif kind == b"D":
                    self._submit(w, payload)
                elif kind == b"G":
                    self._find(w, payload)
                elif kind == b"R" and not w.ready.done():
                    w.ready.set_result(None)
                elif kind == b"E" and not w.ready.done():
                    w.ready.set_exception(ServerError(payload.decode(errors="replace")))
                elif kind == b"A":
                    w.applied = int(payload)
                    w.applied_event.set()
                elif kind == b"M":
                    w.metrics = json.loads(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if w.proc is not None:
            await w.proc.wait()
        if not w.ready.done():
            w.ready.set_exception(ServerError(f"worker {w.index} exited with code {w.proc and w.proc.returncode}"))
        if w.metrics:
            self.retired.append(w.metrics)
            w.metrics = {}
        if not self.stopping and w in self.workers:
            log.error("gateway worker %d (pid %s) exited with code %s: restarting it", w.index,
                      w.proc and w.proc.pid, w.proc and w.proc.returncode)
            await asyncio.sleep(0.5)
            if not self.stopping and w in self.workers:
                self.workers[self.workers.index(w)] = await self._spawn(w.index)

    def _quota(self, w: Worker, payload: bytes) -> None:
        try:
            i, project, identity, subject, period, limit = decode_take(payload)
        except (ValueError, TypeError) as exc:
            log.error("gateway worker %d sent a malformed quota request: %s", w.index, exc)
            return
        if self.quota is None:
            w.send(b"q", encode_answer(i, (UNAVAILABLE, 0, 0.0)))
            return

        def reply(fut: asyncio.Future[Result]) -> None:
            w.send(b"q", encode_answer(i, fut.result()))

        self.quota.take(project, identity, subject, period, limit).add_done_callback(reply)

    def _submit(self, w: Worker, payload: bytes) -> None:
        try:
            i, project, method, rest, query, head, body, idem, order = decode_submit(payload)
        except (ValueError, TypeError) as exc:
            log.error("gateway worker %d sent a malformed message frame: %s", w.index, exc)
            return
        if self.queue is None:
            w.send(b"d", encode_queued(i, (QUEUE_UNAVAILABLE, "", "the gateway is not serving")))
            return

        def reply(fut: asyncio.Future[Accepted]) -> None:
            w.send(b"d", encode_queued(i, fut.result()))

        self.queue.submit(project, method, rest, query, head, body, idem, order).add_done_callback(reply)

    def _find(self, w: Worker, payload: bytes) -> None:
        i_raw, _, mid = payload.partition(b" ")
        try:
            i = int(i_raw)
        except ValueError:
            log.error("gateway worker %d sent a malformed message lookup", w.index)
            return
        view = self.queue.lookup(mid.decode("ascii", "replace")) if self.queue is not None else None
        w.send(b"g", encode_view(i, view))

    async def push(self, document: bytes, revision: int) -> None:
        """Send a configuration to every worker; returns when each has applied it."""
        self.document = document
        for w in self.workers:
            w.applied_event.clear()
            w.send(b"C", document)
        deadline = asyncio.get_running_loop().time() + APPLY_TIMEOUT
        for w in list(self.workers):
            while w.applied < revision and w.proc is not None and w.proc.returncode is None:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    log.warning("gateway worker %d has not applied revision %d within %.0f s", w.index,
                                revision, APPLY_TIMEOUT)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.applied_event.wait(), left)
                w.applied_event.clear()

    async def stop(self, drain_timeout: float) -> None:
        self.stopping = True
        for w in self.workers:
            w.send(b"S", str(drain_timeout).encode())
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), drain_timeout + 3.0)
            except TimeoutError:
                log.warning("gateway worker %d did not exit: killing pid %d", w.index, w.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        for w in self.workers:
            if w.reader_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(w.reader_task, 2.0)
            if w.writer is not None:
                w.writer.close()
        self.workers = []
        self.started = False

    def snapshots(self) -> list[dict[str, Any]]:
        return self.retired + [w.metrics for w in self.workers if w.metrics]


# ---- the worker process ----

def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


async def _worker(fd: int, settings: GatewaySettings, index: int) -> None:
    from tandem.ags.gateway import Gateway
    from tandem.net.sockets import listen_socket

    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    gw = Gateway(settings)
    gw.services.node_table = from_environment()
    quota = gw.services.quota = RemoteQuota(lambda payload: writer.write(frame(b"Q", payload)),
                                            asyncio.get_running_loop())
    queue = gw.services.queue = RemoteQueue(lambda kind, payload: writer.write(frame(kind, payload)),
                                            asyncio.get_running_loop())
    listening = False
    last_metrics: dict[str, Any] = {}

    async def report() -> None:
        nonlocal last_metrics
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            quota.expire(asyncio.get_running_loop().time())
            queue.expire(asyncio.get_running_loop().time())
            snap = gw.metrics.snapshot()
            if snap != last_metrics:
                last_metrics = snap
                writer.write(frame(b"M", json.dumps(snap).encode()))

    reporter = asyncio.get_running_loop().create_task(report())
    try:
        while True:
            try:
                kind, payload = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                gw.stop_accepting()  # the parent is gone: serve nothing more
                if gw.accesslog is not None:
                    gw.accesslog.flush()  # what this worker logged is kept
                os._exit(0)
            if kind == b"q":
                quota.answered(payload)
            elif kind == b"d":
                queue.answered(payload)
            elif kind == b"g":
                queue.viewed(payload)
            elif kind == b"C":
                if payload:
                    compiled = gw.apply(json.loads(payload))
                    writer.write(frame(b"A", str(compiled.revision).encode()))
                if not listening:
                    try:
                        sock = listen_socket(settings.host, settings.port, reuse_port=True)
                        await gw.listen(sock)
                    except OSError as exc:
                        writer.write(frame(b"E", f"cannot listen on {settings.host}:{settings.port}: "
                                                 f"{exc.strerror or exc}".encode()))
                        await writer.drain()
                        return
                    listening = True
                    writer.write(frame(b"R"))
            elif kind == b"S":
                await _drain(gw, float(payload or b"5"), reader, quota, queue)
                writer.write(frame(b"M", json.dumps(gw.metrics.snapshot()).encode()))
                await writer.drain()
                return
    finally:
        reporter.cancel()


async def _drain(gw: Any, timeout: float, reader: asyncio.StreamReader, quota: RemoteQuota,
                 queue: RemoteQueue) -> None:
    """Drain, still reading the parent's frames: requests in flight may wait for a quota or queue answer."""
    drain = asyncio.ensure_future(gw.drain(timeout))
    while not drain.done():
        nxt = asyncio.ensure_future(read_frame(reader))
        await asyncio.wait({drain, nxt}, return_when=asyncio.FIRST_COMPLETED)
        if not nxt.done():
            nxt.cancel()  # drained: we exit, a frame cut here does not matter
            break
        try:
            kind, payload = nxt.result()
        except (asyncio.IncompleteReadError, ConnectionError):
            break  # the parent is gone; the drain finishes on its own
        if kind == b"q":
            quota.answered(payload)
        elif kind == b"d":
            queue.answered(payload)
        elif kind == b"g":
            queue.viewed(payload)
    await drain


def main(argv: list[str]) -> int:
    parent = int(os.environ.get("TANDEM_AGS_PARENT", "0"))
    _die_with_parent(parent)
    # Ctrl-C reaches the whole group, and so does a service manager's SIGTERM (systemd's default
    # KillMode=control-group): the parent decides, it drains every worker (its `S` frame), and a
    # drained worker has written its buffered access-log lines (tests/system/test_accesslog_stop.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    index = int(os.environ.get("TANDEM_AGS_WORKER", "0"))
    settings = GatewaySettings.from_json(os.environ["TANDEM_AGS_SETTINGS"])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}] %(message)s")
    import uvloop

    uvloop.run(_worker(int(argv[0]), settings, index))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
