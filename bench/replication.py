"""What replication costs: admin-API write latency with no HA vs a replicated AMS
pair in sync and in async mode, and how fast a passive catches up.

    .venv/bin/python bench/replication.py [--writes 500] [--rounds 3] [--catchup 10000]
                                          [--write docs/benchmarks.md]

Three fresh homes on fresh ports, all up for the whole run (real `tandem server`
processes through the CLI):

* A  standalone AMS (`server1/AMS`, no HA);
* B  replicated pair `haprofile1` in sync mode (the default): a write is
     acknowledged only after the passive stored it;
* C  the same pair in async mode (`ha.ReplicationMode=async` on both halves).

(a) Latency: one client, sequential `POST /api/v1/consumers` on a kept-alive
connection, after a warm-up. The configurations are interleaved, `--rounds`
rounds of `--writes` writes each, the order rotated every round (A B C, B C A,
C A B) because the machine is shared and noisy. Before and after every round
of B and C the pair must be in sync (the LockFile's `in_sync` names both):
otherwise the active acknowledges without its peer and the figure would be
meaningless. Reports p50/p99 and the ratios to A.

(b) Catch-up, on pair B: stop the passive, write `--catchup` changes to the
active (4 writer threads), start the passive and time until it is `Passive`
and both stores' digests (`GET <ha>/ha/digest`) are equal; changes/s.

Everything is bounded in time; every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from tandem.config import init_home, set_profile_values  # noqa: E402
from tests.support.harness import Home, Server, fresh_ports, http_get, wait_for  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from failover import pct, write_section  # noqa: E402

PAIR = "haprofile1"
TOKEN = "bench-admin-token-replication"
ENV = {"TANDEM_ADMIN_TOKEN": TOKEN}
HDR = {"Authorization": f"Bearer {TOKEN}"}
WARMUP = 100


class Config:
    def __init__(self, key: str, label: str, home: Home, servers: list[Server]) -> None:
        self.key, self.label, self.home, self.servers = key, label, home, servers
        self.samples: list[float] = []  # ms
        self.round_p50: list[float] = []
        self.refused: list[str] = []  # 503 answers (retried), by code
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0))

    @property
    def active(self) -> Server:
        return self.servers[0]

    @property
    def url(self) -> str:
        return str(self.active.prof.client_url)

    def in_sync(self) -> bool:
        if len(self.servers) == 1:
            return True
        return lockfile_in_sync(self.home) == 2


def lockfile_in_sync(home: Home) -> int:
    return len(home.in_sync(PAIR, "AMS"))


def new_home(root: Path, name: str, prepare: Callable[[Path], None] | None = None) -> Home:
    path = root / name
    init_home(path)
    fresh_ports(path)
    if prepare is not None:
        prepare(path)
    return Home(path)


def start_standalone(home: Home) -> Server:
    srv = home.server("server1/AMS").start(env=ENV)
    wait_for(lambda: srv.active_code() == 200, 30, "standalone AMS serving")
    return srv


def start_pair(home: Home) -> tuple[Server, Server]:
    return home.start_pair(PAIR, "AMS", env=ENV, timeout=30)


def write_one(client: httpx.Client, base: str, name: str, refused: list[str]) -> float:
    """One acknowledged write, in ms as the client sees it. A 503 is retried (appended to
    `refused`): on a loaded machine the active may refuse for an instant (rule 1: no
    serving without a lock verified within the self-fence deadline)."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + 15
    maybe_landed = False
    while True:
        r = client.post(f"{base}/api/v1/consumers", json={"name": name}, headers=HDR)
        if r.status_code == 201 or (r.status_code == 409 and maybe_landed):
            return (time.perf_counter() - t0) * 1000
        if r.status_code == 503 and time.monotonic() < deadline:
            code = str(r.json().get("code"))
            refused.append(code)
            maybe_landed = maybe_landed or code == "not_durable"  # committed, not acknowledged
            time.sleep(0.005)
            continue
        raise SystemExit(f"write {name} to {base}: {r.status_code} {r.text[:200]}")


def measure(cfg: Config, prefix: str, n: int) -> list[float]:
    """`n` sequential writes; the pair must stay in sync throughout (a drop and a re-sync in
    between shows in the active's console as `peer out of sync`)."""
    if not cfg.in_sync():
        raise SystemExit(f"{cfg.label}: pair not in sync before {prefix}")
    drops = cfg.active.output().count("peer out of sync")
    out = [write_one(cfg.client, cfg.url, f"{prefix}-{i:05d}", cfg.refused) for i in range(n)]
    if not cfg.in_sync() or cfg.active.output().count("peer out of sync") != drops:
        raise SystemExit(f"{cfg.label}: pair dropped out of sync during {prefix}: its figures would be wrong")
    return out


def digest(srv: Server) -> dict[str, Any] | None:
    code, body = http_get(f"{srv.ha}/ha/digest", timeout=10)
    return body if code == 200 and isinstance(body, dict) else None


def catch_up(home: Home, p: Server, s: Server, n: int) -> dict[str, Any]:
    d0 = digest(s)
    assert d0 is not None
    s.stop()
    p.wait_state("Standalone", timeout=15)
    t_w = time.monotonic()
    refused: list[str] = []
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=10, limits=httpx.Limits(max_connections=4)) as c:
        list(pool.map(lambda i: write_one(c, str(p.prof.client_url), f"bulk{i:05d}", refused), range(n)))
    write_s = time.monotonic() - t_w
    target = digest(p)
    assert target is not None
    backlog = int(target["lsn"]) - int(d0["lsn"])
    t0 = time.monotonic()
    s.start(env=ENV)
    deadline = t0 + 300
    t_up = t_data = t_passive = None
    states: list[str] = []
    while True:
        now = time.monotonic()
        if now > deadline:
            raise SystemExit(f"catch-up not done within 300 s (states seen: {states})")
        st = s.status()
        if st is not None:
            t_up = t_up or now
            if not states or states[-1] != st["state"]:
                states.append(st["state"])
            if t_data is None and st.get("lsn") == target["lsn"]:
                t_data = now
            if st["state"] == "Passive":
                t_passive = t_passive or now
                ds = digest(s)
                if ds is not None and ds["digest"] == target["digest"] and ds["lsn"] == target["lsn"]:
                    t_done = time.monotonic()
                    break
        time.sleep(0.01)
    wait_for(lambda: lockfile_in_sync(home) == 2, 30, "catch-up: pair recorded in sync")
    assert t_up is not None and t_passive is not None
    t_data = t_data or t_passive
    out = p.output()
    how = "snapshot" if "sending a snapshot" in out else "log tail"
    return {"changes": backlog, "write_s": write_s, "refused": refused, "total_s": t_done - t0,
            "startup_s": t_up - t0, "data_s": t_data - t_up, "settle_s": t_passive - t_data, "states": states,
            "how": how,
            "rate_total": backlog / (t_done - t0), "rate_stream": backlog / max(t_data - t_up, 1e-6)}


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0))
    return f"{cpus} CPUs{f' ({model})' if model else ''}, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}, shared with other work"


def refusals(codes: list[str]) -> str:
    return ", ".join(f"{codes.count(c)} {c}" for c in sorted(set(codes))) or "0"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=500, help="writes per configuration per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--catchup", type=int, default=10_000, help="changes written while the passive is down")
    ap.add_argument("--budget", type=float, default=1800, help="give up after this many seconds")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    started = time.monotonic()
    load_before = load()

    def check_budget(what: str) -> None:
        if time.monotonic() - started > args.budget:
            raise SystemExit(f"over the {args.budget:.0f} s budget before {what}")

    homes: list[Home] = []
    configs: list[Config] = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-repl-") as tmp:
        root = Path(tmp)
        try:
            h_a = new_home(root, "standalone")
            h_b = new_home(root, "sync")

            def async_mode(path: Path) -> None:
                for half in ("primary", "secondary"):
                    set_profile_values(path, f"{PAIR}/{half}/AMS", ["ha.ReplicationMode=async"])

            h_c = new_home(root, "async", async_mode)
            homes += [h_a, h_b, h_c]
            a = start_standalone(h_a)
            b = start_pair(h_b)
            c = start_pair(h_c)
            configs = [Config("A", "standalone (no HA)", h_a, [a]),
                       Config("B", "replicated, sync", h_b, list(b)),
                       Config("C", "replicated, async", h_c, list(c))]
            for cfg in configs[1:]:
                mode = (cfg.active.status() or {}).get("replication", {}).get("mode")
                want = "sync" if cfg.key == "B" else "async"
                if mode != want:
                    raise SystemExit(f"{cfg.label}: the active reports replication mode {mode!r}")
            for cfg in configs:
                measure(cfg, f"warm{cfg.key}", WARMUP)
            for r in range(args.rounds):
                order = configs[r % 3:] + configs[:r % 3]
                for cfg in order:
                    check_budget(f"round {r + 1} of {cfg.label}")
                    xs = measure(cfg, f"r{r}{cfg.key}", args.writes)
                    cfg.samples += xs
                    cfg.round_p50.append(statistics.median(xs))
                    print(f"round {r + 1} {cfg.label:20s} p50={cfg.round_p50[-1]:6.2f} ms "
                          f"p99={pct(xs, 0.99):6.2f} ms", flush=True)
            check_budget("the catch-up")
            print(f"catch-up: stopping the passive, writing {args.catchup} changes ...", flush=True)
            cu = catch_up(h_b, b[0], b[1], args.catchup)
        except BaseException:
            for h in homes:
                for srv in h.servers:
                    print(f"--- {h.path.name} {srv.profile} ---\n{srv.output()[-2000:]}", file=sys.stderr)
            raise
        finally:
            for cfg in configs:
                cfg.client.close()
            for h in homes:
                h.cleanup()
    load_after = load()
    elapsed = time.monotonic() - started

    base = configs[0]
    b50, b99 = pct(base.samples, 0.5), pct(base.samples, 0.99)
    rows = []
    for cfg in configs:
        p50, p99 = pct(cfg.samples, 0.5), pct(cfg.samples, 0.99)
        ratio = "1.00" if cfg is base else f"{p50 / b50:.2f}"
        ratio99 = "1.00" if cfg is base else f"{p99 / b99:.2f}"
        rounds = " / ".join(f"{x:.2f}" for x in cfg.round_p50)
        rows.append(f"| {cfg.key} {cfg.label} | {len(cfg.samples)} | {p50:.2f} ms | {p99:.2f} ms | "
                    f"{ratio} | {ratio99} | {rounds} | {refusals(cfg.refused)} |")
    table = "\n".join(["| configuration | writes | p50 | p99 | p50 / A | p99 / A | p50 per round (ms) | "
                       "503s retried |", "|---|---|---|---|---|---|---|---|", *rows])
    cu_line = (f"| {cu['changes']:,} | {cu['how']} | {cu['startup_s']:.2f} s | {cu['data_s']:.2f} s | "
               f"{cu['settle_s']:.2f} s | {cu['total_s']:.2f} s | {cu['rate_stream']:,.0f} | "
               f"{cu['rate_total']:,.0f} |")
    cu_table = "\n".join([
        "| changes behind | sent as | process start to HA port up | HA port up to data caught up | "
        "data caught up to `Passive` | start to `Passive` + digests equal | changes/s (streaming) | "
        "changes/s (end to end) |",
        "|---|---|---|---|---|---|---|---|", cu_line])
    print()
    print(table)
    print()
    print(cu_table)
    print(f"passive states seen: {' -> '.join(cu['states'])}; the {args.catchup} writes took "
          f"{cu['write_s']:.1f} s with 4 writers (503s retried: {refusals(cu['refused'])}); "
          f"load average {load_before} -> {load_after}; {elapsed:.0f} s in all")
    if args.write:
        cmd = "bench/replication.py"
        if (args.writes, args.rounds, args.catchup) != (500, 3, 10_000):
            cmd += f" --writes {args.writes} --rounds {args.rounds} --catchup {args.catchup}"
        section = f"""## Replication

What replication costs an admin-API write, and how fast a passive catches up. Real
`tandem server -mode AMS` processes on three fresh homes, all up for the whole run:
**A** a standalone AMS (`server1/AMS`, no HA), **B** a replicated pair (`{PAIR}`) in sync
mode (the default: a write is acknowledged only once the passive stored it), **C** the same
pair with `ha.ReplicationMode=async` on both halves.

### Write latency

One client, sequential `POST /api/v1/consumers` on a kept-alive connection, after
{WARMUP} warm-up writes per configuration; {args.rounds} interleaved rounds of {args.writes}
writes each, the order rotated every round (A B C, B C A, C A B). Before and after every
round the pair was checked in sync (the LockFile's `in_sync` names both halves, and the
active's console shows no `peer out of sync` in between), so every sync write waited for
the passive. A latency is what the client saw: a 503 (the server
refusing for an instant, e.g. `not_active` when, on this loaded machine, its lock
verification ran later than the self-fence deadline) is retried and counted in the last
column, its time included.

{table}

### Catch-up

Pair B: the passive was stopped, {args.catchup:,} consumers were written to the active
(`Standalone`, 4 writer threads, {cu['write_s']:.1f} s, 503s retried: {refusals(cu['refused'])}),
then the passive was started and timed until it was `Passive` with both stores' digests
(`GET /ha/digest`) equal. "Data caught up" is the passive's
`/ha/status` lsn reaching the active's. The passive went
{' -> '.join(f'`{x}`' for x in cu['states'])}.

{cu_table}

"Streaming" divides by the time from the passive's HA port answering to its lsn reaching the
active's; "end to end" by the whole time from process start to `Passive` with equal digests
(process start-up included). "Data caught up to `Passive`" is not replication work: the
passive stays `PassiveSync` for 1 s after the last catch-up frame unless a regular frame
(a new write) arrives first (`catchup_until = now + 1.0` in the replicator's frame handler),
and this run writes nothing after the catch-up.

Command: `.venv/bin/python {cmd} --write docs/benchmarks.md`
({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {machine()};
load average {load_before} before, {load_after} after; {elapsed:.0f} s in all).
"""
        write_section(args.write, "Replication", section)
        print(f"wrote the Replication section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
