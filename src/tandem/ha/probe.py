"""Isolation probe of GatewayServerIPAddress[:GatewayServerPort].

A TCP connect when a port is configured, else one ICMP echo (`ping`). Each
probe has a hard timeout shorter than the probe interval. `ProbeFailures`
consecutive failures mean isolated; one success clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil


class Probe:
    def __init__(self, address: str, port: int, timeout: float, failures_needed: int) -> None:
        self.address, self.port, self.timeout = address, port, timeout
        self.failures_needed = failures_needed
        self.failures = 0
        self.last_error = ""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def isolated(self) -> bool:
        return self.enabled and self.failures >= self.failures_needed

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}" if self.port else f"{self.address} (ICMP)"

    def __repr__(self) -> str:
        return f"<Probe {self.target} failures={self.failures} isolated={self.isolated}>"

    async def _tcp(self) -> None:
        _, writer = await asyncio.open_connection(self.address, self.port)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _icmp(self) -> None:
        ping = shutil.which("ping")
        if ping is None:
            raise OSError("no ping command for the ICMP probe; set GatewayServerPort for a TCP probe")
        proc = await asyncio.create_subprocess_exec(
            ping, "-c", "1", "-W", str(max(1, int(self.timeout + 0.999))), self.address,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
        if code != 0:
            raise OSError(f"ping {self.address} failed")

    async def run_once(self) -> bool:
        """One probe; updates the failure count. True on success."""
        if not self.enabled:
            return True
        try:
            await asyncio.wait_for(self._tcp() if self.port else self._icmp(), self.timeout)
        except (OSError, TimeoutError) as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            return False
        self.failures = 0
        self.last_error = ""
        return True

    async def tick(self) -> str | None:
        """One probe; a line for the console when it changed whether we are isolated."""
        was = self.isolated
        await self.run_once()
        if self.isolated == was:
            return None
        if self.isolated:
            return f"HA  isolated: {self.failures} probes of {self.target} failed ({self.last_error})"
        return f"HA  probe of {self.target} answers again: no longer isolated"
