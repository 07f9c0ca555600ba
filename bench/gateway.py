"""Tandem's gateway against nginx, per BENCH-METHOD.md (the shared bench method).

    .venv/bin/python bench/gateway.py [--runs 5] [--duration 10] [--warmup 3] [--write docs/benchmarks.md]
    .venv/bin/python bench/gateway.py --ab /tmp/old/src [--only one,keyauth]    # this tree vs an older one

`--ab SRC`: an A/B of two versions of Tandem instead of Tandem vs nginx: this
tree and the `src` folder of another checkout (run with `PYTHONPATH=SRC`),
each as one worker process on cpu 1, interleaved, same wrk settings; `one`
is the plain scenario, `keyauth` api-key + rate-limit. Printed, not written.

Both proxies sit in front of the same nginx backend (a fixed ~90-byte body),
measured in one run, interleaved (A B A B ...), with the same wrk settings
(`wrk -t1 -c50 -dD --latency`, after a warm-up) and the same pinning:

* 1 worker: backend nginx and wrk on cpu 0, the proxy alone on cpu 1
  (nginx `worker_processes 1`; Tandem `Workers = 1`, in the server process,
  and again as one worker process);
* N workers (N = cpu count): every process may use every cpu (nginx
  `worker_processes N`; Tandem `Workers = N` worker processes);
* routing cost: Tandem with 10 and with 10,000 projects, interleaved, and the
  router's lookup alone (ns per lookup).

Tandem runs as users run it: `tandem server -mode AGS -nobackground` on a fresh
home, its configuration stored in its store before start (the stored
configuration is served before any AMS is reached), access log on (the
default). Results are medians; ratios are Tandem / nginx. The `## Gateway`
section of docs/benchmarks.md is replaced with the table and this command.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.support

from tests.support.ags import make_document, project  # noqa: E402
from tests.support.harness import free_port, stop_process, wait_for  # noqa: E402

BODY = '{"ok":true,"service":"bench-backend","note":"a fixed body of about ninety bytes, padded.."}'
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


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process and its children (nginx workers, gateway workers), in clock ticks."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


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


class Tandem:
    """An AGS through the CLI on a fresh home, its configuration stored before it starts."""

    def __init__(self, work: Path, name: str, backend: int, projects: int, workers: int, cpuset: str,
                 in_process: bool = True, access_log: bool = False, policies: list[dict[str, Any]] | None = None,
                 consumers: list[dict[str, Any]] | None = None, src: Path | None = None) -> None:
        from tandem.store import Op, open_store

        self.home = work / name
        self.port, ha = free_port(), free_port()
        cli = [sys.executable, "-m", "tandem.cli.main", "--home", str(self.home)]
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


HEADERS: dict[int, list[str]] = {}  # port -> request headers wrk sends to it


def wrk(port: int, path: str, duration: int, cpuset: str, latency: bool = True, pid: int = 0) -> dict[str, float]:
    cmd = ["taskset", "-c", cpuset, "wrk", "-t1", "-c50", f"-d{duration}s"]
    for h in HEADERS.get(port, []):
        cmd += ["-H", h]
    if latency:
        cmd.append("--latency")
    before = cpu_ticks(pid) if pid else 0
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    spent = cpu_ticks(pid) - before if pid else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    res = {"rps": rps, "non2xx": float(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out))
           else 0.0, "cpu_us": spent / os.sysconf("SC_CLK_TCK") * 1e6 / count if pid else float("nan")}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{pct}"] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return res


def duel(a: tuple[str, int, str, int], b: tuple[str, int, str, int], runs: int, duration: int, warmup: int,
         wrk_cpus: str) -> dict[str, list[dict[str, float]]]:
    """Interleaved runs A B A B ...; each (name, port, path, pid whose CPU time is counted)."""
    results: dict[str, list[dict[str, float]]] = {a[0]: [], b[0]: []}
    for _, port, path, _ in (a, b):
        wrk(port, path, warmup, wrk_cpus, latency=False)
    for i in range(runs):
        for name, port, path, pid in ((a, b) if i % 2 == 0 else (b, a)):
            r = wrk(port, path, duration, wrk_cpus, pid=pid)
            results[name].append(r)
            print(f"  run {i + 1}/{runs} {name:<16} {r['rps']:>9.0f} req/s  p50 {r.get('p50', 0):.2f} ms  "
                  f"p99 {r.get('p99', 0):.2f} ms  cpu {r['cpu_us']:.1f} us/req  non-2xx {r['non2xx']:.0f}",
                  flush=True)
    return results


def med(rs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, float("nan")) for r in rs)


def spread(rs: list[dict[str, float]]) -> str:
    vals = [r["rps"] for r in rs]
    return f"{(max(vals) - min(vals)) / statistics.median(vals) * 100:.0f}%"


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--only", default="", help="comma-separated: one,log,process,floor,n,routing,keyauth,keyauth-n")
    ap.add_argument("--ab", type=Path, default=None,
                    help="src folder of another checkout: this tree's gateway vs that one (not written)")
    args = ap.parse_args()
    if args.ab is not None:
        return ab(args)
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/gateway.py needs {tool} (apt-get install -y nginx wrk util-linux)", file=sys.stderr)
            return 2
    only = set(args.only.split(",")) if args.only else {"one", "log", "process", "floor", "n", "routing", "keyauth",
                                                         "keyauth-n"}
    n = cpus()
    all_cpus = f"0-{n - 1}"
    started = time.time()
    load_before = os.getloadavg()
    rows: list[str] = []
    notes: list[str] = []
    busy: list[str] = []  # how busy each proxy's cpu was in the first one-worker comparison
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        work = Path(tmp)
        bport = free_port()
        backend = Nginx(work, "backend", 1, BACKEND.format(port=bport, body=BODY), "0")
        procs: list[Any] = [backend]
        try:
            wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{bport}/"],
                                            capture_output=True).returncode == 0, 10, "nginx backend")
            path = "/api7/items/42"

            def compare(label: str, tandem: Tandem | Floor, nginx: Nginx, nginx_port: int, wrk_cpus: str) -> None:
                print(f"{label}: nginx proxy vs Tandem", flush=True)
                res = duel(("nginx", nginx_port, path, nginx.proc.pid), ("tandem", tandem.port, path, tandem.proc.pid),
                           args.runs, args.duration, args.warmup, wrk_cpus)
                ng, tg = res["nginx"], res["tandem"]
                rows.append(f"| {label} | {med(ng, 'rps'):,.0f} | {med(tg, 'rps'):,.0f} | "
                            f"**{med(tg, 'rps') / med(ng, 'rps'):.2f}x** | {med(ng, 'p50'):.2f} / "
                            f"{med(tg, 'p50'):.2f} | {med(ng, 'p99'):.2f} / {med(tg, 'p99'):.2f} | "
                            f"**{med(tg, 'p99') / med(ng, 'p99'):.2f}x** | {med(ng, 'cpu_us'):.1f} / "
                            f"{med(tg, 'cpu_us'):.1f} | {spread(ng)} / {spread(tg)} |")
                if not busy and "1 worker" in label:
                    ng_busy = med(ng, "rps") * med(ng, "cpu_us") / 1e6
                    tg_busy = med(tg, "rps") * med(tg, "cpu_us") / 1e6
                    busy.append(f"With one worker, nginx's proxy kept its cpu {ng_busy:.0%} busy and Tandem "
                                f"{tg_busy:.0%}: " + ("both are CPU-bound, so the req/s ratio is the inverse of "
                                                      "the CPU-cost ratio." if ng_busy > 0.9 else
                                                      "nginx is held back by cpu 0 (backend and wrk), so the "
                                                      "req/s ratio flatters Tandem's CPU cost."))
                if any(r["non2xx"] for r in ng + tg):
                    notes.append(f"{label}: non-2xx responses seen")

            if only & {"one", "log", "process", "floor", "keyauth"}:
                proxy1 = Nginx(work, "proxy1", 1, PROXY.format(backend=bport, port=(p1 := free_port())), "1")
                procs.append(proxy1)
                if "one" in only:
                    t1 = Tandem(work, "tandem-1", bport, 10, 1, "1")
                    procs.append(t1)
                    compare("1 worker, in the server process (cpu 1)", t1, proxy1, p1, "0")
                    t1.stop()
                if "log" in only:
                    tl = Tandem(work, "tandem-1-log", bport, 10, 1, "1", access_log=True)
                    procs.append(tl)
                    compare("1 worker, in the server process, access log on (cpu 1)", tl, proxy1, p1, "0")
                    tl.stop()
                if "process" in only:
                    tp = Tandem(work, "tandem-1p", bport, 10, 1, "1", in_process=False)
                    procs.append(tp)
                    compare("1 worker process (cpu 1)", tp, proxy1, p1, "0")
                    tp.stop()
                if "keyauth" in only:
                    tk = Tandem(work, "tandem-keyauth", bport, 10, 1, "1", in_process=False, consumers=KEY_CONSUMERS,
                                policies=KEY_POLICIES)
                    procs.append(tk)
                    HEADERS[tk.port] = [f"X-API-Key: {BENCH_KEY}"]
                    compare(KEYAUTH_LABEL, tk, proxy1, p1, "0")
                    tk.stop()
                if "floor" in only:
                    fl = Floor(bport, "1")
                    procs.append(fl)
                    compare("floor: a minimal raw Python proxy, no routing/headers/metrics (cpu 1)", fl, proxy1,
                            p1, "0")
                    fl.stop()
                proxy1.stop()
            if "n" in only:
                proxyn = Nginx(work, "proxyn", n, PROXY.format(backend=bport, port=(pn := free_port())), all_cpus)
                tn = Tandem(work, "tandem-n", bport, 10, n, all_cpus)
                procs += [proxyn, tn]
                compare(f"{n} workers (cpus {all_cpus}, shared with backend and wrk)", tn, proxyn, pn, all_cpus)
                tn.stop()
                proxyn.stop()
            if "keyauth-n" in only:
                proxyn = Nginx(work, "proxyn-k", n, PROXY.format(backend=bport, port=(pn := free_port())), all_cpus)
                tk = Tandem(work, "tandem-n-keyauth", bport, 10, n, all_cpus, consumers=KEY_CONSUMERS,
                            policies=KEY_POLICIES)
                procs += [proxyn, tk]
                HEADERS[tk.port] = [f"X-API-Key: {BENCH_KEY}"]
                compare(keyauth_n_label(n, all_cpus), tk, proxyn, pn, all_cpus)
                tk.stop()
                proxyn.stop()
            routing = ""
            if "routing" in only:
                small = Tandem(work, "tandem-10", bport, 10, 1, "1")
                big = Tandem(work, "tandem-10k", bport, 10_000, 1, "1")
                procs += [small, big]
                print("routing cost: 10 vs 10,000 projects", flush=True)
                res = duel(("10 projects", small.port, path, small.proc.pid),
                           ("10,000 projects", big.port, "/api7777/items/42", big.proc.pid),
                           args.runs, args.duration, args.warmup, "0")
                s_rps, b_rps = med(res["10 projects"], "rps"), med(res["10,000 projects"], "rps")
                ns10, ns10k = router_lookup_ns(10), router_lookup_ns(10_000)
                s_cpu, b_cpu = med(res["10 projects"], "cpu_us"), med(res["10,000 projects"], "cpu_us")
                routing = (f"| 10 projects | {s_rps:,.0f} | {1e6 / s_rps:.1f} | {s_cpu:.1f} | {ns10:.0f} |\n"
                           f"| 10,000 projects | {b_rps:,.0f} | {1e6 / b_rps:.1f} | {b_cpu:.1f} | {ns10k:.0f} |\n\n"
                           f"Per-request cost at 10,000 projects vs 10: **{b_cpu / s_cpu - 1:+.1%}** in CPU time, "
                           f"{(1e6 / b_rps) / (1e6 / s_rps) - 1:+.1%} in wall time per request (goal: within 10%); "
                           f"router lookup alone: {ns10k / ns10 - 1:+.1%}.")
                small.stop()
                big.stop()
        finally:
            for p in procs:
                p.stop()
    load_after = os.getloadavg()
    minutes = (time.time() - started) / 60
    policy_rows = [r for r in rows if r.startswith("| api-key + rate-limit ")]
    rows = [r for r in rows if r not in policy_rows]
    if rows or routing:
        section = render(args, rows, routing, notes, n, load_before, load_after, minutes, busy[0] if busy else "")
        print(section)
        write_section(args.write, section)
    if policy_rows:
        section = render_policies(args, policy_rows, n, load_before, load_after)
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
        path = "/api7/items/42"
        try:
            wait_for(lambda: subprocess.run(["curl", "-sf", f"http://127.0.0.1:{bport}/"],
                                            capture_output=True).returncode == 0, 10, "nginx backend")
            for scenario in ("one", "one-log", "keyauth"):
                if scenario not in only:
                    continue
                kw: dict[str, Any] = {"in_process": False, "access_log": scenario == "one-log"}
                if scenario == "keyauth":
                    kw.update(consumers=KEY_CONSUMERS, policies=KEY_POLICIES)
                new = Tandem(work, f"new-{scenario}", bport, 10, 1, "1", **kw)
                old = Tandem(work, f"old-{scenario}", bport, 10, 1, "1", src=args.ab.resolve(), **kw)
                procs += [new, old]
                if scenario == "keyauth":
                    HEADERS[new.port] = HEADERS[old.port] = [f"X-API-Key: {BENCH_KEY}"]
                print(f"{scenario}: this tree vs {args.ab}", flush=True)
                res = duel(("new", new.port, path, new.proc.pid), ("old", old.port, path, old.proc.pid),
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


KEYAUTH_LABEL = "api-key + rate-limit (node), 1 worker process (cpu 1)"
BENCH_KEY = "tk_bench-key"
KEY_CONSUMERS = [{"name": "bench", "keys": [{"id": "k1", "sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest()}],
                  "credentials": {}}]
# a limit high enough never to refuse: every request is checked and counted
KEY_POLICIES = [{"type": "api-key"}, {"type": "rate-limit", "limit": 1_000_000_000, "window": 1, "by": "consumer",
                 "scope": "node"}]


def keyauth_n_label(n: int, cpus: str) -> str:
    return f"api-key + rate-limit (node, counted in the workers' shared table), {n} workers (cpus {cpus}, shared " \
           "with backend and wrk)"


def render_policies(args: argparse.Namespace, rows: list[str], n: int, before: tuple[float, float, float],
                    after: tuple[float, float, float]) -> str:
    cmd = "python bench/gateway.py" + (f" --runs {args.runs}" if args.runs != 5 else "") + \
        (f" --duration {args.duration}" if args.duration != 10 else "") + (f" --only {args.only}" if args.only else "")
    return "\n".join([
        "## Gateway with policies",
        "",
        f"`{cmd}` — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {n} cpus ({cpu_model()}); load average "
        f"{before[0]:.1f} before, {after[0]:.1f} after. Same method as the Gateway section (interleaved runs, "
        "medians, nginx backend on cpu 0, the proxies on cpu 1). Tandem's 10 projects each have an `api-key` "
        "policy and a node-scope `rate-limit` by consumer (a limit high enough never to refuse: every request is "
        "checked and counted); wrk sends a valid `X-API-Key`. nginx proxies with no policy at all: the ratio "
        "is what the policies cost on top of the plain proxy's gap. With several workers the node-scope count "
        "is one table in shared memory for all of them (a locked 16-byte slot per consumer): compare that row "
        "with the Gateway section's plain row for the same workers.",
        "",
        "| scenario | nginx req/s | Tandem req/s | req/s ratio | p50 ms nginx / Tandem | p99 ms nginx / Tandem "
        "| p99 ratio | proxy CPU us/request nginx / Tandem | run spread nginx / Tandem |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Goal: >= 0.55x nginx's req/s on one worker with key-auth + rate-limit.",
    ]) + "\n"


def render(args: argparse.Namespace, rows: list[str], routing: str, notes: list[str], n: int,
           before: tuple[float, float, float], after: tuple[float, float, float], minutes: float,
           busy: str = "") -> str:
    cmd = "python bench/gateway.py" + (f" --runs {args.runs}" if args.runs != 5 else "") + \
        (f" --duration {args.duration}" if args.duration != 10 else "") + (f" --only {args.only}" if args.only else "")
    out = [
        "## Gateway",
        "",
        f"`{cmd}` — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {n} cpus ({cpu_model()}), "
        f"{minutes:.0f} min; load average {before[0]:.1f} before, {after[0]:.1f} after "
        "(other jobs share this machine: read the ratios, not the absolute figures).",
        "",
        f"`wrk -t1 -c50 -d{args.duration}s --latency` after a {args.warmup} s warm-up, {args.runs} interleaved "
        "runs per side, medians. nginx backend (1 worker, cpu 0) returns a fixed ~90-byte body; the nginx proxy "
        "uses `proxy_pass` with `keepalive 64` and `access_log off`. Tandem: `tandem server -mode AGS` through the "
        "CLI, no policies, access log off like nginx's (one row with it on: it is Tandem's default), per-project "
        "metrics on, X-Request-Id and X-Forwarded-* added to every request.",
        "",
        "| scenario | nginx req/s | Tandem req/s | req/s ratio | p50 ms nginx / Tandem | p99 ms nginx / Tandem "
        "| p99 ratio | proxy CPU us/request nginx / Tandem | run spread nginx / Tandem |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Goals: >= 0.65x nginx's req/s on one worker with no policies; p99 <= 2x nginx's. Proxy CPU us/request: "
        "user + system time of the proxy's processes during the run / requests served (the least noisy figure "
        "on a shared machine). " + busy,
    ]
    if routing:
        out += ["", "Routing cost (Tandem, 1 worker in the server process, cpu 1):", "",
                "| configuration | req/s | wall us per request | CPU us per request | router lookup, ns |",
                "|---|---|---|---|---|", routing]
    out += ["", "Scenario with policies (key-auth + rate-limit): see the next section."]
    out += [f"Note: {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str, title: str = "Gateway") -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section: the command that produced it.\n"
    m = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", text, re.M | re.S)
    text = text[:m.start()] + section + "\n" + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the ## {title} section of {path}")


if __name__ == "__main__":
    sys.exit(main())
