"""Instructions per proxied request, counted by callgrind (stable on a shared machine, unlike req/s).

    .venv/bin/python bench/gateway_instructions.py [--src SRC] [--scenario one|log|keyauth|both]

One request and one response go through the real protocol objects (`ClientProtocol`, `Exchange`,
`UpstreamConnection`, a pooled keep-alive connection) on fake transports that drop what is written,
N times in a row, under `valgrind --tool=callgrind`; the figure is the difference of the totals for
4,000 and 2,000 requests divided by 2,000 (start-up and imports cancel out). `one`: no policies, access
log off (bench/gateway.py's `one`); `log`: the same with the access log on (the default, written
to a temporary file); `keyauth`: api-key + node rate-limit (its `keyauth`). `--src`: the
`src` folder of another checkout (run with `PYTHONPATH=SRC`), for before/after figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "tk_bench-key"
CONSUMERS = [{"name": "bench", "keys": [{"id": "k1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}],
              "credentials": {}}]
POLICIES = [{"type": "api-key"}, {"type": "rate-limit", "limit": 1_000_000_000, "window": 1, "by": "consumer",
             "scope": "node"}]
BODY = b'{"ok":true,"service":"bench-backend","note":"a fixed body of about ninety bytes, padded.."}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 08:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(BODY)
            + BODY)


class FakeTransport:
    """Takes what is written and drops it."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.written += len(p)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def run(n: int, scenario: str) -> None:
    """The measured program: n requests through one client connection and one pooled upstream one."""
    import asyncio

    import uvloop

    from tandem.ags.gateway import Gateway
    from tandem.ags.protocol import ClientProtocol
    from tandem.ags.settings import GatewaySettings
    from tandem.ags.upstream import UpstreamConnection
    from tests.support.ags import make_document, project

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    keyauth = scenario == "keyauth"
    logdir = tempfile.mkdtemp(prefix="tandem-cg-log-") if scenario == "log" else ""
    gw = Gateway(GatewaySettings(access_log=os.path.join(logdir, "access.log") if logdir else ""), loop)
    gw.apply(make_document([project(f"p{i}", f"/api{i}", "http://127.0.0.1:9/",
                                    policies=POLICIES if keyauth else []) for i in range(10)],
                           consumers=CONSUMERS if keyauth else None))
    target = gw.config.projects["p7"].balancer.targets[0]
    pool = target.pool
    up = UpstreamConnection(pool)
    up.connection_made(FakeTransport())
    pool.busy.add(up)
    pool.release(up)
    cp = ClientProtocol(gw)
    client = FakeTransport()
    cp.connection_made(client)
    request = (b"GET /api7/items/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
               + (b"X-API-Key: " + KEY.encode() + b"\r\n" if keyauth else b"") + b"\r\n")
    for _ in range(n):
        cp.data_received(request)
        up.data_received(RESPONSE)
    if client.written < n * len(BODY) or cp.cur is not None or len(pool.idle) != 1:
        raise SystemExit(f"the requests did not all go through: {client.written} bytes, cur={cp.cur!r}, {pool!r}")
    st = gw.config.projects["p7"].stats
    if st.classes[2] != n:
        raise SystemExit(f"expected {n} 2xx, counted {st.classes}")


def count(src: Path, n: int, scenario: str) -> int:
    with tempfile.TemporaryDirectory(prefix="tandem-cg-") as tmp:
        out = Path(tmp) / "cg.out"
        env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{ROOT}", PYTHONHASHSEED="0")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                        __file__, "--inner", str(n), "--scenario", scenario], check=True, env=env,
                       capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit("no totals in the callgrind output")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--scenario", default="both", choices=("one", "log", "keyauth", "both"))
    ap.add_argument("--low", type=int, default=2000, help="requests in the first run (default 2000)")
    ap.add_argument("--high", type=int, default=4000, help="requests in the second run (default 4000)")
    ap.add_argument("--inner", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        run(args.inner, args.scenario)
        return 0
    for scenario in ("one", "log", "keyauth") if args.scenario == "both" else (args.scenario,):
        low, high = count(args.src, args.low, scenario), count(args.src, args.high, scenario)
        print(f"{scenario}: {(high - low) / (args.high - args.low):,.0f} instructions per request ({args.src})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
