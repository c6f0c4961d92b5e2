"""The ``crossgate`` command line: one subcommand per module of this package.

Each command module exposes ``register(subparsers)``, which sets ``func`` on its parser, and imports
its heavy dependencies (torch, diffusers) inside ``func`` so that ``crossgate --help`` stays fast.
To add a command: write ``cli/<name>.py`` with ``register`` and list it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from crossgate._version import __version__
from crossgate.cli.common import CommandError

COMMANDS = ("generate", "macs", "batch", "eval", "analyze", "bench", "calibrate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossgate", description="TGATE for diffusers: faster sampling by gating cross-attention."
    )
    parser.add_argument("--version", action="version", version=f"crossgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"crossgate.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as error:
        print(f"crossgate {args.command}: error: {error}", file=sys.stderr)
        return 2
