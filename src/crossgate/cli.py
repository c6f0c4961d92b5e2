"""The ``crossgate`` command line: one subcommand per module in :mod:`crossgate.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crossgate.commands import COMMAND_MODULES, CommandError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossgate", description="TGATE for diffusers: faster sampling by gating cross-attention."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as error:
        print(f"crossgate {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
