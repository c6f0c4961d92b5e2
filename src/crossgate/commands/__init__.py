"""CLI subcommands. Each module exposes ``register(subparsers)`` that sets ``func`` on its parser.

To add a command: write ``commands/<name>.py`` with ``register`` and list it below.
"""

from __future__ import annotations

from crossgate.commands import analyze, batch, bench, calibrate, eval, generate, macs
from crossgate.commands.common import CommandError

COMMAND_MODULES = [generate, macs, batch, eval, analyze, bench, calibrate]

__all__ = ["COMMAND_MODULES", "CommandError"]
