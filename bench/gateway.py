"""Tandem's gateway against nginx and HAProxy, per BENCH-METHOD.md (the shared bench method).

    .venv/bin/python bench/gateway.py [--runs 5] [--duration 10] [--warmup 3] [--write docs/benchmarks.md]
    .venv/bin/python bench/gateway.py --only default,default-keyauth,consumers,scaling
    .venv/bin/python bench/gateway.py --ab /tmp/old/src [--only one,keyauth]    # this tree vs an older one

Every proxy sits in front of the same nginx backend (a fixed ~90-byte body), measured in one run,
interleaved (the order rotates each run: nginx HAProxy Tandem, HAProxy Tandem nginx, ...), with the
same wrk settings (`wrk -t1 -c50 -dD --latency`, after a warm-up) and the same pinning: backend nginx
and wrk on cpu 0, the proxy alone on cpu 1 (nginx `worker_processes 1`, HAProxy `nbthread 1` with
`http-reuse always`, Tandem `Workers = 1`). Medians; ratios are Tandem / peer.

Tandem's **default configuration** is what a user gets: `tandem server -mode AGS` through the CLI on a
fresh home, `gateway.Workers = 1` (one worker process), the access log on, its configuration
deployed from a real AMS (`tandem server -mode AMS` on the same home, pinned to cpu 0: consumers
imported through `POST /api/v1/import`, projects created with `POST /api/v1/projects` and deployed
with `POST /api/v1/projects/{name}/deploy`). Tuned rows change one thing each and say which.

Scenarios (`--only`, comma-separated; all by default):

* `default` - default configuration, no policies (three-way: nginx, HAProxy, Tandem);
* `log` - access log off; `process` - in the server process (TANDEM_GATEWAY_INPROCESS=1);
  `one` - both (the fastest set-up); `pure` - the hot path as Python (TANDEM_NATIVE=0, docs/native.md:
  every other Tandem row runs the mypyc build `make` compiles); `floor` - a minimal raw Python proxy
  (what Python costs at least);
* `default-keyauth` - default configuration with api-key + node rate-limit on every project;
  `keyauth` - the same, access log off;
* `n`, `keyauth-n` - N workers (N = cpu count) vs nginx with N workers, every process on every cpu;
* `routing` - 10 vs 10,000 projects (stored in the AGS's store before start: the AMS checks every new
  project's routes against all others, too slow for 10,000), plus the router's lookup alone;
* `consumers` - api-key + rate-limit with 10 vs 100,000 consumers (deployed from the AMS);
* `scaling` - Workers = 1 (cpu 1) vs Workers = 2 (cpus 0-1), same load; with 2 cores wrk cannot be
  elsewhere, so the scaling figure is derived from the proxy's CPU per request (see the section).

The `## Gateway` and `## Gateway with policies` sections of `--write` (docs/benchmarks.md) are
replaced with the tables, the command and the goals of issue 19 with a MET/MISSED verdict each.

`--ab SRC`: an A/B of two versions of Tandem instead: this tree and the `src` folder of another
checkout (run with `PYTHONPATH=SRC`), each as one worker process on cpu 1, interleaved, same wrk
settings; `one` is the plain scenario, `one-log` with the access log, `keyauth` api-key + rate-limit.
Printed, not written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.support

from tests.support.ags import make_document, project  # noqa: E402
from tests.support.harness import free_port, stop_process, wait_for  # noqa: E402

BODY = '{"ok":true,"service":"bench-backend","note":"a fixed body of about ninety bytes, padded.."}'
TOKEN = "bench-gateway-admin-token"  # the AMS's admin token, also the gateways' token
NGINX_COMMON = """daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  {body}
}}
"""
BACKEND = """server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type application/json; return 200 '{body}'; }} }}"""
PROXY = """upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""


def haproxy_config(port: int, backend: int, threads: int = 1) -> str:
    """HAProxy in front of the backend: HTTP mode, keep-alive both sides (`http-reuse always` keeps the
    upstream connections open and shared), no logging, generous timeouts, room for 50+ clients."""
    return "\n".join([
        "global",
        f"    nbthread {threads}",
        "    maxconn 4000",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    http-reuse always",
        "    maxconn 4000",
        "    timeout connect 5s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout http-keep-alive 120s",
        "frontend fe",
        f"    bind 127.0.0.1:{port} backlog 4096",
        "    default_backend be",
        "backend be",
        f"    server backend 127.0.0.1:{backend} maxconn 1000",
        "",
    ])


# The "floor": the minimal design BENCH-METHOD measured (raw asyncio protocols, uvloop, httptools both
# sides, pooled upstream), with no routing, no header rewriting, no metrics. What Python costs at least.
FLOOR = r"""
import asyncio, sys, uvloop, httptools
UP = ("127.0.0.1", int(sys.argv[2]))
pool = []
class Up(asyncio.Protocol):
    def __init__(s): s.p = httptools.HttpResponseParser(s); s.cli = None
    def connection_made(s, t): s.t = t
    def connection_lost(s, e):
        if s in pool: pool.remove(s)
    def on_header(s, n, v): s.h.append((n, v))
    def on_headers_complete(s):
        out = [b"HTTP/1.1 %d OK\r\n" % s.p.get_status_code()]
        for n, v in s.h:
            if n.lower() != b"connection": out += [n, b": ", v, b"\r\n"]
        out.append(b"\r\n"); s.out = out
    def on_body(s, b): s.out.append(b)
    def on_message_complete(s): s.done = True
    def data_received(s, d):
        s.done = False; s.h = []
        s.p.feed_data(d)
        if s.done:
            c, s.cli = s.cli, None
            pool.append(s)
            if not c.t.is_closing(): c.t.writelines(s.out)
class Cli(asyncio.Protocol):
    def connection_made(s, t): s.t = t; s.p = httptools.HttpRequestParser(s)
    def on_url(s, u): s.url += u
    def on_header(s, n, v): s.h.append((n, v))
    def on_headers_complete(s):
        out = [s.p.get_method(), b" ", s.url, b" HTTP/1.1\r\n"]
        for n, v in s.h: out += [n, b": ", v, b"\r\n"]
        out.append(b"\r\n")
        if pool:
            u = pool.pop(); u.cli = s; u.t.writelines(out)
        else:
            asyncio.get_running_loop().create_task(s.connect(out))
    async def connect(s, out):
        _, u = await asyncio.get_running_loop().create_connection(Up, *UP)
        u.cli = s; u.t.writelines(out)
    def data_received(s, d): s.h = []; s.url = b""; s.p.feed_data(d)
async def main():
    await asyncio.get_running_loop().create_server(Cli, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await asyncio.Event().wait()
uvloop.run(main())
"""


class Floor:
    def __init__(self, backend: int, cpuset: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(["taskset", "-c", cpuset, sys.executable, "-c", FLOOR, str(self.port),
                                      str(backend)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{self.port}/"],
                                        capture_output=True).returncode == 0, 10, "floor proxy")

    def stop(self) -> None:
        stop_process(self.proc)


def curl_ok(port: int, path: str = "/", headers: list[str] | None = None) -> bool:
    cmd = ["curl", "-sf", "-o", "/dev/null"]
    for h in headers or []:
        cmd += ["-H", h]
    return subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True).returncode == 0


def cpu_model() -> str:
    """The CPU's model name: ratios against nginx differ between CPU kinds (see docs/benchmarks.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def pid_ticks(pid: int) -> dict[int, int]:
    """utime + stime, in clock ticks, of a process and of each of its children (nginx workers, gateway
    workers), by pid."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    out: dict[int, int] = {}
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[p] = int(fields[11]) + int(fields[12])
    return out


def cpu_ticks(pid: int) -> int:
    return sum(pid_ticks(pid).values())


def top_child_share(pid: int, before: dict[int, int], after: dict[int, int]) -> float:
    """The busiest child's share of the children's CPU time between two samples (nan under 2 children):
    0.5 with 2 workers is an even split; 1.0 means one worker did all the work."""
    spent = [after[p] - before.get(p, 0) for p in after if p != pid]
    return max(spent) / sum(spent) if len(spent) >= 2 and sum(spent) > 0 else float("nan")


class Nginx:
    def __init__(self, work: Path, name: str, workers: int, server_block: str, cpuset: str) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True)
        conf = f"worker_processes {workers};\n" + NGINX_COMMON.format(dir=self.dir, body=server_block)
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["taskset", "-c", cpuset, "nginx", "-c", str(self.dir / "nginx.conf"),
                                      "-p", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        stop_process(self.proc)


class HAProxy:
    """One HAProxy process in the foreground (`-db`), its config in the work folder; stopped by pid."""

    def __init__(self, work: Path, name: str, backend: int, cpuset: str, threads: int = 1) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        conf = self.dir / "haproxy.cfg"
        conf.write_text(haproxy_config(self.port, backend, threads))
        self.log = open(self.dir / "haproxy.out", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(["taskset", "-c", cpuset, "haproxy", "-db", "-f", str(conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.dir / 'haproxy.out').read_text()[-2000:]}")
            return curl_ok(self.port)
        wait_for(up, 10, "haproxy proxy", interval=0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def _tandem_cli(home: Path) -> list[str]:
    return [sys.executable, "-m", "tandem.cli.main", "--home", str(home)]


class Tandem:
    """An AGS through the CLI on a fresh home, its configuration stored in its store before it starts
    (the stored configuration is served before any AMS is reached): for 10,000 projects and --ab."""

    def __init__(self, work: Path, name: str, backend: int, projects: int, workers: int, cpuset: str,
                 in_process: bool = False, access_log: bool = True, policies: list[dict[str, Any]] | None = None,
                 consumers: list[dict[str, Any]] | None = None, src: Path | None = None) -> None:
        from tandem.store import Op, open_store

        self.home = work / name
        self.port, ha = free_port(), free_port()
        cli = _tandem_cli(self.home)
        subprocess.run([*cli, "home", "init", str(self.home)], check=True, capture_output=True)
        subprocess.run([*cli, "profile", "set", "server1/AGS", f"server.ClientPort={self.port}",
                        f"server.HAPort={ha}", f"gateway.Workers={workers}",
                        f"gateway.AccessLog={'true' if access_log else 'false'}",
                        f"ha.PrimaryURL=http://127.0.0.1:{free_port()}"], check=True, capture_output=True)
        store = open_store(str(self.home / "profiles" / "server1" / "AGS" / "data"))
        doc = make_document([project(f"p{i}", f"/api{i}", f"http://127.0.0.1:{backend}/", policies=policies or [])
                             for i in range(projects)], consumers=consumers)
        store.commit([Op("gateway", "config", doc)])
        store.close()
        env = dict(os.environ, TANDEM_GATEWAY_INPROCESS="1" if in_process else "0")
        if src is not None:  # another checkout's code (--ab)
            env["PYTHONPATH"] = str(src)
        self.log = open(work / f"{name}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(["taskset", "-c", cpuset, *cli, "server", "-mode", "AGS", "-profile",
                                      "server1", "-nobackground"], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        import httpx

        wait_for(lambda: httpx.get(f"http://127.0.0.1:{ha}/ha/active", timeout=2).status_code == 200, 30,
                 f"Tandem gateway {name}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def consumer_records(count: int, bench_key: str) -> list[dict[str, Any]]:
    """`count` consumers for an AMS import (ConsumerRecord), each with one API key (its sha256 only);
    the first is `bench`, whose clear key is `bench_key`. 100,000 take well under a second."""
    at = "2026-11-25T10:00:00Z"
    out = [{"name": "bench", "keys": [{"id": "kbench", "sha256": hashlib.sha256(bench_key.encode()).hexdigest(),
                                       "created_at": at}]}]
    for i in range(1, count):
        out.append({"name": f"c{i}", "keys": [{"id": f"k{i}", "sha256": hashlib.sha256(b"tk_gen-%d" % i).hexdigest(),
                                               "created_at": at}]})
    return out


class TandemDeployed:
    """Tandem as users run it: an AMS and an AGS (`tandem server -mode AMS|AGS -profile server1`) on one
    fresh home, the AGS's `ha.PrimaryURL` at the AMS; consumers imported (`POST /api/v1/import`), the
    10 projects created and deployed through the admin API; ready once the AGS serves `path`."""

    def __init__(self, work: Path, name: str, backend: int, workers: int, cpuset: str, path: str,
                 in_process: bool = False, access_log: bool = True, policies: list[dict[str, Any]] | None = None,
                 consumers: int = 0, projects: int = 10, pure: bool = False) -> None:
        import httpx

        self.home = work / name
        self.port, ha = free_port(), free_port()
        ams_port, ams_ha = free_port(), free_port()
        self.ams_url = f"http://127.0.0.1:{ams_port}"
        cli = _tandem_cli(self.home)
        subprocess.run([*cli, "home", "init", str(self.home)], check=True, capture_output=True)
        subprocess.run([*cli, "profile", "set", "server1/AMS", f"server.ClientPort={ams_port}",
                        f"server.HAPort={ams_ha}", f"admin.AdminMaxBodyBytes={512 * 1024 * 1024}"], check=True,
                       capture_output=True)
        subprocess.run([*cli, "profile", "set", "server1/AGS", f"server.ClientPort={self.port}",
                        f"server.HAPort={ha}", f"gateway.Workers={workers}",
                        f"gateway.AccessLog={'true' if access_log else 'false'}",
                        f"ha.PrimaryURL={self.ams_url}"], check=True, capture_output=True)
        self.procs: list[subprocess.Popen[Any]] = []
        self.logs = [open(work / f"{name}-ams.log", "w"), open(work / f"{name}.log", "w")]  # noqa: SIM115
        env = dict(os.environ, TANDEM_ADMIN_TOKEN=TOKEN)
        # the AMS shares cpu 0 with the backend and wrk: during a run it only holds the AGS's long poll
        self.ams = subprocess.Popen(["taskset", "-c", "0", *cli, "server", "-mode", "AMS", "-profile", "server1",
                                     "-nobackground"], stdout=self.logs[0], stderr=subprocess.STDOUT, env=env)
        self.procs.append(self.ams)
        api = httpx.Client(base_url=self.ams_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300,
                           trust_env=False)
        try:
            def ams_up() -> bool:
                if self.ams.poll() is not None:
                    raise RuntimeError(f"AMS {name} exited: {(work / f'{name}-ams.log').read_text()[-2000:]}")
                return httpx.get(f"http://127.0.0.1:{ams_ha}/ha/active", timeout=2).status_code == 200
            wait_for(ams_up, 30, f"AMS {name}", interval=0.05)
            t = time.monotonic()
            self.steps: dict[str, float] = {}  # seconds per set-up step
            if consumers:
                body = json.dumps({"format": "tandem-ams", "version": 1,
                                   "consumers": consumer_records(consumers, BENCH_KEY)})
                r = api.post("/api/v1/import", content=body, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    raise RuntimeError(f"import of {consumers} consumers: {r.status_code} {r.text[:500]}")
                self.steps["import"] = time.monotonic() - t
            for i in range(projects):
                r = api.post("/api/v1/projects", json={"name": f"p{i}", "context_path": f"/api{i}", "targets": [
                    {"url": f"http://127.0.0.1:{backend}/"}], "policies": policies or []})
                if r.status_code != 201:
                    raise RuntimeError(f"POST /api/v1/projects: {r.status_code} {r.text[:500]}")
            genv = dict(os.environ, TANDEM_GATEWAY_INPROCESS="1" if in_process else "0", TANDEM_GATEWAY_TOKEN=TOKEN)
            if pure:  # the Python sources, not the compiled hot path (docs/native.md)
                genv["TANDEM_NATIVE"] = "0"
            self.proc = subprocess.Popen(["taskset", "-c", cpuset, *cli, "server", "-mode", "AGS", "-profile",
                                          "server1", "-nobackground"], stdout=self.logs[1], stderr=subprocess.STDOUT,
                                         env=genv)
            self.procs.append(self.proc)
            jobs = []
            for i in range(projects):
                r = api.post(f"/api/v1/projects/p{i}/deploy", json={"environment": "default"})
                if r.status_code != 202:
                    raise RuntimeError(f"deploy p{i}: {r.status_code} {r.text[:500]}")
                jobs.append(r.json()["id"])

            def deployed() -> bool:
                return all(api.get(f"/api/v1/deployments/{job}").json().get("status") == "deployed" for job in jobs)
            wait_for(deployed, 120, f"{name}: {len(jobs)} deployments", interval=0.1)
            self.steps["create, start the AGS, deploy"] = time.monotonic() - t - sum(self.steps.values())
            headers = [f"X-API-Key: {BENCH_KEY}"] if consumers else []

            def serving() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"AGS {name} exited: {(work / f'{name}.log').read_text()[-2000:]}")
                return curl_ok(self.port, path, headers)
            wait_for(serving, 180, f"AGS {name} serving {path}", interval=0.2)
            self.setup_s = time.monotonic() - t
            self.steps["served"] = self.setup_s - sum(self.steps.values())
        except BaseException:
            api.close()
            self.stop()
            raise
        api.close()

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p, 15)
        for f in self.logs:
            f.close()


HEADERS: dict[int, list[str]] = {}  # port -> request headers wrk sends to it


def wrk(port: int, path: str, duration: int, cpuset: str, latency: bool = True, pid: int = 0) -> dict[str, float]:
    cmd = ["taskset", "-c", cpuset, "wrk", "-t1", "-c50", f"-d{duration}s"]
    for h in HEADERS.get(port, []):
        cmd += ["-H", h]
    if latency:
        cmd.append("--latency")
    before = pid_ticks(pid) if pid else {}
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    after = pid_ticks(pid) if pid else {}
    spent = sum(after.values()) - sum(before.values())
    return parse_wrk(out, spent / os.sysconf("SC_CLK_TCK") if pid else None,
                     top_child_share(pid, before, after) if pid else float("nan"))


def parse_wrk(out: str, cpu_s: float | None = None, top_share: float = float("nan")) -> dict[str, float]:
    """wrk's output -> rps, non2xx, p50/p99 (ms), cpu_us (proxy CPU per request, from `cpu_s` seconds)."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    c = re.search(r"(\d+) requests in", out)
    if m is None or c is None:
        raise RuntimeError(f"wrk printed no result: {out[-500:]!r}")
    count = float(c.group(1))
    res = {"rps": float(m.group(1)),
           "non2xx": float(n.group(1)) if (n := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0.0,
           "cpu_us": cpu_s * 1e6 / count if cpu_s is not None and count else float("nan"), "top_share": top_share}
    for pct in ("50", "99"):
        p = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if p:
            res[f"p{pct}"] = float(p.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p.group(2)]
    return res


Contestant = tuple[str, int, str, int]  # name, port, path, pid whose CPU time is counted


def rotation(n: int, i: int) -> list[int]:
    """The order of the contestants in run i: rotated by one each run (A B C, B C A, C A B, ...)."""
    return [(i + k) % n for k in range(n)]


def duel(contestants: list[Contestant], runs: int, duration: int, warmup: int,
         wrk_cpus: str) -> dict[str, list[dict[str, float]]]:
    """Interleaved runs of N contestants, the order rotated each run so none always goes first."""
    results: dict[str, list[dict[str, float]]] = {c[0]: [] for c in contestants}
    for _, port, path, _ in contestants:
        wrk(port, path, warmup, wrk_cpus, latency=False)
    for i in range(runs):
        for k in rotation(len(contestants), i):
            name, port, path, pid = contestants[k]
            r = wrk(port, path, duration, wrk_cpus, pid=pid)
            results[name].append(r)
            print(f"  run {i + 1}/{runs} {name:<16} {r['rps']:>9.0f} req/s  p50 {r.get('p50', 0):.2f} ms  "
                  f"p99 {r.get('p99', 0):.2f} ms  cpu {r['cpu_us']:.1f} us/req  non-2xx {r['non2xx']:.0f}",
                  flush=True)
    return results


def med(rs: list[dict[str, float]], key: str) -> float:
    vals = [r.get(key, float("nan")) for r in rs]
    return statistics.median(vals) if vals else float("nan")


def spread(rs: list[dict[str, float]]) -> str:
    vals = [r["rps"] for r in rs]
    return f"{(max(vals) - min(vals)) / statistics.median(vals) * 100:.0f}%" if vals else "-"


def router_lookup_ns(projects: int) -> float:
    from tandem.ags.compiled_config import compile_config

    cfg = compile_config(make_document([project(f"p{i}", f"/api{i}/v1", "http://h/") for i in range(projects)]),
                         lambda t: None, lambda n: None, 5.0, 60.0)
    path = b"/api7/v1/pets/42/photos"
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(100_000):
            cfg.router.match(path, b"", b"GET")
        best = min(best, time.perf_counter() - t)
    return best / 100_000 * 1e9


# ---------------------------------------------------------------- results and their rendering (tests/unit)

PEERS = ("nginx", "haproxy", "tandem")
PEER_NAMES = {"nginx": "nginx", "haproxy": "HAProxy", "tandem": "Tandem"}
TABLE_HEAD = ("| scenario | nginx req/s | HAProxy req/s | Tandem req/s | Tandem / nginx | Tandem / HAProxy | "
              "p50 ms nginx / HAProxy / Tandem | p99 ms nginx / HAProxy / Tandem | p99 Tandem / nginx | "
              "proxy CPU us/request nginx / HAProxy / Tandem | run spread nginx / HAProxy / Tandem |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")


@dataclass
class Row:
    """One comparison: `res` holds each contestant's runs ("nginx", "tandem", and "haproxy" when it ran)."""

    key: str
    label: str
    res: dict[str, list[dict[str, float]]]
    policies: bool = False  # rendered in the "Gateway with policies" section

    def m(self, who: str, what: str) -> float:
        return med(self.res[who], what) if who in self.res else float("nan")

    def ratio(self, peer: str, what: str = "rps") -> float:
        return self.m("tandem", what) / self.m(peer, what) if peer in self.res else float("nan")


def _fmt(x: float, f: str) -> str:
    return "-" if x != x else format(x, f)  # nan -> "-"


def _bold_x(x: float) -> str:
    return "-" if x != x else f"**{x:.2f}x**"


def render_row(row: Row) -> str:
    def each(what: str, f: str) -> str:
        return " / ".join(_fmt(row.m(w, what), f) for w in PEERS)
    spreads = " / ".join(spread(row.res[w]) if w in row.res else "-" for w in PEERS)
    return (f"| {row.label} | {_fmt(row.m('nginx', 'rps'), ',.0f')} | {_fmt(row.m('haproxy', 'rps'), ',.0f')} | "
            f"{_fmt(row.m('tandem', 'rps'), ',.0f')} | {_bold_x(row.ratio('nginx'))} | {_bold_x(row.ratio('haproxy'))} | "
            f"{each('p50', '.2f')} | {each('p99', '.2f')} | {_bold_x(row.ratio('nginx', 'p99'))} | "
            f"{each('cpu_us', '.1f')} | {spreads} |")


@dataclass
class Flat:
    """Per-request cost, small vs big configuration (10 vs 10,000 projects, 10 vs 100,000 consumers)."""

    small: str
    big: str
    res: dict[str, list[dict[str, float]]]
    lookup_ns: tuple[float, float] | None = None  # router lookup alone, small / big

    @property
    def cpu_change(self) -> float:
        return med(self.res[self.big], "cpu_us") / med(self.res[self.small], "cpu_us") - 1

    @property
    def wall_change(self) -> float:
        return med(self.res[self.small], "rps") / med(self.res[self.big], "rps") - 1

    def render(self) -> str:
        lines = []
        for i, name in enumerate((self.small, self.big)):
            rps, cpu = med(self.res[name], "rps"), med(self.res[name], "cpu_us")
            look = f" {self.lookup_ns[i]:.0f} |" if self.lookup_ns else ""
            lines.append(f"| {name} | {rps:,.0f} | {1e6 / rps:.1f} | {cpu:.1f} | {med(self.res[name], 'p99'):.2f} "
                         f"|{look}")
        return "\n".join(lines)


@dataclass
class Scaling:
    """Workers = 1 vs Workers = 2 under the same load (wrk and the backend on cpu 0)."""

    res: dict[str, list[dict[str, float]]]  # "1 worker", "2 workers"

    @property
    def cpu_us(self) -> tuple[float, float]:
        return med(self.res["1 worker"], "cpu_us"), med(self.res["2 workers"], "cpu_us")

    @property
    def rps(self) -> tuple[float, float]:
        return med(self.res["1 worker"], "rps"), med(self.res["2 workers"], "rps")

    @property
    def busy_one(self) -> float:
        """How busy the one worker kept its cpu (proxy CPU s per s): near 1.0 means CPU-bound."""
        return self.rps[0] * self.cpu_us[0] / 1e6

    @property
    def derived(self) -> float:
        """2 workers' capacity on 2 free cores over one worker's on one: 2 x (CPU/request at 1 worker) /
        (CPU/request at 2 workers); exactly 2.0 when the per-request CPU does not grow."""
        one, two = self.cpu_us
        return 2 * one / two

    @property
    def split(self) -> float:
        return med(self.res["2 workers"], "top_share")


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    routing: Flat | None = None
    consumers: Flat | None = None
    scaling: Scaling | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)


GOAL_TEXT = ("Goals (issue 19, default configuration): no policies >= 0.80x nginx and >= 0.90x HAProxy; "
             "api-key + rate-limit >= 0.70x nginx; p99 <= 1.5x nginx's; per-request cost flat within 5% to "
             "10,000 projects and 100,000 consumers; 2 workers >= 1.7x one.")


def verdicts(r: Results) -> list[tuple[str, str, str]]:
    """(goal, measured, MET / MISSED / not measured) for each goal of issue 19."""
    def check(goal: str, value: float | None, fmt: str, ok: Any) -> tuple[str, str, str]:
        if value is None or value != value:
            return goal, "-", "not measured"
        return goal, format(value, fmt), "MET" if ok(value) else "MISSED"
    d, k = r.row("default"), r.row("default-keyauth")
    out = [
        check("no policies >= 0.80x nginx", d.ratio("nginx") if d else None, ".2f", lambda v: v >= 0.80),
        check("no policies >= 0.90x HAProxy", d.ratio("haproxy") if d else None, ".2f", lambda v: v >= 0.90),
        check("api-key + rate-limit >= 0.70x nginx", k.ratio("nginx") if k else None, ".2f", lambda v: v >= 0.70),
        check("p99 <= 1.5x nginx's (no policies)", d.ratio("nginx", "p99") if d else None, ".2f",
              lambda v: v <= 1.5),
        check("p99 <= 1.5x nginx's (api-key + rate-limit)", k.ratio("nginx", "p99") if k else None, ".2f",
              lambda v: v <= 1.5),
        check("CPU/request at 10,000 projects within 5% of 10", r.routing.cpu_change if r.routing else None, "+.1%",
              lambda v: abs(v) <= 0.05),
        check("CPU/request at 100,000 consumers within 5% of 10", r.consumers.cpu_change if r.consumers else None,
              "+.1%", lambda v: abs(v) <= 0.05),
        check("2 workers >= 1.7x one (derived from CPU/request)", r.scaling.derived if r.scaling else None, ".2f",
              lambda v: v >= 1.7),
    ]
    if r.scaling:  # the raw req/s ratio beside the derived one
        g, v, x = out[-1]
        out[-1] = (g, f"{v} (raw req/s {r.scaling.rps[1] / r.scaling.rps[0]:.2f}x)", x)
    return out


def command(args: argparse.Namespace) -> str:
    return "python bench/gateway.py" + (f" --runs {args.runs}" if args.runs != 5 else "") + \
        (f" --duration {args.duration}" if args.duration != 10 else "") + \
        (f" --warmup {args.warmup}" if args.warmup != 3 else "") + (f" --only {args.only}" if args.only else "")


def method_text(args: argparse.Namespace) -> str:
    return (f"`wrk -t1 -c50 -d{args.duration}s --latency` after a {args.warmup} s warm-up, {args.runs} interleaved "
            "runs per contestant (the order rotated each run), medians. nginx backend (1 worker, cpu 0, with wrk) "
            "returns a fixed ~90-byte body. One-worker rows: each proxy alone on cpu 1; nginx `proxy_pass` with "
            "`keepalive 64`, `access_log off`, `worker_processes 1`; HAProxy 1 thread (`nbthread 1`), `mode http`, "
            "`option http-keep-alive`, `http-reuse always`, no log. Tandem **default**: `tandem server -mode AGS` "
            "through the CLI, `Workers = 1` (one worker process), access log on, configuration deployed from an "
            "AMS (`tandem server -mode AMS`, cpu 0; projects created and deployed through its admin API), "
            "per-project metrics on, X-Request-Id and X-Forwarded-* added to every request. Tuned rows say what "
            "they change from the default.")


def render(args: argparse.Namespace, r: Results, n: int, before: tuple[float, float, float],
           after: tuple[float, float, float], minutes: float) -> str:
    rows = [row for row in r.rows if not row.policies]
    out = [
        "## Gateway",
        "",
        f"`{command(args)}` — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {n} cpus ({cpu_model()}), "
        f"{minutes:.0f} min; load average {before[0]:.1f} before, {after[0]:.1f} after "
        "(other jobs share this machine: read the ratios, not the absolute figures).",
        "",
        method_text(args),
        "",
    ]
    if rows:
        out += [TABLE_HEAD, *map(render_row, rows), ""]
    out += ["Proxy CPU us/request: user + system time of the proxy's processes during the run / requests served "
            "(the least noisy figure on a shared machine)." + busy_text(r)]
    if r.routing:
        out += ["", "Per-request cost and routing (Tandem, default configuration except that the projects are "
                "stored in the AGS's store before start: the AMS checks each new project's routes against all "
                "the others, too slow for 10,000; 1 worker process on cpu 1; the two interleaved):", "",
                "| configuration | req/s | wall us per request | CPU us per request | p99 ms | router lookup, ns |",
                "|---|---|---|---|---|---|", r.routing.render(), "",
                f"CPU per request at 10,000 projects vs 10: **{r.routing.cpu_change:+.1%}**; wall time per "
                f"request {r.routing.wall_change:+.1%}"
                + (f"; router lookup alone {r.routing.lookup_ns[1] / r.routing.lookup_ns[0] - 1:+.1%}"
                   if r.routing.lookup_ns else "") + "."]
    if r.consumers:
        out += ["", "Per-request cost and consumers (Tandem default configuration with api-key + node rate-limit "
                "on every project; 10 vs 100,000 consumers, each with one API key, imported into the AMS with "
                "`POST /api/v1/import` and deployed; wrk sends the key of consumer `bench`, one of them):", "",
                "| configuration | req/s | wall us per request | CPU us per request | p99 ms |",
                "|---|---|---|---|---|", r.consumers.render(), "",
                f"CPU per request at 100,000 consumers vs 10: **{r.consumers.cpu_change:+.1%}**; wall time per "
                f"request {r.consumers.wall_change:+.1%}."]
    if r.scaling:
        s = r.scaling
        out += ["", "Workers scaling (Tandem default configuration, `Workers = 1` on cpu 1 vs `Workers = 2` on cpus "
                "0-1; wrk and the backend on cpu 0 in both, interleaved):", "",
                "| configuration | req/s | CPU us per request | p99 ms | busiest worker's share of the CPU |",
                "|---|---|---|---|---|",
                f"| Workers = 1 | {s.rps[0]:,.0f} | {s.cpu_us[0]:.1f} | {med(s.res['1 worker'], 'p99'):.2f} | - |",
                f"| Workers = 2 | {s.rps[1]:,.0f} | {s.cpu_us[1]:.1f} | {med(s.res['2 workers'], 'p99'):.2f} | "
                f"{_fmt(s.split, '.0%')} |", "",
                f"Method: this machine has {n} cores, so the load generator cannot be elsewhere and the raw req/s "
                f"of 2 workers ({s.rps[1] / s.rps[0]:.2f}x one) is capped by wrk and the backend sharing cpu 0 with "
                f"the second worker. The scaling figure is derived from the proxy's CPU per request instead: with "
                f"a free core per worker, N workers serve N / (CPU per request) requests/s, so 2 workers give "
                f"2 x {s.cpu_us[0]:.1f} / {s.cpu_us[1]:.1f} = **{s.derived:.2f}x** one worker (2.00x if the "
                f"per-request CPU stays the same; above 2.00x the per-request CPU fell with 2 workers, e.g. one worker "
                f"sharing its cpu with the server process, which this derivation cannot separate). One worker kept its cpu {s.busy_one:.0%} busy"
                + (" (CPU-bound: its req/s is its capacity)." if s.busy_one > 0.9 else
                   " (not CPU-bound: cpu 0 held it back, so the derived figure is an upper bound).")
                + " The busiest worker's share shows how evenly the kernel spread the connections (50% is even)."]
    out += ["", GOAL_TEXT, "", "| goal | measured | verdict |", "|---|---|---|",
            *(f"| {g} | {v} | {'**' + x + '**' if x != 'not measured' else x} |" for g, v, x in verdicts(r))]
    if any(row.policies for row in r.rows):
        out += ["", "Rows with policies (api-key + rate-limit): see the next section."]
    out += [f"Note: {x}" for x in r.notes]
    return "\n".join(out) + "\n"


def busy_text(r: Results) -> str:
    row = r.row("default") or next((x for x in r.rows if "haproxy" in x.res), None)
    if row is None:
        return ""
    ng = row.m("nginx", "rps") * row.m("nginx", "cpu_us") / 1e6
    tg = row.m("tandem", "rps") * row.m("tandem", "cpu_us") / 1e6
    return (f" In the {row.key} row nginx's proxy kept its cpu {ng:.0%} busy and Tandem {tg:.0%}: "
            + ("both are CPU-bound, so the req/s ratio is the inverse of the CPU-cost ratio." if ng > 0.9 else
               "nginx is held back by cpu 0 (backend and wrk), so the req/s ratio flatters Tandem's CPU cost."))


def render_policies(args: argparse.Namespace, r: Results, n: int, before: tuple[float, float, float],
                    after: tuple[float, float, float]) -> str:
    return "\n".join([
        "## Gateway with policies",
        "",
        f"`{command(args)}` — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {n} cpus ({cpu_model()}); load "
        f"average {before[0]:.1f} before, {after[0]:.1f} after. Same method as the Gateway section (interleaved "
        "runs, medians, nginx backend and wrk on cpu 0, each proxy on cpu 1). Tandem's 10 projects each have an "
        "`api-key` policy and a node-scope `rate-limit` by consumer (a limit high enough never to refuse: every "
        "request is checked and counted), created and deployed through the AMS's admin API; the consumers (with "
        "their keys' sha256) imported into the AMS with `POST /api/v1/import`; wrk sends a valid `X-API-Key`. "
        "nginx and HAProxy proxy with no policy at all: the ratio is what the policies cost on top of the plain "
        "proxy's gap. With several workers the node-scope count is one table in shared memory for all of them "
        "(a locked 16-byte slot per consumer): compare that row with the Gateway section's plain row for the "
        "same workers.",
        "",
        TABLE_HEAD,
        *(render_row(row) for row in r.rows if row.policies),
        "",
        "Goal (issue 19): >= 0.70x nginx's req/s in the default configuration (the verdict is in the Gateway "
        "section).",
    ]) + "\n"


def write_section(path: Path, section: str, title: str = "Gateway") -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section: the command that produced it.\n"
    m = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", text, re.M | re.S)
    text = text[:m.start()] + section + "\n" + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the ## {title} section of {path}")


KEYAUTH_LABEL = "api-key + rate-limit (node), 1 worker process (cpu 1)"
BENCH_KEY = "tk_bench-key"
KEY_CONSUMERS = [{"name": "bench", "keys": [{"id": "k1", "sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}],
                  "credentials": {}}]
# a limit high enough never to refuse: every request is checked and counted
KEY_POLICIES: list[dict[str, Any]] = [{"type": "api-key"}, {"type": "rate-limit", "limit": 1_000_000_000, "window": 1, "by": "consumer",
                 "scope": "node"}]

DEFAULT = "Workers = 1 (one worker process), access log on, deployed from an AMS"
# key -> (label, TandemDeployed keywords, policies); one worker on cpu 1, three-way with nginx and HAProxy
ONE_WORKER: dict[str, tuple[str, dict[str, Any], bool]] = {
    "default": (f"**default**: {DEFAULT} (cpu 1)", {}, False),
    "log": ("tuned: access log off (otherwise default)", {"access_log": False}, False),
    "process": ("tuned: in the server process, TANDEM_GATEWAY_INPROCESS=1 (otherwise default)",
                {"in_process": True}, False),
    "one": ("tuned: in the server process and access log off (otherwise default)",
            {"in_process": True, "access_log": False}, False),
    "pure": ("default, but the hot path as Python: TANDEM_NATIVE=0 (no mypyc build)", {"pure": True}, False),
    "floor": ("floor: a minimal raw Python proxy, no routing/headers/metrics (cpu 1)", {}, False),
    "default-keyauth": (f"api-key + rate-limit (node), **default**: {DEFAULT} (cpu 1)", {"consumers": 10}, True),
    "keyauth": ("api-key + rate-limit (node), tuned: access log off (otherwise default)",
                {"consumers": 10, "access_log": False}, True),
}
SCENARIOS = [*ONE_WORKER, "n", "keyauth-n", "routing", "consumers", "scaling"]
PATH = "/api7/items/42"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--only", default="", help="comma-separated: " + ",".join(SCENARIOS))
    ap.add_argument("--ab", type=Path, default=None,
                    help="src folder of another checkout: this tree's gateway vs that one (not written)")
    args = ap.parse_args()
    if args.ab is not None:
        return ab(args)
    for tool in ("nginx", "haproxy", "wrk", "taskset", "curl"):
        if shutil.which(tool) is None:
            print(f"bench/gateway.py needs {tool} (apt-get install -y nginx haproxy wrk util-linux curl)",
                  file=sys.stderr)
            return 2
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if unknown := only - set(SCENARIOS):
        print(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    n = cpus()
    all_cpus = f"0-{n - 1}"
    started = time.time()
    load_before = os.getloadavg()
    res = Results()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        work = Path(tmp)
        bport = free_port()
        backend = Nginx(work, "backend", 1, BACKEND.format(port=bport, body=BODY), "0")
        procs: list[Any] = [backend]
        try:
            wait_for(lambda: curl_ok(bport), 10, "nginx backend")

            def compare(key: str, label: str, tandem: Any, peers: list[Contestant], wrk_cpus: str,
                        policies: bool = False) -> None:
                print(f"{key}: {' vs '.join(c[0] for c in peers)} vs Tandem ({label})", flush=True)
                runs = duel([*peers, ("tandem", tandem.port, PATH, tandem.proc.pid)], args.runs, args.duration,
                            args.warmup, wrk_cpus)
                res.rows.append(Row(key, label, runs, policies))
                if any(x["non2xx"] for rs in runs.values() for x in rs):
                    res.notes.append(f"{key}: non-2xx responses seen")

            if only & set(ONE_WORKER):
                proxy1 = Nginx(work, "proxy1", 1, PROXY.format(backend=bport, port=(p1 := free_port())), "1")
                procs.append(proxy1)
                wait_for(lambda: curl_ok(p1), 10, "nginx proxy")
                hap = HAProxy(work, "haproxy1", bport, "1")
                procs.append(hap)
                peers: list[Contestant] = [("nginx", p1, PATH, proxy1.proc.pid), ("haproxy", hap.port, PATH, hap.proc.pid)]
                for key, (label, kw, pol) in ONE_WORKER.items():
                    if key not in only:
                        continue
                    t: Any
                    if key == "floor":
                        t = Floor(bport, "1")
                    else:
                        t = TandemDeployed(work, f"tandem-{key}", bport, 1, "1", PATH,
                                           policies=KEY_POLICIES if pol else None, **kw)
                        print(f"  ({key}: AMS, deploy and AGS ready in {t.setup_s:.1f} s)", flush=True)
                    procs.append(t)
                    if pol:
                        HEADERS[t.port] = [f"X-API-Key: {BENCH_KEY}"]
                    compare(key, label, t, peers, "0", pol)
                    t.stop()
                hap.stop()
                proxy1.stop()
            for key in ("n", "keyauth-n"):
                if key not in only:
                    continue
                pol = key == "keyauth-n"
                proxyn = Nginx(work, f"proxy-{key}", n, PROXY.format(backend=bport, port=(pn := free_port())),
                               all_cpus)
                procs.append(proxyn)
                wait_for(lambda: curl_ok(pn), 10, "nginx proxy")  # noqa: B023
                tn = TandemDeployed(work, f"tandem-{key}", bport, n, all_cpus, PATH,
                                    policies=KEY_POLICIES if pol else None, consumers=10 if pol else 0)
                procs.append(tn)
                if pol:
                    HEADERS[tn.port] = [f"X-API-Key: {BENCH_KEY}"]
                label = (f"{'api-key + rate-limit (node, counted in the workers shared table), ' if pol else ''}"
                         f"default but Workers = {n} (cpus {all_cpus}, shared with backend and wrk; nginx "
                         f"{n} workers)")
                compare(key, label, tn, [("nginx", pn, PATH, proxyn.proc.pid)], all_cpus, pol)
                tn.stop()
                proxyn.stop()
            if "routing" in only:
                small = Tandem(work, "tandem-10", bport, 10, 1, "1")
                procs.append(small)
                big = Tandem(work, "tandem-10k", bport, 10_000, 1, "1")
                procs.append(big)
                wait_for(lambda: curl_ok(big.port, "/api7777/items/42"), 60, "10,000 projects served")
                print("routing: 10 vs 10,000 projects", flush=True)
                runs = duel([("10 projects", small.port, PATH, small.proc.pid),
                             ("10,000 projects", big.port, "/api7777/items/42", big.proc.pid)],
                            args.runs, args.duration, args.warmup, "0")
                res.routing = Flat("10 projects", "10,000 projects", runs, (router_lookup_ns(10),
                                                                            router_lookup_ns(10_000)))
                small.stop()
                big.stop()
            if "consumers" in only:
                few = TandemDeployed(work, "tandem-c10", bport, 1, "1", PATH, policies=KEY_POLICIES, consumers=10)
                procs.append(few)
                many = TandemDeployed(work, "tandem-c100k", bport, 1, "1", PATH, policies=KEY_POLICIES,
                                      consumers=100_000)
                procs.append(many)
                print(f"consumers: 10 vs 100,000 (the 100,000 imported, deployed and served in {many.setup_s:.1f} s: "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in many.steps.items()) + ")", flush=True)
                HEADERS[few.port] = HEADERS[many.port] = [f"X-API-Key: {BENCH_KEY}"]
                runs = duel([("10 consumers", few.port, PATH, few.proc.pid),
                             ("100,000 consumers", many.port, PATH, many.proc.pid)],
                            args.runs, args.duration, args.warmup, "0")
                res.consumers = Flat("10 consumers", "100,000 consumers", runs)
                few.stop()
                many.stop()
            if "scaling" in only:
                one = TandemDeployed(work, "tandem-w1", bport, 1, "1", PATH)
                procs.append(one)
                two = TandemDeployed(work, "tandem-w2", bport, 2, "0-1", PATH)
                procs.append(two)
                print("scaling: Workers = 1 (cpu 1) vs Workers = 2 (cpus 0-1)", flush=True)
                res.scaling = Scaling(duel([("1 worker", one.port, PATH, one.proc.pid),
                                            ("2 workers", two.port, PATH, two.proc.pid)],
                                           args.runs, args.duration, args.warmup, "0"))
                one.stop()
                two.stop()
        finally:
            for p in procs:
                p.stop()
    load_after = os.getloadavg()
    minutes = (time.time() - started) / 60
    if any(not r.policies for r in res.rows) or res.routing or res.consumers or res.scaling or \
            (res.rows and not args.only):
        section = render(args, res, n, load_before, load_after, minutes)
        print(section)
        write_section(args.write, section)
    if any(r.policies for r in res.rows):
        section = render_policies(args, res, n, load_before, load_after)
        print(section)
        write_section(args.write, section, "Gateway with policies")
    return 0


def ab(args: argparse.Namespace) -> int:
    """This tree's gateway vs another checkout's (`--ab SRC`), one worker process on cpu 1 each."""
    only = set(args.only.split(",")) if args.only else {"one", "one-log", "keyauth"}
    load_before = os.getloadavg()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-ab-") as tmp:
        work = Path(tmp)
        bport = free_port()
        procs: list[Any] = [Nginx(work, "backend", 1, BACKEND.format(port=bport, body=BODY), "0")]
        try:
            wait_for(lambda: curl_ok(bport), 10, "nginx backend")
            for scenario in ("one", "one-log", "keyauth"):
                if scenario not in only:
                    continue
                kw: dict[str, Any] = {"in_process": False, "access_log": scenario == "one-log"}
                if scenario == "keyauth":
                    kw.update(consumers=KEY_CONSUMERS, policies=KEY_POLICIES)
                new = Tandem(work, f"new-{scenario}", bport, 10, 1, "1", **kw)
                procs.append(new)
                old = Tandem(work, f"old-{scenario}", bport, 10, 1, "1", src=args.ab.resolve(), **kw)
                procs.append(old)
                if scenario == "keyauth":
                    HEADERS[new.port] = HEADERS[old.port] = [f"X-API-Key: {BENCH_KEY}"]
                print(f"{scenario}: this tree vs {args.ab}", flush=True)
                res = duel([("new", new.port, PATH, new.proc.pid), ("old", old.port, PATH, old.proc.pid)],
                           args.runs, args.duration, args.warmup, "0")
                n_, o_ = res["new"], res["old"]
                lines.append(f"| {scenario} | {med(o_, 'rps'):,.0f} | {med(n_, 'rps'):,.0f} | "
                             f"{med(n_, 'rps') / med(o_, 'rps'):.3f} | {med(o_, 'cpu_us'):.1f} | "
                             f"{med(n_, 'cpu_us'):.1f} | {med(n_, 'cpu_us') / med(o_, 'cpu_us'):.3f} | "
                             f"{med(o_, 'p99'):.2f} / {med(n_, 'p99'):.2f} | {spread(o_)} / {spread(n_)} |")
                if any(r["non2xx"] for r in n_ + o_):
                    lines.append(f"({scenario}: non-2xx responses seen)")
                new.stop()
                old.stop()
        finally:
            for p in procs:
                p.stop()
    load_after = os.getloadavg()
    print(f"\nA/B, 1 worker process on cpu 1, backend nginx and wrk on cpu 0, {args.runs} interleaved runs x "
          f"{args.duration} s per side, medians; {cpu_model()}; load {load_before[0]:.2f} -> {load_after[0]:.2f}\n")
    print("| scenario | old req/s | new req/s | new/old | old cpu us/req | new cpu us/req | new/old | "
          "p99 ms old / new | spread old / new |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
