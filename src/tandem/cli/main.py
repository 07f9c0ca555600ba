"""`tandem` entry point: a global `--home`, then one command group per module.

Each group module exposes `register(subparsers)`; the parser it adds sets
`func(args) -> int`. Every `TandemError` becomes one line on stderr and its
exit code (2 for bad input), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tandem.errors import TandemError

GROUPS = ("home", "profile", "server", "status", "ha", "api", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own errors: one line, exit 2
        sys.stderr.write(f"tandem: {message}\n")
        raise SystemExit(2)


def default_home() -> Path:
    return Path(os.environ.get("TANDEM_HOME", "tandem-home")).resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tandem", description="Tandem API management: HA AMS and AGS servers")
    parser.add_argument("--home", type=Path, default=None,
                        help="Tandem home folder (env TANDEM_HOME, default ./tandem-home)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in GROUPS:
        try:
            module = importlib.import_module(f"tandem.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tandem.cli.{name}":
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.home is None:
        args.home = default_home()
    else:
        args.home = args.home.resolve()
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except TandemError as exc:
        sys.stderr.write(f"tandem: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
