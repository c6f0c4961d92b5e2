"""``crossgate app``: a local web page comparing the plain pipeline and crossgate on the same seed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from crossgate.cli.common import CommandError, add_device_argument, add_threads_argument, set_threads

HELP = "a local web page: plain vs crossgate on one seed (images, times, MACs, gate, convergence)"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not in 1..65535")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("app", help=HELP)
    p.add_argument(
        "--model", default=None, help="diffusers pipeline folder or Hub id (default: the embedded model)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument(
        "--share", action="store_true", help="also open a public Gradio share link (off by default)"
    )
    add_device_argument(p)
    add_threads_argument(p, default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from crossgate.app import ui
    except ImportError as error:
        raise CommandError(
            f"the web app needs Gradio ({error.name} is missing): pip install 'crossgate[app]'"
        ) from None
    from crossgate.app.runner import ComparisonRunner, InputError

    set_threads(args)
    try:
        runner = ComparisonRunner.from_model(args.model, args.device)
    except InputError as error:
        raise CommandError(str(error)) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"crossgate app: listening on {args.host}: reachable from other machines", file=sys.stderr)
    print(
        f"crossgate app: {runner.model} loaded; starting http://{args.host}:{args.port} (Ctrl+C stops)",
        flush=True,
    )
    try:
        ui.launch(ui.build(runner), host=args.host, port=args.port, share=args.share, quiet=False)
    except OSError as error:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {error}") from None
    return 0
