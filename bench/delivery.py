"""Queued delivery (issue 15) on a sync-replicated AGS pair, RabbitMQ side by side.

    .venv/bin/python bench/delivery.py [--duration 10] [--runs 3] [--clients 50] [--body 1024]
                                       [--skip-rabbitmq] [--dry-run] [--write docs/benchmarks.md]

What it starts (on a fresh home in a temporary folder, every process stopped by pid):
a standalone `server1/AMS`, the `haprofile1` AGS pair (HA Type replicated,
ReplicationMode sync: a 202 only once the passive stored the message) pointing at
it, and a backend of its own (`--backend`, below) that notes when each
`Idempotency-Key` first arrives. One project `q` at `/q` with a queued `delivery`
policy is deployed through the AMS admin API.

Measured, in one run:

* the disk's fsync rate: 1 KB write + fsync in a loop for 2 s, on a file in the
  folder the active AGS's store lives in (the floor group commit must beat);
* burst accept: `wrk -c CLIENTS` POSTs BODY-byte bodies to `/q/...` while the
  backend holds every delivery (answers none), so messages only queue: accepted
  messages/s (202s) and accept latency p50/p99 (wrk's); then the backend answers
  and the backlog drains (delivery alone, messages/s from the gateway's metrics);
* RabbitMQ, interleaved with the bursts (T R, R T, ...): as many publishers as
  clients (pika, BlockingConnection, publisher confirms, one message in flight
  each, like an HTTP client waiting for its 202), the same bodies, persistent, to a
  durable quorum queue on 127.0.0.1:5672 (guest/guest); messages/s and confirm
  latency p50/p99; the queue is purged between runs and deleted at the end;
* sustained accept + delivery: the same clients with the backend answering 200 at
  once, for DURATION: messages/s accepted (202s) and delivered (first arrivals at
  the backend inside the window), then the backlog is waited for, and delivery
  latency p50/p99 over every message accepted in the window (the backend's first
  arrival of the id minus the moment the client read its 202; one monotonic clock).

Throughout every Tandem phase a sampler checks the pair: the active `Active`, the
passive `Passive`, the LockFile naming both in sync; a sample outside that is reported
(a figure measured while the passive had dropped out would not be a replicated one).

`--dry-run`: the project is a plain proxy (no delivery policy) to the backend in
`fake-accept` mode, which answers 202 with a Location and an id as the gateway will:
the plumbing (processes, deploy, wrk's script, the logs, the table) runs, the figures
mean nothing and nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # tests.support

PROJECT = "q"
PAIR = "haprofile1"
TOKEN = "bench-delivery-admin-token"
SECTION = "Queued delivery"
TARGETS = {"burst_rate": 8000.0, "burst_p99": 25.0, "sustained_rate": 3000.0}
RABBIT = ("127.0.0.1", 5672)
MONO = time.CLOCK_MONOTONIC  # wrk's script reads the same clock (clock_gettime(1, ...))


# ---------------------------------------------------------------- pure helpers (tests/unit)

def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; NaN for no values."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    rank = max(1, min(len(s), int(-(-q * len(s) // 100))))  # ceil(q/100 * n), at least 1
    return s[rank - 1]


def parse_wrk(out: str) -> dict[str, float]:
    """requests, seconds, rps, p50/p99 (ms), non2xx, errors, from `wrk --latency` output."""
    res: dict[str, float] = {}
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out):
        res["requests"] = float(m.group(1))
        res["seconds"] = float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    res["non2xx"] = float(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0.0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["errors"] = float(sum(int(g) for g in m.groups()))
    else:
        res["errors"] = 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{pct}"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return res


def parse_metric(text: str, name: str, project: str) -> float | None:
    """The value of `name{...project="<project>"...}` in a Prometheus text page (None if absent)."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(rf'^{re.escape(name)}\{{([^}}]*)\}}\s+(\S+)', line)
        if m and re.search(rf'(^|,)\s*project="{re.escape(project)}"', m.group(1)):
            return float(m.group(2))
    return None


def parse_client_log(text: str) -> tuple[Counter[int], list[tuple[str, float]]]:
    """wrk's script writes `<status> <id or -> <monotonic seconds>` per response: the statuses
    counted, and (id, time) of every 202."""
    statuses: Counter[int] = Counter()
    accepted: list[tuple[str, float]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        status = int(parts[0])
        statuses[status] += 1
        if status == 202 and parts[1] != "-":
            accepted.append((parts[1], float(parts[2])))
    return statuses, accepted


def delivery_latencies(accepted: list[tuple[str, float]], arrivals: dict[str, float]) -> tuple[list[float], int]:
    """ms from each 202 to its first arrival at the backend; and how many never arrived."""
    lat, missing = [], 0
    for mid, t in accepted:
        a = arrivals.get(mid)
        if a is None:
            missing += 1
        else:
            lat.append((a - t) * 1000.0)
    return lat, missing


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    if value != value:  # NaN: not measured
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def fmt_rate(x: float) -> str:
    return "n/a" if x != x else f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


def ratio(a: float, b: float) -> str:
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.2f}x"


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


@dataclass
class Results:
    """Everything one run measured; lists hold one value per run (medians are reported)."""

    fsync_rate: float = float("nan")
    fsync_p50: float = float("nan")
    fsync_p99: float = float("nan")
    burst_rate: list[float] = field(default_factory=list)
    burst_p50: list[float] = field(default_factory=list)
    burst_p99: list[float] = field(default_factory=list)
    burst_cpu: list[float] = field(default_factory=list)  # pair CPU us per accepted message
    drain_rate: list[float] = field(default_factory=list)
    rabbit_rate: list[float] = field(default_factory=list)
    rabbit_p50: list[float] = field(default_factory=list)
    rabbit_p99: list[float] = field(default_factory=list)
    rabbit_cpu: list[float] = field(default_factory=list)  # broker CPU us per confirmed message
    rabbit_client_cpu: list[float] = field(default_factory=list)
    wrk_cpu: list[float] = field(default_factory=list)
    sus_accepted: list[float] = field(default_factory=list)
    sus_delivered: list[float] = field(default_factory=list)
    sus_p50: list[float] = field(default_factory=list)
    sus_p99: list[float] = field(default_factory=list)
    sus_accept_p50: list[float] = field(default_factory=list)
    sus_accept_p99: list[float] = field(default_factory=list)
    early: list[int] = field(default_factory=list)  # per sustained run: deliveries before the 202 was read
    sus_missing: list[int] = field(default_factory=list)
    sus_duplicates: list[int] = field(default_factory=list)
    drain_duplicates: list[int] = field(default_factory=list)
    cpu_split: list[str] = field(default_factory=list)  # per phase: the pair's CPU per message, by process
    statuses: Counter[int] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    rabbit_client: str = "raw"
    clients: int = 50
    body: int = 1024
    runs: int = 3
    duration: int = 10
    fsync_end: float = float("nan")  # the fsync rate measured again at the end (the disk is shared)


CLIENTS = {"raw": "AMQP 0-9-1 written out on asyncio + uvloop, one connection and channel per publisher",
           "pika": "pika BlockingConnection threads, one connection and channel per publisher"}


def fsync_floor(r: Results) -> float:
    """The floor group commit must beat: the higher of the two fsync rates measured (the disk is shared)."""
    return max((x for x in (r.fsync_rate, r.fsync_end) if x == x), default=float("nan"))


def sustained_rate(r: Results) -> float:
    """Sustained accept + delivery: the lower of the accepted and delivered rates (medians)."""
    s_acc, s_del = med(r.sus_accepted), med(r.sus_delivered)
    return min(s_acc, s_del) if s_acc == s_acc and s_del == s_del else float("nan")


def verdicts(r: Results) -> list[tuple[str, str]]:
    """(target, met / MISSED / n/a) for every target of the issue."""
    b_rate = med(r.burst_rate)
    return [
        ("burst accept above the disk's fsync rate", verdict(b_rate, fsync_floor(r) * 1.000001)),
        (f"burst accept >= {TARGETS['burst_rate']:,.0f} messages/s", verdict(b_rate, TARGETS["burst_rate"])),
        (f"burst accept p99 <= {TARGETS['burst_p99']:.0f} ms",
         verdict(med(r.burst_p99), TARGETS["burst_p99"], higher_is_better=False)),
        (f"sustained accept + delivery >= {TARGETS['sustained_rate']:,.0f} messages/s",
         verdict(sustained_rate(r), TARGETS["sustained_rate"])),
    ]


def table(r: Results) -> str:
    """The markdown table of the figures (medians over runs) with each target's verdict."""
    b_rate, b50, b99, r_rate = med(r.burst_rate), med(r.burst_p50), med(r.burst_p99), med(r.rabbit_rate)
    r50, r99 = med(r.rabbit_p50), med(r.rabbit_p99)
    s_acc, s_del = med(r.sus_accepted), med(r.sus_delivered)
    v = [x for _, x in verdicts(r)]
    rows = [
        "| measure | Tandem (sync pair) | RabbitMQ (quorum queue) | Tandem / RabbitMQ | target | verdict |",
        "|---|---|---|---|---|---|",
        f"| disk fsync rate (1 KB write + fsync, store folder): at the start; at the end | {fmt_rate(r.fsync_rate)}/s "
        f"(p50 {fmt_ms(r.fsync_p50)} ms, p99 {fmt_ms(r.fsync_p99)} ms); {fmt_rate(r.fsync_end)}/s | | | "
        f"burst accept above the higher (group commit beats one fsync per message): burst / fsync "
        f"{ratio(b_rate, fsync_floor(r))} | {v[0]} |",
        f"| burst accept, messages/s | {fmt_rate(b_rate)} | {fmt_rate(r_rate)} | {ratio(b_rate, r_rate)} | "
        f">= {TARGETS['burst_rate']:,.0f} | {v[1]} |",
        f"| burst accept latency p50, ms | {fmt_ms(b50)} | {fmt_ms(r50)} | {ratio(b50, r50)} | | |",
        f"| burst accept latency p99, ms | {fmt_ms(b99)} | {fmt_ms(r99)} | {ratio(b99, r99)} | "
        f"<= {TARGETS['burst_p99']:.0f} | {v[2]} |",
        f"| server CPU per accepted message, us (Tandem: both halves) | {fmt_ms(med(r.burst_cpu))} | "
        f"{fmt_ms(med(r.rabbit_cpu))} | {ratio(med(r.burst_cpu), med(r.rabbit_cpu))} | | |",
        f"| backlog drain after the burst (delivery alone), messages/s | {fmt_rate(med(r.drain_rate))} | | | | |",
        f"| sustained: accepted, messages/s | {fmt_rate(s_acc)} | | | | |",
        f"| sustained: delivered in the window, messages/s | {fmt_rate(s_del)} | | | | |",
        f"| sustained accept + delivery (the lower of the two), messages/s | {fmt_rate(sustained_rate(r))} | | | "
        f">= {TARGETS['sustained_rate']:,.0f} | {v[3]} |",
        f"| sustained: accept latency p50 / p99, ms | {fmt_ms(med(r.sus_accept_p50))} / "
        f"{fmt_ms(med(r.sus_accept_p99))} | | | | |",
        f"| delivery latency p50, ms (202 read -> backend) | {fmt_ms(med(r.sus_p50))} | | | | |",
        f"| delivery latency p99, ms | {fmt_ms(med(r.sus_p99))} | | | | |",
    ]
    return "\n".join(rows)


def per_run(r: Results) -> str:
    def row(label: str, xs: list[Any], f: Any = fmt_rate) -> str:
        return f"| {label} | {' / '.join(f(x) for x in xs) or 'n/a'} |"
    return "\n".join([
        "| per run | values |", "|---|---|",
        row("burst accept, messages/s", r.burst_rate),
        row("burst p99, ms", r.burst_p99, fmt_ms),
        row("RabbitMQ confirms, messages/s", r.rabbit_rate),
        row("RabbitMQ p99, ms", r.rabbit_p99, fmt_ms),
        row("drain, messages/s", r.drain_rate),
        row("sustained accepted, messages/s", r.sus_accepted),
        row("sustained delivered, messages/s", r.sus_delivered),
        row("sustained: accepted but not delivered when the wait ended", r.sus_missing, str),
        row("sustained: deliveries of an id already delivered (duplicates)", r.sus_duplicates, str),
        row("burst + drain: deliveries of an id already delivered (duplicates)", r.drain_duplicates, str),
        row("load generator CPU per message, us: wrk (bursts, then sustained)", r.wrk_cpu, fmt_ms),
        row(f"load generator CPU per message, us: RabbitMQ publishers ({r.rabbit_client})", r.rabbit_client_cpu,
            fmt_ms),
    ])


def render_section(r: Results, command: str, machine: str, started: str, minutes: float) -> str:
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r.statuses.items())) or "none"
    vs = verdicts(r)
    missed = [name for name, v in vs if v == "MISSED"]
    met = [name for name, v in vs if v == "met"]
    summary = (("Targets MISSED: " + "; ".join(missed) + ". " if missed else "")
               + ("Met: " + "; ".join(met) + "." if met else "")).strip() if missed or met else "No target measured."
    if met and not missed and len(met) == len(vs):
        summary = "Every target met: " + "; ".join(met) + "."
    extra = list(r.notes)
    if any(r.early):
        extra.insert(0, f"messages that reached the backend before their client had read the 202, per sustained "
                        f"run: {' / '.join(f'{n:,}' for n in r.early)} (delivery may start as soon as the message is "
                        "stored on both halves; these negative latencies are kept in the percentiles)")
    notes = "".join(f"\n- {n}" for n in extra)
    cpu = "\n".join(f"- {c}" for c in r.cpu_split) or "- (not measured)"
    return f"""## {SECTION}

Issue 15's targets on this machine: a sync-replicated AGS pair (`haprofile1`, two `tandem server`
processes; a 202 only once the passive stored the message), {r.body:,}-byte bodies, {r.clients}
concurrent clients (`wrk`, keep-alive, a Lua script noting each 202's id), project `q` with a queued
`delivery` policy (concurrency 16), {r.runs} runs of {r.duration} s per phase, medians.

- Burst: the backend holds every delivery, so messages only queue; then it answers and the
  backlog drains (delivery alone).
- Sustained: the backend answers 200 at once. "Delivered" counts first arrivals of an id at the
  backend inside the window. Delivery latency: the backend's first arrival of the id minus the
  moment the client read its 202, over every message accepted in the window. The clients send as
  fast as they are answered: when delivery is slower than accept, the queue grows in the window
  and the latency includes that wait.
- RabbitMQ: as many publishers ({CLIENTS[r.rabbit_client]}; publisher confirms, one message in
  flight each, like a client waiting for its 202), the same bodies, persistent, to a durable quorum
  queue; runs interleaved with the bursts. RabbitMQ here is one node: its quorum queue has one
  member (durable, not replicated), while Tandem's figure includes the passive's copy.
- Server CPU: user + system time of the pair's processes (workers included) or of RabbitMQ's
  Erlang VM during the run, per message.

{table(r)}

{summary}

{per_run(r)}

Responses the clients saw (status: count, all Tandem phases): {statuses}.{notes}

The pair's CPU per accepted message, by process (and how busy each kept a cpu), the active's store
commits in the phase (its lsn moves by one per commit), and the server processes' resident memory:
{cpu}

Command: `{command}` ({started}, {minutes:.0f} min; {machine}).
"""


# ---------------------------------------------------------------- the backend process

def backend_main(port: int, dump: Path, fake_accept: bool) -> None:
    """An HTTP/1.1 backend: notes the first arrival (monotonic) of each Idempotency-Key; holds every
    answer while in `hold` mode. Control: POST /_bench/{hold,ok,reset,dump}, GET /_bench/stats."""
    import asyncio

    import httptools
    import uvloop

    state: dict[str, Any] = {"hold": False, "arrivals": {}, "total": 0, "dups": 0, "held": []}
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def control(path: str) -> bytes:
        if path == "/_bench/hold":
            state["hold"] = True
        elif path == "/_bench/ok":
            state["hold"] = False
            held, state["held"] = state["held"], []
            for t in held:
                if not t.is_closing():
                    t.write(ok)
        elif path == "/_bench/reset":
            state.update(arrivals={}, total=0, dups=0)
        elif path == "/_bench/dump":
            with open(dump, "w") as f:
                f.writelines(f"{k} {v:.6f}\n" for k, v in state["arrivals"].items())
        body = json.dumps({"hold": state["hold"], "arrivals": len(state["arrivals"]), "total": state["total"],
                           "dups": state["dups"], "held": len(state["held"])}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.p = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            try:
                self.p.feed_data(data)
            except httptools.HttpParserError:
                self.t.close()

        def on_message_begin(self) -> None:
            self.url, self.key = b"", None

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"idempotency-key":
                self.key = value.decode("latin-1")

        def on_message_complete(self) -> None:
            now = time.clock_gettime(MONO)
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            if path.startswith("/_bench/"):
                self.t.write(control(path))
                return
            if fake_accept:  # --dry-run: answer as the gateway will
                mid = uuid.uuid4().hex
                body = json.dumps({"id": mid, "state": "queued"}).encode()
                self.t.write(b"HTTP/1.1 202 Accepted\r\nLocation: /_tandem/messages/%s\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (mid.encode(), len(body), body))
                return
            state["total"] += 1
            if self.key is not None:
                if self.key in state["arrivals"]:
                    state["dups"] += 1
                else:
                    state["arrivals"][self.key] = now
            if state["hold"]:
                state["held"].append(self.t)
            else:
                self.t.write(ok)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Sink, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    uvloop.run(run())


# ---------------------------------------------------------------- RabbitMQ publishers

def publisher_main(threads: int, queue: str, body_size: int, start_at: float, duration: float, out: Path) -> None:
    """`threads` pika publishers (one connection and channel each, publisher confirms), publishing from
    monotonic `start_at` for `duration` s; writes {"count", "lat_ms", "errors", "cpu_s"} to `out`."""
    import pika

    body = b"x" * body_size
    lats: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    props = pika.BasicProperties(delivery_mode=2, content_type="application/octet-stream")

    def one(i: int) -> None:
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters(
                host=RABBIT[0], port=RABBIT[1], credentials=pika.PlainCredentials("guest", "guest"),
                heartbeat=0, blocked_connection_timeout=30))
            ch = conn.channel()
            ch.confirm_delivery()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors.append(f"connect: {exc!r}")
            return
        try:
            time.sleep(max(0.0, start_at - time.clock_gettime(MONO)))
            end, mine = start_at + duration, lats[i]
            while True:
                t = time.clock_gettime(MONO)
                if t >= end:
                    break
                ch.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
                mine.append((time.clock_gettime(MONO) - t) * 1000.0)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"publish: {exc!r}")
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + max(0.0, start_at - time.clock_gettime(MONO)) + 60)
    allv = [x for m in lats for x in m]
    ru = os.times()
    out.write_text(json.dumps({"count": len(allv), "lat_ms": allv, "errors": errors[:5],
                               "cpu_s": ru.user + ru.system}))


def _amqp_frame(kind: int, channel: int, payload: bytes) -> bytes:
    import struct

    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _amqp_method(channel: int, cls: int, meth: int, args: bytes = b"") -> bytes:
    import struct

    return _amqp_frame(1, channel, struct.pack(">HH", cls, meth) + args)


def _shortstr(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def raw_publisher_main(conns: int, queue: str, body_size: int, start_at: float, duration: float, out: Path) -> None:
    """The same publishers as `publisher_main` on raw AMQP 0-9-1 (asyncio + uvloop, one process,
    `conns` connections, one channel each in confirm mode, one message in flight each): a client that
    costs the machine far less CPU per message than pika, so the broker is what is measured."""
    import asyncio
    import struct

    import uvloop

    body = b"x" * body_size
    publish = (_amqp_method(1, 60, 40, struct.pack(">H", 0) + _shortstr("") + _shortstr(queue) + b"\x00")
               + _amqp_frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0x1000) + b"\x02")  # delivery-mode 2
               + _amqp_frame(3, 1, body))
    lats: list[float] = []
    errors: list[str] = []

    async def frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
        """(type, channel, class<<16|method or 0, payload) of the next frame that is not a heartbeat."""
        while True:
            kind, channel, size = struct.unpack(">BHI", await reader.readexactly(7))
            payload = (await reader.readexactly(size + 1))[:-1]
            if kind == 8:
                continue
            cm = struct.unpack(">I", payload[:4])[0] if kind == 1 else 0
            return kind, channel, cm, payload

    async def expect(reader: asyncio.StreamReader, cls: int, meth: int) -> bytes:
        kind, _, cm, payload = await frame(reader)
        if cm != (cls << 16 | meth):
            raise RuntimeError(f"expected {cls}.{meth}, got frame {kind} method {cm >> 16}.{cm & 0xFFFF}: "
                               f"{payload[4:200]!r}")
        return payload

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(*RABBIT)
            writer.write(b"AMQP\x00\x00\x09\x01")
            await expect(reader, 10, 10)  # Connection.Start
            writer.write(_amqp_method(0, 10, 11, struct.pack(">I", 0) + _shortstr("PLAIN")
                                      + struct.pack(">I", 12) + b"\x00guest\x00guest" + _shortstr("en_US")))
            tune = await expect(reader, 10, 30)
            channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
            writer.write(_amqp_method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))  # no heartbeats
            writer.write(_amqp_method(0, 10, 40, _shortstr("/") + _shortstr("") + b"\x00"))
            await expect(reader, 10, 41)
            writer.write(_amqp_method(1, 20, 10, _shortstr("")))
            await expect(reader, 20, 11)
            writer.write(_amqp_method(1, 85, 10, b"\x00"))  # Confirm.Select
            await expect(reader, 85, 11)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors.append(f"connect: {exc!r}")
            return
        try:
            await asyncio.sleep(max(0.0, start_at - time.clock_gettime(MONO)))
            end = start_at + duration
            while (t := time.clock_gettime(MONO)) < end:
                writer.write(publish)
                _, _, cm, payload = await asyncio.wait_for(frame(reader), 30)
                if cm != (60 << 16 | 80):  # Basic.Ack
                    raise RuntimeError(f"not an ack: method {cm >> 16}.{cm & 0xFFFF} {payload[4:200]!r}")
                lats.append((time.clock_gettime(MONO) - t) * 1000.0)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"publish: {exc!r}")
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(conns)))

    uvloop.run(run())
    ru = os.times()
    out.write_text(json.dumps({"count": len(lats), "lat_ms": lats, "errors": errors[:5],
                               "cpu_s": ru.user + ru.system}))


# ---------------------------------------------------------------- processes and measurement

def cpu_ticks(pids: list[int], children: bool = True, only_children: bool = False) -> int:
    """utime + stime of processes and (unless not `children`) their children (gateway workers), in clock
    ticks; `only_children`: the children's alone."""
    total = 0
    for pid in pids:
        group = [] if only_children else [pid]
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            if children or only_children:
                group += [int(p) for p in kids.read_text().split()]
        for p in group:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB (NaN when gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def beam_pids() -> list[int]:
    """The RabbitMQ broker's Erlang VM (read from /proc; only its CPU time is read)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip().startswith("beam"):
                found.append(int(comm.parent.name))
    return found


def code_state() -> str:
    """The commit measured, and which folders of src/ had uncommitted changes (a shared work tree)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = sorted({str(Path(line[3:].strip()).parent) for line in git("status", "--porcelain", "--", "src").splitlines()
                    if line.strip()})
    return f"code at {head}" + (f", with uncommitted changes in {', '.join(dirty)}" if dirty else "")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown cpu"


def fsync_rate(folder: Path, seconds: float = 2.0, size: int = 1024) -> tuple[float, float, float]:
    """(fsyncs/s, p50 ms, p99 ms) of a loop of `size`-byte appends each followed by fsync."""
    path = folder / f".bench-fsync-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat: list[float] = []
    block = b"f" * size
    try:
        t0 = time.perf_counter()
        while (t := time.perf_counter()) - t0 < seconds and len(lat) < 10_000_000:
            os.write(fd, block)
            os.fsync(fd)
            lat.append((time.perf_counter() - t) * 1000.0)
        took = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return len(lat) / took, percentile(lat, 50), percentile(lat, 99)


LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_ts;
int clock_gettime(int clk, bench_ts *tp);
]]
local ts = ffi.new("bench_ts")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
wrk.method = "POST"
wrk.body = string.rep("m", %(body)d)
wrk.headers["Content-Type"] = "application/octet-stream"
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local out
function init(args)
  out = io.open("%(prefix)s" .. tid .. ".log", "w")
  out:setvbuf("full", 1048576)
end
function response(status, headers, body)
  local loc = headers["Location"] or headers["location"]
  local id = loc and loc:match("([^/]+)$")
  if id == nil and status == 202 and body then id = body:match('"id"%%s*:%%s*"([^"]+)"') end
  out:write(status, " ", id or "-", " ", string.format("%%.6f", now()), "\n")
end
"""


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.procs: list[Any] = []  # Server objects and Popen handles, stopped by pid in close()
        self.home: Any = None
        self.active: Any = None
        self.passive: Any = None
        self.backend_port = 0
        self.dump = work / "arrivals.txt"
        self.res = Results()
        self.runs_done = 0
        self.queue = f"tandem-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.rabbit_declared = False

    # ---- set-up
    def start(self) -> None:
        from tandem.config import init_home, load_profile, set_profile_values
        from tests.support.harness import Home, free_port, fresh_ports, port_open, wait_for

        home_path = self.work / "home"
        init_home(home_path)
        fresh_ports(home_path)
        self.home = Home(home_path)
        self.backend_port = free_port()
        be = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--backend", str(self.backend_port),
                               "--dump", str(self.dump), *(["--fake-accept"] if self.args.dry_run else [])])
        self.procs.append(be)
        wait_for(lambda: be.poll() is None and port_open(self.backend_port), 15, "bench backend", interval=0.05)
        ams = self.home.server("server1/AMS")
        ams.start(env={"TANDEM_ADMIN_TOKEN": TOKEN})
        ams.wait_state("Standalone", timeout=20)
        self.ams_url = ams.prof.client_url
        for half in ("primary", "secondary"):
            set_profile_values(home_path, f"{PAIR}/{half}/AGS", [
                f"ha.PrimaryURL={self.ams_url}", "ha.BackupURLs=", "ha.ReplicationMode=sync",
                f"gateway.Workers={self.args.workers}",
                f"gateway.AccessLog={'true' if self.args.access_log else 'false'}"])
            prof = load_profile(home_path, f"{PAIR}/{half}/AGS")
            assert prof.ha.Type == "replicated" and prof.ha.ReplicationMode == "sync", prof.ha
        env = {"TANDEM_GATEWAY_TOKEN": TOKEN, "TANDEM_GATEWAY_INPROCESS": "1" if self.args.in_process else "0"}
        self.active, self.passive = self.home.start_pair(PAIR, "AGS", env=env, timeout=30)
        self.deploy()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import httpx

        r = httpx.request(method, self.ams_url + path, json=body, timeout=30, trust_env=False,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def deploy(self) -> None:
        from tests.support.harness import wait_for

        policies = [] if self.args.dry_run else [{
            "type": "delivery", "mode": "queued", "concurrency": 16, "max_messages": 1_000_000,
            "max_bytes": 2_000_000_000, "max_body_bytes": 65536}]
        proj = {"name": PROJECT, "context_path": f"/{PROJECT}",
                "targets": [{"url": f"http://127.0.0.1:{self.backend_port}"}], "policies": policies}
        code, data = self.api("POST", "/api/v1/projects", proj)
        if code != 201:
            raise RuntimeError(f"POST /api/v1/projects: {code} {data}")
        code, data = self.api("POST", f"/api/v1/projects/{PROJECT}/deploy", {"environment": "default"})
        if code != 202:
            raise RuntimeError(f"deploy: {code} {data}")
        dep = data["id"]
        wait_for(lambda: self.api("GET", f"/api/v1/deployments/{dep}")[1].get("status") == "deployed", 30,
                 "project q deployed", interval=0.1)

        def accepts() -> bool:
            import httpx

            r = httpx.post(f"http://127.0.0.1:{self.active.client_port}/{PROJECT}/probe", content=b"probe",
                           timeout=5, trust_env=False)
            return r.status_code == 202
        wait_for(accepts, 30, "the active gateway answers 202 on /q", interval=0.2)
        wait_for(lambda: (a := self.active.status()) and (p := self.passive.status()) and
                 a.get("lsn") == p.get("lsn"), 15, "passive has the active's changes", interval=0.1)

    def close(self) -> None:
        from tests.support.harness import stop_process

        if self.rabbit_declared:
            try:
                self.rabbit_channel(lambda ch: ch.queue_delete(queue=self.queue))
                print(f"deleted the RabbitMQ queue {self.queue}")
            except Exception as exc:  # noqa: BLE001
                print(f"could not delete the RabbitMQ queue {self.queue}: {exc!r}", file=sys.stderr)
        if self.home is not None:
            self.home.cleanup()
        for p in self.procs:
            stop_process(p, 10)

    # ---- helpers
    def backend(self, what: str) -> dict[str, Any]:
        import httpx

        r = httpx.post(f"http://127.0.0.1:{self.backend_port}/_bench/{what}", timeout=10, trust_env=False)
        return dict(r.json())

    def metrics(self) -> tuple[float | None, float | None]:
        """(queue depth, delivered total) of project q on the active's HA port."""
        import httpx

        try:
            text = httpx.get(f"{self.active.ha}/metrics", timeout=2, trust_env=False).text
        except httpx.HTTPError:
            return None, None
        return (parse_metric(text, "tandem_delivery_queue_depth", PROJECT),
                parse_metric(text, "tandem_delivery_delivered_total", PROJECT))

    def wait_delivered(self, expected: int, timeout: float) -> dict[str, Any]:
        """After a phase: poll the gateway's metrics and the backend every 100 ms until q's queue depth is 0
        and the backend has seen at least `expected` distinct ids (or, without metrics, until it has, or
        nothing more arrived for 5 s). Returns the backend's last stats, `took` (s from the call to the
        last new arrival), `delivered` (new distinct ids meanwhile), `drained`, the metrics' delivered delta."""
        t0 = time.monotonic()
        first = self.backend("stats")
        depth, m0 = self.metrics()
        last, last_t, m1 = first, t0, m0
        drained = False
        while time.monotonic() - t0 < timeout:
            st = self.backend("stats")
            now = time.monotonic()
            if st["arrivals"] > last["arrivals"]:
                last_t = now
            last = st
            depth, m = self.metrics()
            m1 = m if m is not None else m1
            if st["arrivals"] >= expected and (depth == 0 or (depth is None and now - last_t > 1.0)):
                drained = True
                break
            if now - last_t > (5.0 if depth is None else 30.0):
                break  # nothing arrives any more
            time.sleep(0.1)
        return {**last, "took": last_t - t0, "delivered": last["arrivals"] - first["arrivals"], "drained": drained,
                "depth": depth, "metrics_delivered": (m1 - m0) if m0 is not None and m1 is not None else None}

    def pair_pids(self) -> list[int]:
        return [self.active.pid, self.passive.pid]

    def wrk(self, label: str, seconds: int) -> tuple[dict[str, float], Counter[int], list[tuple[str, float]]]:
        prefix = self.work / f"client-{label}-"
        script = self.work / f"{label}.lua"
        script.write_text(LUA % {"body": self.args.body, "prefix": str(prefix)})
        cmd = ["wrk", f"-t{self.args.wrk_threads}", f"-c{self.args.clients}", f"-d{seconds}s", "--latency",
               "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{self.active.client_port}/{PROJECT}/m"]
        watch = PairWatch(self.home, self.active, self.passive)
        watch.start()
        split = {"active server process": lambda: cpu_ticks([self.active.pid], children=False),
                 "active workers": lambda: cpu_ticks([self.active.pid], only_children=True),
                 "passive": lambda: cpu_ticks([self.passive.pid])}
        split0 = {k: f() for k, f in split.items()}
        lsn0 = (self.active.status() or {}).get("lsn")
        pair0, children0 = cpu_ticks(self.pair_pids()), _children_cpu()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            watch.stop()
        wrk_cpu_s = _children_cpu() - children0  # wrk is the only child reaped meanwhile
        spent = (cpu_ticks(self.pair_pids()) - pair0) / os.sysconf("SC_CLK_TCK")
        split_s = {k: (f() - split0[k]) / os.sysconf("SC_CLK_TCK") for k, f in split.items()}
        lsn1 = (self.active.status() or {}).get("lsn")
        stats = parse_wrk(out)
        if "requests" not in stats:
            raise RuntimeError(f"wrk gave no figures:\n{out}")
        statuses: Counter[int] = Counter()
        accepted: list[tuple[str, float]] = []
        for f in sorted(self.work.glob(f"client-{label}-*.log")):
            s, a = parse_client_log(f.read_text())
            statuses += s
            accepted += a
        self.res.statuses += statuses
        n = max(1, len(accepted))
        stats.update(accepted=float(len(accepted)), rate=len(accepted) / stats["seconds"],
                     pair_cpu_us=spent * 1e6 / n, wrk_cpu_us=wrk_cpu_s * 1e6 / max(1.0, stats["requests"]))
        shares = ", ".join(f"{k} {v * 1e6 / n:.0f} us ({v / stats['seconds']:.0%} of a cpu)"
                           for k, v in split_s.items())
        if isinstance(lsn0, int) and isinstance(lsn1, int) and lsn1 > lsn0:
            commits = lsn1 - lsn0  # one lsn per store commit (accept batches and delivery-state writes)
            shares += (f"; store commits on the active: {commits:,} ({len(accepted) / commits:.1f} accepted "
                       f"messages per commit, {stats['seconds'] / commits * 1000:.2f} ms per commit)")
        shares += (f"; resident memory after it: active server process {rss_mb(self.active.pid):,.0f} MB, "
                   f"passive {rss_mb(self.passive.pid):,.0f} MB")
        self.res.cpu_split.append(f"{label}: {shares}")
        for bad in watch.problems():
            self.res.notes.append(f"{label}: {bad}")
        other = {k: v for k, v in statuses.items() if k != 202}
        print(f"  {label}: {stats['rate']:,.0f} accepted/s  p50 {stats.get('p50', 0):.2f} ms  "
              f"p99 {stats.get('p99', 0):.2f} ms  pair cpu {stats['pair_cpu_us']:.0f} us/msg  "
              f"non-202 {dict(other) or 0}  socket errors {stats['errors']:.0f}  pair {watch.summary()}\n"
              f"    per message: {shares}", flush=True)
        return stats, statuses, accepted

    # ---- phases
    def burst(self, i: int) -> None:
        self.backend("hold")
        self.backend("reset")
        st, _, accepted = self.wrk(f"burst{i}", self.args.duration)
        self.res.burst_rate.append(st["rate"])
        self.res.burst_p50.append(st.get("p50", float("nan")))
        self.res.burst_p99.append(st.get("p99", float("nan")))
        self.res.burst_cpu.append(st["pair_cpu_us"])
        self.res.wrk_cpu.append(st["wrk_cpu_us"])
        depth, _ = self.metrics()
        held = self.backend("stats")["held"]
        self.backend("ok")
        w = self.wait_delivered(len(accepted), self.args.drain_timeout)
        rate = w["delivered"] / w["took"] if w["drained"] and w["took"] > 0 else float("nan")
        self.res.drain_rate.append(rate)
        print(f"  drain{i}: queue depth {depth} after the burst ({held} held by the backend); {w['delivered']:,} "
              f"delivered in {w['took']:.1f} s ({fmt_rate(rate)}/s; gateway metrics: {w['metrics_delivered']}); "
              f"{'drained' if w['drained'] else 'NOT DRAINED'}; redeliveries {w['dups']}", flush=True)
        if not w["drained"] and not self.args.dry_run:
            self.res.notes.append(f"burst {i}: the backlog had not drained {w['took']:.0f} s after the burst "
                                  f"(queue depth {w['depth']}, {w['arrivals']:,} of {len(accepted):,} ids delivered)")
        self.res.drain_duplicates.append(int(w["dups"]))

    def sustained(self, i: int) -> None:
        self.backend("ok")
        self.backend("reset")
        st, _, accepted = self.wrk(f"sustained{i}", self.args.duration)
        w = self.wait_delivered(len(accepted), self.args.drain_timeout)
        self.backend("dump")
        arrivals = {}
        for line in self.dump.read_text().splitlines():
            k, _, v = line.partition(" ")
            arrivals[k] = float(v)
        if accepted:
            t0, t1 = min(t for _, t in accepted), max(t for _, t in accepted)
            span = max(1e-3, t1 - t0)
            in_window = sum(1 for t in arrivals.values() if t0 <= t <= t1)
            delivered_rate = in_window / span
        else:
            delivered_rate = float("nan")
        lat, missing = delivery_latencies(accepted, arrivals)
        self.res.sus_accepted.append(st["rate"])
        self.res.sus_accept_p50.append(st.get("p50", float("nan")))
        self.res.sus_accept_p99.append(st.get("p99", float("nan")))
        self.res.early.append(sum(1 for x in lat if x < 0))
        self.res.sus_delivered.append(delivered_rate if not self.args.dry_run else float("nan"))
        self.res.sus_p50.append(percentile(lat, 50))
        self.res.sus_p99.append(percentile(lat, 99))
        self.res.sus_missing.append(missing)
        self.res.sus_duplicates.append(int(w["dups"]))
        self.res.wrk_cpu.append(st["wrk_cpu_us"])
        if missing and not self.args.dry_run:
            self.res.notes.append(f"sustained {i}: {missing} messages that got a 202 had not reached the backend "
                                  f"{w['took']:.0f} s after the run (queue depth {w['depth']})")
        states = self.sample_states([mid for mid, _ in accepted[:: max(1, len(accepted) // 20)]])
        if states and set(states) != {"delivered"}:
            self.res.notes.append(f"sustained {i}: GET /_tandem/messages/<id> of {sum(states.values())} sampled "
                                  f"accepted ids: {dict(states)}")
        print(f"  sustained{i}: delivered in window {fmt_rate(delivered_rate)}/s; delivery p50 "
              f"{fmt_ms(percentile(lat, 50))} ms p99 {fmt_ms(percentile(lat, 99))} ms; not delivered {missing}; "
              f"redeliveries {w['dups']}; backlog {'drained' if w['drained'] else 'NOT drained'} {w['took']:.1f} s "
              f"after; sampled message states {dict(states)}", flush=True)

    def sample_states(self, ids: list[str]) -> Counter[str]:
        """`GET /_tandem/messages/<id>` on the active for a few ids: their states counted."""
        import httpx

        found: Counter[str] = Counter()
        with httpx.Client(base_url=f"http://127.0.0.1:{self.active.client_port}", timeout=5, trust_env=False) as c:
            for mid in ids[:50]:
                try:
                    r = c.get(f"/_tandem/messages/{mid}")
                    found[str(r.json().get("state")) if r.status_code == 200 else f"HTTP {r.status_code}"] += 1
                except (httpx.HTTPError, ValueError, AttributeError) as exc:
                    found[type(exc).__name__] += 1
        return found

    def rabbit_channel(self, fn: Any) -> Any:
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=RABBIT[0], port=RABBIT[1], credentials=pika.PlainCredentials("guest", "guest")))
        try:
            return fn(conn.channel())
        finally:
            conn.close()

    def rabbit(self, i: int) -> None:
        if not self.rabbit_declared:
            self.rabbit_channel(lambda ch: ch.queue_declare(queue=self.queue, durable=True,
                                                            arguments={"x-queue-type": "quorum"}))
            self.rabbit_declared = True
        self.rabbit_channel(lambda ch: ch.queue_purge(queue=self.queue))
        clients, procs = self.args.clients, max(1, min(self.args.rabbit_procs, self.args.clients))
        shares = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
        start_at = time.clock_gettime(MONO) + 3.0  # every connection made before the clock starts
        outs = [self.work / f"rabbit{i}-{k}.json" for k in range(procs)]
        beams = beam_pids()
        b0 = cpu_ticks(beams)
        flag = "--raw-publisher" if self.args.rabbit_client == "raw" else "--publisher"
        ps = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), flag, str(n),
                                "--queue", self.queue, "--body", str(self.args.body), "--start-at", f"{start_at:.6f}",
                                "--duration", str(self.args.duration), "--out", str(out)])
              for n, out in zip(shares, outs, strict=True)]
        self.procs += ps
        time.sleep(max(0.0, start_at - time.clock_gettime(MONO)))
        b_start = cpu_ticks(beams)
        for p in ps:
            try:
                p.wait(self.args.duration + 90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        b1 = cpu_ticks(beams)
        lat: list[float] = []
        cpu_s, errors = 0.0, []
        for out in outs:
            if out.exists():
                d = json.loads(out.read_text())
                lat += d["lat_ms"]
                cpu_s += d["cpu_s"]
                errors += d["errors"]
        n = len(lat)
        rate = n / self.args.duration
        self.res.rabbit_rate.append(rate)
        self.res.rabbit_p50.append(percentile(lat, 50))
        self.res.rabbit_p99.append(percentile(lat, 99))
        broker = (b1 - b_start) / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, n) if beams else float("nan")
        self.res.rabbit_cpu.append(broker)
        self.res.rabbit_client_cpu.append(cpu_s * 1e6 / max(1, n))
        if errors:
            self.res.notes.append(f"RabbitMQ run {i}: publisher errors: {errors[:3]}")
        depth = self.rabbit_channel(lambda ch: ch.queue_declare(queue=self.queue, passive=True).method.message_count)
        print(f"  rabbit{i}: {rate:,.0f} confirmed/s  p50 {fmt_ms(percentile(lat, 50))} ms  p99 "
              f"{fmt_ms(percentile(lat, 99))} ms  broker cpu {fmt_ms(broker)} us/msg (connect phase "
              f"{(b_start - b0) / os.sysconf('SC_CLK_TCK'):.1f} s cpu)  queue holds {depth:,}  errors {len(errors)}",
              flush=True)

    def counters_report(self) -> None:
        """The gateway's delivery counters for q at the end (accepted, delivered, attempts, refusals...)."""
        import httpx

        try:
            text = httpx.get(f"{self.active.ha}/metrics", timeout=5, trust_env=False).text
        except httpx.HTTPError as exc:
            self.res.notes.append(f"the active's /metrics did not answer at the end: {exc!r}")
            return
        found = []
        for line in text.splitlines():
            m = re.match(r'^tandem_delivery_(\w+)\{project="q"(,reason="(\w+)")?\}\s+(\S+)$', line)
            if m and not m.group(1).startswith("latency"):
                found.append(f"{m.group(1)}{'/' + m.group(3) if m.group(3) else ''}={m.group(4)}")
        if found:
            self.res.notes.append("the active gateway's delivery metrics for q at the end: " + ", ".join(found))

    def logs_report(self) -> None:
        for s in (self.active, self.passive):
            text = s.output()
            tb = text.count("Traceback (most recent call last)")
            oos = text.count("out of sync")
            if tb or oos:
                self.res.notes.append(f"{s.profile}'s log: {tb} Python tracebacks, {oos} 'out of sync' lines")


class PairWatch(threading.Thread):
    """Samples the pair every 100 ms: the active Active, the passive Passive, the LockFile naming both."""

    def __init__(self, home: Any, active: Any, passive: Any) -> None:
        super().__init__(daemon=True)
        self.home, self.active, self.passive = home, active, passive
        self.samples: list[tuple[str | None, str | None, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set() and len(self.samples) < 100_000:
            self.samples.append((self.active.state(), self.passive.state(), len(self.home.in_sync(PAIR, "AGS"))))
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def bad(self) -> list[tuple[str | None, str | None, int]]:
        return [s for s in self.samples if s != ("Active", "Passive", 2)]

    def problems(self) -> list[str]:
        bad = self.bad()
        if not bad:
            return []
        return [f"the pair was not Active + Passive + in sync in {len(bad)} of {len(self.samples)} samples "
                f"(e.g. {Counter(bad).most_common(2)})"]

    def summary(self) -> str:
        return f"ok in {len(self.samples) - len(self.bad())}/{len(self.samples)} samples"


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children so far (a child's time counts once it is waited for)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each burst, sustained and RabbitMQ run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--body", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=0, help="gateway.Workers of both halves (0: one per core)")
    ap.add_argument("--in-process", action="store_true",
                    help="with --workers 1: the gateway serves inside the server process (no worker handoff)")
    ap.add_argument("--skip-sustained", action="store_true", help="bursts (and RabbitMQ) only")
    ap.add_argument("--access-log", action="store_true", help="the gateway's access log on (off by default)")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--rabbit-client", choices=("raw", "pika"), default="raw",
                    help="raw: AMQP 0-9-1 on asyncio+uvloop (cheap on CPU); pika: BlockingConnection threads")
    ap.add_argument("--rabbit-procs", type=int, default=2, help="publisher processes the clients are spread over")
    ap.add_argument("--drain-timeout", type=float, default=180)
    ap.add_argument("--skip-rabbitmq", action="store_true")
    ap.add_argument("--skip-tandem", action="store_true", help="fsync and RabbitMQ only (no pair started)")
    ap.add_argument("--dry-run", action="store_true", help="no delivery policy: the backend fakes the 202s")
    ap.add_argument("--write", type=Path, default=None)
    # internal: the processes this script starts
    ap.add_argument("--backend", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dump", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fake-accept", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--publisher", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--raw-publisher", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--queue", default="", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend is not None:
        backend_main(args.backend, args.dump, args.fake_accept)
        return 0
    if args.publisher is not None:
        publisher_main(args.publisher, args.queue, args.body, args.start_at, args.duration, args.out)
        return 0
    if args.raw_publisher is not None:
        raw_publisher_main(args.raw_publisher, args.queue, args.body, args.start_at, args.duration, args.out)
        return 0
    if args.in_process and args.workers != 1:
        ap.error("--in-process needs --workers 1")
    if not args.skip_tandem and shutil.which("wrk") is None:
        print("bench/delivery.py needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if not args.skip_rabbitmq:
        from tests.support.harness import port_open

        try:
            import pika  # noqa: F401
        except ImportError:
            print("the RabbitMQ side needs pika (pip install 'pika>=1.3,<2'), or --skip-rabbitmq", file=sys.stderr)
            return 2
        if not port_open(RABBIT[1]):
            print(f"nothing listens on {RABBIT[0]}:{RABBIT[1]} (RabbitMQ); or --skip-rabbitmq", file=sys.stderr)
            return 2
    started = datetime.now(UTC)
    code_before = code_state()
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-delivery-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            if args.skip_tandem:
                folder = Path(tmp)
            else:
                print(f"starting the AMS, the {PAIR} AGS pair (sync) and the backend in {tmp}", flush=True)
                bench.start()
                folder = Path(bench.active.prof.db_path)
            folder = folder if folder.is_dir() else folder.parent
            bench.res.rabbit_client = args.rabbit_client
            bench.res.clients, bench.res.body, bench.res.runs = args.clients, args.body, args.runs
            bench.res.duration = args.duration
            rate, p50, p99 = fsync_rate(folder)
            bench.res.fsync_rate, bench.res.fsync_p50, bench.res.fsync_p99 = rate, p50, p99
            print(f"fsync: {rate:,.0f}/s p50 {p50:.3f} ms p99 {p99:.3f} ms ({folder})", flush=True)
            for i in range(args.runs):
                order = ["tandem", "rabbit"] if i % 2 == 0 else ["rabbit", "tandem"]
                for side in order:
                    if side == "tandem" and not args.skip_tandem:
                        bench.burst(i)
                    elif side == "rabbit" and not args.skip_rabbitmq:
                        bench.rabbit(i)
            if not args.skip_tandem:
                for i in range(0 if args.skip_sustained else args.runs):
                    bench.sustained(i)
                bench.counters_report()
                bench.logs_report()
            bench.res.fsync_end = fsync_rate(folder)[0]
            print(f"fsync at the end: {bench.res.fsync_end:,.0f}/s", flush=True)
        finally:
            bench.close()
    minutes = (time.monotonic() - t0) / 60
    load_after = os.getloadavg()
    code_after = code_state()
    code = code_before if code_after == code_before else f"{code_before} (at the end: {code_after})"
    machine = (f"{code}; {os.cpu_count()} cpus ({cpu_model()}), shared with other work; no pinning; load average "
               f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; gateway.Workers={args.workers} "
               f"(0: one per core){', in the server process' if args.in_process else ''}, access log {'on' if args.access_log else 'off'}; wrk -t{args.wrk_threads}; "
               f"RabbitMQ publishers: {args.rabbit_client} client in {args.rabbit_procs} processes")
    cmd = " ".join([".venv/bin/python bench/delivery.py", *sys.argv[1:]])
    section = render_section(bench.res, cmd, machine, started.strftime("%Y-%m-%d %H:%M UTC"), minutes)
    print()
    print(section)
    if args.write is not None:
        if args.dry_run or args.skip_tandem:
            print("--dry-run / --skip-tandem: nothing written", file=sys.stderr)
        else:
            from failover import write_section

            write_section(args.write, SECTION, section)
            print(f"wrote the ## {SECTION} section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
