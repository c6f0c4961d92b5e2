"""``crossgate macs``: per-image denoiser MACs, plain vs TGATE, counted on meta-device architectures."""

from __future__ import annotations

import argparse
from typing import Any

from crossgate.cli.common import CommandError, positive_int


def register(subparsers: Any) -> None:
    from crossgate.tools.accounting import MODELS

    p = subparsers.add_parser(
        "macs",
        help="count per-image denoiser MACs (plain vs TGATE) on bundled architectures, no weights",
        description=(
            "Builds each architecture on the meta device and counts one denoiser call in two "
            "conventions: linear+conv only (the TGATE paper's calflops convention) and all ops "
            "including attention matmuls. Bundled models: " + ", ".join(MODELS) + "."
        ),
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="bundled model keys (default: all)")
    p.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a diffusers pipeline folder or a denoiser folder with config.json (repeatable)",
    )
    p.add_argument("--steps", type=positive_int, default=25, help="denoising steps n (default 25)")
    p.add_argument(
        "--gate-step",
        type=positive_int,
        nargs="+",
        default=[5, 10],
        metavar="M",
        help="TGATE gate steps m to list (default: 5 10)",
    )
    p.add_argument(
        "--sa-interval",
        type=positive_int,
        nargs="*",
        default=[],
        metavar="K",
        help="also list TGATE v2 (self-attention cached with interval K before the gate) for each m",
    )
    p.add_argument("--warm-up", type=int, default=2, help="TGATE v2 warm-up steps (default 2)")
    p.add_argument("--no-cfg", action="store_true", help="count without classifier-free guidance")
    p.add_argument("--resolution", type=positive_int, default=None, help="square image side in pixels")
    p.add_argument("--text-len", type=positive_int, default=None, help="prompt tokens (default per model)")
    p.add_argument("--per-call", action="store_true", help="also print the per-call (one sample) table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossgate.tools.accounting import MODELS, AccountingError, call_macs

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise CommandError(
            f"unknown model(s) {unknown}; bundled: {', '.join(MODELS)} (use --model-dir for a folder)."
        )
    targets = list(args.models) or ([] if args.model_dir else list(MODELS))
    targets += args.model_dir
    try:
        calls = [call_macs(t, args.resolution, args.text_len) for t in targets]
    except AccountingError as error:
        raise CommandError(str(error)) from None
    print(render_table(calls, args))
    if args.per_call:
        print()
        print(render_per_call(calls))
    return 0


def render_table(calls: list[Any], args: argparse.Namespace) -> str:
    """Per-image MACs table: one row per model and setting, both conventions."""
    from crossgate.tools.accounting import Schedule, image_macs, tera

    cfg = not args.no_cfg
    lines = [
        f"Per-image denoiser MACs, n={args.steps} steps, CFG {'on' if cfg else 'off'}.",
        "",
        "| model | setting | MACs (linear+conv) | vs baseline | MACs (all ops) | vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    for call in calls:
        schedules = [Schedule.plain(args.steps, cfg)]
        schedules += [Schedule.tgate(args.steps, m, cfg) for m in args.gate_step]
        schedules += [
            Schedule.tgate_v2(args.steps, m, k, args.warm_up, cfg)
            for m in args.gate_step
            for k in args.sa_interval
        ]
        base = {c: image_macs(call, schedules[0], c) for c in ("linear_conv", "all")}
        for schedule in schedules:
            lc, al = (image_macs(call, schedule, c) for c in ("linear_conv", "all"))
            lines.append(
                f"| {call.model} | {schedule.label} | {tera(lc)} | {lc / base['linear_conv']:.3f} "
                f"| {tera(al)} | {al / base['all']:.3f} |"
            )
    return "\n".join(lines)


def render_per_call(calls: list[Any]) -> str:
    from crossgate.tools.accounting import tera

    lines = [
        "Per denoiser call, one sample (linear+conv unless noted).",
        "",
        "| model | full call | cross-attention skipped | cross-attn share | self-attention | full call (all ops) |",
        "|---|---|---|---|---|---|",
    ]
    for c in calls:
        lines.append(
            f"| {c.model} | {tera(c.full(), 5)} | {tera(c.skipped(), 5)} | {c.cross() / c.full():.1%} "
            f"| {tera(c.self_attn(), 5)} | {tera(c.full('all'), 5)} |"
        )
    return "\n".join(lines)
