"""`tandem ha switchover|force-activate -mode M -profile P`.

Both talk to the servers' HA ports, signed with the pair's secret read from
the profile (whoever can read the profile may command the pair). A command is
addressed to one half (its role) at the epoch its /ha/status showed, so a
captured command cannot be obeyed twice or by the other half.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from tandem.config import Profile, load_profile, resolve_profile_name
from tandem.errors import ServerError, UsageError
from tandem.ha.backchannel import AUTH_HEADER, OPERATOR, sign_request

DEADLINE = 15.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ha", help="operate an HA pair")
    hs = p.add_subparsers(dest="ha_command", metavar="ACTION", required=True)
    for name, helptext in (("switchover", "hand the active role to the in-sync passive"),
                           ("force-activate", "let a Waiting server activate although it may miss writes")):
        a = hs.add_parser(name, help=helptext, allow_abbrev=False)
        a.add_argument("-mode", "--mode", dest="mode", type=str.upper, choices=["AMS", "AGS"], default=None)
        a.add_argument("-profile", "--profile", dest="profile", required=True)
        if name == "force-activate":
            a.add_argument("--yes", action="store_true", help="confirm: acknowledged writes may be lost")
        a.set_defaults(func=switchover if name == "switchover" else force_activate)


def _profile(args: argparse.Namespace) -> Profile:
    prof = load_profile(args.home, resolve_profile_name(args.profile, args.mode))
    if prof.ha.Type == "none":
        raise UsageError(f"{prof.name} is a standalone server (Type none): no pair to operate")
    return prof


def _post(base: str, path: str, secret: str, payload: dict[str, object], status: dict[str, object] | None
          ) -> httpx.Response:
    """A signed command to the server at `base`, which `status` (its /ha/status) describes."""
    if not status:
        raise ServerError(f"{base} does not answer /ha/status: cannot address a command to it")
    body = json.dumps(payload).encode()
    auth, _ = sign_request(secret, "POST", path, body, sender=OPERATOR, receiver=str(status.get("role")),
                           epoch=int(str(status.get("epoch") or 0)))
    return httpx.post(base + path, content=body, timeout=10.0,
                      headers={AUTH_HEADER: auth, "content-type": "application/json"})


def _status(base: str) -> dict[str, object] | None:
    try:
        r = httpx.get(base + "/ha/status", timeout=1.0)
        data: dict[str, object] | None = r.json() if r.status_code == 200 else None
        return data
    except (httpx.HTTPError, ValueError):
        return None


def switchover(args: argparse.Namespace) -> int:
    prof = _profile(args)
    me = prof.ha_url
    peer = prof.peer_ha_url
    sts = {me: _status(me), peer: _status(peer)}
    active = [u for u, st in sts.items() if st and st.get("serving")]
    if not active:
        raise ServerError(f"no server of the pair of {prof.name} is serving: nothing to switch over")
    src = active[0]
    dst = peer if src == me else me
    t0 = time.monotonic()
    r = _post(src, "/ha/switchover", prof.ha.PairSecret, {"requested_by": "tandem ha switchover"}, sts[src])
    if r.status_code != 200:
        try:
            why = r.json().get("error", r.text)
        except ValueError:
            why = r.text
        raise ServerError(f"switchover refused by {src}: {why}")
    while time.monotonic() - t0 < DEADLINE:
        st = _status(dst)
        if st and st.get("serving"):
            ms = (time.monotonic() - t0) * 1000
            print(f"switchover done: {sts[src]['server']} -> {st['server']} (epoch {st['epoch']}) "  # type: ignore[index]
                  f"in {ms:.0f} ms")
            return 0
        time.sleep(0.02)
    raise ServerError(f"switchover: {dst} did not start serving within {DEADLINE:.0f} s")


def force_activate(args: argparse.Namespace) -> int:
    prof = _profile(args)
    if not args.yes:
        raise UsageError("force-activate may lose acknowledged writes (rule 5); repeat with --yes to confirm")
    r = _post(prof.ha_url, "/ha/force-activate", prof.ha.PairSecret, {"requested_by": "tandem ha force-activate"},
              _status(prof.ha_url))
    if r.status_code != 200:
        raise ServerError(f"force-activate refused by {prof.ha_url}: {r.text[:200]}")
    print(f"{prof.name}: force-activate recorded; it activates when it can take the lock "
          "(see its log and /ha/status)")
    return 0
