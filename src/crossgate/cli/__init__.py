"""The ``crossgate`` command line: one subcommand per module of this package.

Each command module exposes ``register(subparsers)``, which sets ``func`` on its parser, and imports
its heavy dependencies (torch, diffusers) inside ``func``. Registration is lazy: only the module of
the command being run is imported; every other command appears in ``crossgate --help`` from
``COMMANDS`` below, so ``crossgate --help`` imports no command module at all (a test keeps these
lines equal to what each module registers). To add a command: write ``cli/<name>.py`` with
``register`` and add its one-line help to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from crossgate._version import __version__
from crossgate.cli.common import CommandError, quiet_third_party

# name -> the one-line help its module registers (in the order `crossgate --help` lists them).
COMMANDS = {
    "generate": "generate an image with TGATE (optionally --compare with plain)",
    "macs": "count per-image denoiser MACs (plain vs TGATE) on bundled architectures, no weights",
    "batch": "generate images for a file of prompts (resumable; runs under `accelerate launch`)",
    "eval": "score plain vs TGATE (several gate steps) on held-out scene captions",
    "analyze": "plot cross-attention convergence per step and run the null-text ablation",
    "bench": "time plain vs crossgate (several gates) vs peers (tgate, DeepCache, ToMe, PAB) side by side",
    "calibrate": "measure cross-attention convergence and write a profile for TGateConfig.from_profile",
    "app": "a local web page: plain vs crossgate on one seed (images, times, MACs, gate, convergence)",
}


def build_parser(load: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The ``crossgate`` parser; the commands in ``load`` are registered by their modules.

    The other commands get a placeholder parser that only carries their help line (enough for
    ``crossgate --help`` and for finding which command to load).
    """
    load = set(load)
    parser = argparse.ArgumentParser(
        prog="crossgate", description="TGATE for diffusers: faster sampling by gating cross-attention."
    )
    parser.add_argument("--version", action="version", version=f"crossgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_line in COMMANDS.items():
        if name in load:
            importlib.import_module(f"crossgate.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    try:
        # Which command? (`--help` and `--version` exit here, having imported no command module.)
        command = build_parser().parse_known_args(argv)[0].command
        args = build_parser([command]).parse_args(argv)
        with quiet_third_party():
            return int(args.func(args) or 0)
    except CommandError as error:
        print(f"crossgate {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crossgate {command}: interrupted" if command else "crossgate: interrupted", file=sys.stderr)
        return 130
