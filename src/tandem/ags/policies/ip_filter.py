"""`ip-filter`: allow or deny client addresses by CIDR, IPv4 and IPv6.

Deny wins; a non-empty allow list denies everything it does not name (403
`ip_forbidden`). The client address is the peer's, unless the peer is in
`trusted_proxies`: then `X-Forwarded-For` is read from the right, skipping
trusted proxies, and the first untrusted address is the client (a client
cannot forge its way past a proxy that appends to the header). The
resolved address is left in `ex.client_ip` for the steps after this one
(rate-limit and quota by IP).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from tandem.ags.policies.base import Answer, Step, request_headers
from tandem.ags.policies.chain import Context, builder
from tandem.model.policies import IpFilterPolicy

if TYPE_CHECKING:
    from tandem.ags.exchange import Exchange

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(items: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) for i in items)


def parse_ip(raw: bytes | str) -> Address | None:
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        text = text.strip()
        if text.startswith("[") and "]" in text:  # [v6]:port
            text = text[1:text.index("]")]
        elif text.count(":") == 1:  # v4:port
            text = text.split(":")[0]
        addr = ipaddress.ip_address(text)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        return addr
    except (ValueError, UnicodeDecodeError):
        return None


def within(addr: Address, nets: tuple[Network, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: bytes, forwarded: list[bytes], trusted: tuple[Network, ...]) -> Address | None:
    addr = parse_ip(peer)
    if addr is None or not trusted or not within(addr, trusted):
        return addr
    hops = [h for v in forwarded for h in v.split(b",")]
    for hop in reversed(hops):
        a = parse_ip(hop)
        if a is None:
            return addr  # a garbled hop: trust nothing before it, the last trusted hop is the client
        if not within(a, trusted):
            return a
        addr = a
    return addr


class IpFilterStep(Step):
    kind = "ip-filter"

    def __init__(self, allow: tuple[Network, ...], deny: tuple[Network, ...], trusted: tuple[Network, ...]) -> None:
        self.allow, self.deny, self.trusted = allow, deny, trusted
        self.verdicts: dict[bytes, bool] = {}  # peer -> allowed, when no proxy is trusted (bounded)

    def request(self, ex: Exchange) -> Answer | None:
        if self.trusted:
            addr = client_address(ex.cp.ip, request_headers(ex, b"x-forwarded-for"), self.trusted)
            if addr is not None:
                ex.client_ip = str(addr).encode()
            ok = addr is not None and self.allowed(addr)
        else:
            ok = self.verdicts.get(ex.client_ip)  # type: ignore[assignment]
            if ok is None:
                addr = parse_ip(ex.client_ip)
                ok = addr is not None and self.allowed(addr)
                if len(self.verdicts) > 100_000:
                    self.verdicts.clear()
                self.verdicts[ex.client_ip] = ok
        if ok:
            return None
        return Answer(403, "ip_forbidden", f"requests from {ex.client_ip.decode(errors='replace')} are not allowed")

    def allowed(self, addr: Address) -> bool:
        if within(addr, self.deny):
            return False
        return not self.allow or within(addr, self.allow)


@builder("ip-filter")
def build(policy: IpFilterPolicy, ctx: Context) -> Step:
    return IpFilterStep(networks(policy.allow), networks(policy.deny), networks(policy.trusted_proxies))
