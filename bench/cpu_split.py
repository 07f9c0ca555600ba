"""Where a proxied request's CPU goes: user vs system time per request, and system calls per request.

    .venv/bin/python bench/cpu_split.py        # ~2 min; prints a table (docs/benchmarks.md quotes it)

nginx (`proxy_pass`, 1 worker), HAProxy (1 thread) and Tandem's gateway in its default configuration
(bench/gateway.py's `default`: Workers = 1 worker process, access log on, deployed from an AMS), compiled
and as pure Python (TANDEM_NATIVE=0), each alone on cpu 1 in front of the same nginx backend, under
`wrk -t1 -c50` on cpu 0: user and system CPU time of the proxy's processes per request over 8 s, then
`strace -c -f` on its busiest process for 3 s more (system calls per request; strace slows the
process, the count per request is what is read).
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.support.harness import free_port, load_bench  # noqa: E402

bg = load_bench("gateway")

def ticks(pid: int) -> tuple[int, int, list[int]]:
    """(user, system) clock ticks of a process and its children, and their pids (the last: a worker)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    user = system = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system, pids


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}{bg.PATH}"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise SystemExit(f"wrk printed no count: {out}")
    return float(m.group(1))


def measure(name: str, port: int, pid: int, work: Path, seconds: int = 8) -> str:
    wrk(port, 2)  # warm-up
    u0, s0, pids = ticks(pid)
    n = wrk(port, seconds)
    u1, s1, _ = ticks(pid)
    hz = os.sysconf("SC_CLK_TCK")
    out = work / f"strace-{pids[-1]}.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pids[-1]), "-o", str(out)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    n2 = wrk(port, 3)
    tracer.terminate()
    tracer.wait(10)
    text = out.read_text()
    m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
    calls = int(m.group(1)) if m else -1
    rows = [ln.split() for ln in text.splitlines()[2:] if ln.strip() and not ln.startswith("-") and "total" not in ln]
    top = " ".join(f"{r[-1]} {float(r[3]) / n2:.2f}" for r in rows[:5] if len(r) >= 5)
    return (f"| {name} | {n / seconds:,.0f} | {(u1 - u0) / hz * 1e6 / n:.1f} | {(s1 - s0) / hz * 1e6 / n:.1f} | "
            f"{calls / n2:.2f} | {top} |")


def main() -> int:
    for tool in ("nginx", "haproxy", "wrk", "strace", "taskset"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench/cpu_split.py needs {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="tandem-cpu-split-") as tmp:
        work = Path(tmp)
        bport = free_port()
        procs: list[Any] = [bg.Nginx(work, "backend", 1, bg.BACKEND.format(port=bport, body=bg.BODY), "0")]
        try:
            time.sleep(1)
            print("| proxy (alone on cpu 1) | req/s | user us/request | system us/request | system calls/request "
                  "| most called, per request |")
            print("|---|---|---|---|---|---|")
            proxy = bg.Nginx(work, "proxy", 1, bg.PROXY.format(backend=bport, port=(port := free_port())), "1")
            procs.append(proxy)
            time.sleep(1)
            print(measure("nginx `proxy_pass`, 1 worker", port, proxy.proc.pid, work), flush=True)
            hap = bg.HAProxy(work, "haproxy", bport, "1")
            procs.append(hap)
            time.sleep(1)
            print(measure("HAProxy, 1 thread", hap.port, hap.proc.pid, work), flush=True)
            for label, pure in (("Tandem default (compiled hot path)", False),
                                ("Tandem default, pure Python (TANDEM_NATIVE=0)", True)):
                t = bg.TandemDeployed(work, f"tandem-{int(pure)}", bport, 1, "1", bg.PATH, pure=pure)
                procs.append(t)
                print(measure(label, t.port, t.proc.pid, work), flush=True)
                t.stop()
        finally:
            for p in procs:
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
