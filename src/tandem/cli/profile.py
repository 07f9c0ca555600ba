"""`tandem profile list|show|set|configure-ha`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import tomli_w

from tandem.config import (
    Profile,
    configure_ha,
    list_profiles,
    load_profile,
    profile_to_dict,
    profile_warnings,
    resolve_profile_name,
    set_profile_values,
)
from tandem.errors import ConfigError

SECRETS = ("PairSecret", "Token")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("profile", help="list, show and edit profiles")
    sub = parser.add_subparsers(dest="profile_command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="every profile of the home, one table")
    p.add_argument("--json", action="store_true", help="one JSON object per profile, in a list")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="the merged profile, defaults included")
    p.add_argument("profile", help='e.g. "haprofile1/primary/AMS", or "haprofile1/primary" with --mode')
    p.add_argument("--mode", "-mode", type=str.upper, choices=("AMS", "AGS"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--show-secrets", action="store_true", help="print PairSecret and Token instead of ***")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("set", help="set [section] keys of one profile: server.ClientPort=18000 ...")
    p.add_argument("profile", help='e.g. "server1/AMS", or "server1" with --mode')
    p.add_argument("assignments", nargs="+", metavar="SECTION.KEY=VALUE")
    p.add_argument("--mode", "-mode", type=str.upper, choices=("AMS", "AGS"), default=None)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser(
        "configure-ha",
        help="configure both halves of a pair consistently, each pointing at the other",
        description=(
            "Set Type on PAIR/primary/COMPONENT and PAIR/secondary/COMPONENT, point each half's "
            "BackupServerIp/BackupHAIPAddress/BackupHAPort at the other, share one PairSecret, and apply "
            "--set items: [ha] keys (LockFile, GatewayServerIPAddress, timing keys, ...) to both halves, "
            "primary.KEY=V / secondary.KEY=V for per-half ClientAddress, ClientPort, HAAddress, HAPort, DbPath."
        ),
    )
    p.add_argument("pair", help='e.g. "haprofile1"')
    p.add_argument("--component", required=True, type=str.upper, choices=("AMS", "AGS"))
    p.add_argument("--type", dest="ha_type", required=True, choices=("replicated", "shared"))
    p.add_argument("--set", dest="assignments", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_configure_ha)


def _mask(data: dict[str, Any]) -> dict[str, Any]:
    for section in ("ha", "gateway"):
        table = data.get(section)
        if isinstance(table, dict):
            for key in SECRETS:
                if table.get(key):
                    table[key] = "***"
    return data


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = []
    loaded: list[dict[str, Any]] = []
    bad: list[str] = []
    for name in list_profiles(args.home):
        try:
            p = load_profile(args.home, name)
        except ConfigError as exc:
            bad.append(str(exc))
            rows.append((name, "?", "invalid", "-", "-", "-"))
            continue
        loaded.append(_mask(profile_to_dict(p)))
        rows.append((
            name,
            p.mode,
            p.ha.Type,
            p.ha.Role if p.ha.Type != "none" else "-",
            f"{p.server.ClientAddress}:{p.server.ClientPort}",
            f"{p.server.HAAddress}:{p.server.HAPort}",
        ))
    if args.json:
        print(json.dumps(loaded, indent=2))
    else:
        table = [("PROFILE", "MODE", "TYPE", "ROLE", "CLIENT", "HA"), *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for message in bad:
        sys.stderr.write(f"tandem: {message}\n")
    return 2 if bad else 0


def cmd_show(args: argparse.Namespace) -> int:
    profile = load_profile(args.home, resolve_profile_name(args.profile, args.mode))
    data = profile_to_dict(profile)
    if not args.show_secrets:
        _mask(data)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"# {profile.name} ({profile.folder / 'profile.toml'}), defaults included")
    print(tomli_w.dumps({k: v for k, v in data.items() if isinstance(v, dict)}), end="")
    return 0


def _warn(profiles: tuple[Profile, ...]) -> None:
    for p in profiles:
        for line in profile_warnings(p):
            sys.stderr.write(f"tandem: warning: {line}\n")


def cmd_set(args: argparse.Namespace) -> int:
    name = resolve_profile_name(args.profile, args.mode)
    profile = set_profile_values(args.home, name, args.assignments)
    shown = [a if not a.partition("=")[0].endswith(SECRETS) else a.partition("=")[0] + "=***"
             for a in args.assignments]
    print(f"updated {profile.name}: {', '.join(shown)}")
    _warn((profile,))
    return 0


def cmd_configure_ha(args: argparse.Namespace) -> int:
    pair = configure_ha(args.home, args.pair, args.component, args.ha_type, args.assignments)
    for p in pair:
        ha = p.ha
        print(
            f"updated {p.name}: Type={ha.Type} Role={ha.Role} "
            f"peer HA {ha.BackupHAIPAddress}:{ha.BackupHAPort} client {ha.BackupServerIp} "
            f"LockFile={ha.LockFile or '-'} GatewayServerIPAddress={ha.GatewayServerIPAddress or '-'}"
        )
    _warn(pair)
    return 0
