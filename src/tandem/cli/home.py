"""`tandem home init [DIR]`: a home with the default profiles and lock files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tandem.config import load_profile
from tandem.config.home import GATEWAY_SHARE, init_home, lock_files


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("home", help="create a Tandem home")
    sub = parser.add_subparsers(dest="home_command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="create DIR/profiles with the default profiles and DIR/gateway-share with their lock files",
    )
    init.add_argument("dir", nargs="?", type=Path, default=None, help="the home to create (default: --home)")
    init.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    home: Path = args.dir.resolve() if args.dir is not None else args.home
    for name in init_home(home):
        p = load_profile(home, name)
        role = p.ha.Role if p.ha.Type != "none" else "-"
        print(
            f"created {name:<32} {p.ha.Type:<10} {role:<9} "
            f"client {p.server.ClientAddress}:{p.server.ClientPort}  HA {p.server.HAAddress}:{p.server.HAPort}"
        )
    print(f"created {len(lock_files(home))} lock files in {home / GATEWAY_SHARE}")
    print(f"home ready at {home}")
    return 0
