"""``crossgate calibrate``: measure convergence on a few prompts and write a fixed-schedule profile."""

from __future__ import annotations

import argparse
from typing import Any

from crossgate.cli.common import (
    CommandError,
    DefaultsHelpFormatter,
    add_runtime_arguments,
    finite_float,
    load_pipeline,
    output_path,
    positive_int,
    set_threads,
)

DEFAULT_PROMPTS = (
    "a red circle left of a blue square",
    "a green triangle above a yellow circle",
    "a blue square right of a red triangle",
    "a yellow square below a green circle",
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        formatter_class=DefaultsHelpFormatter,
        help="measure cross-attention convergence and write a profile for TGateConfig.from_profile",
        description=(
            "Run a few prompts through the plain pipeline, measure how cross-attention converges, and "
            'write the gate `gate_step="auto"` would pick (with these tolerance and guard rails) as a '
            "fixed-schedule profile: TGateConfig.from_profile(PATH). The profile's gate_fraction stays "
            "within [--min-fraction, --max-fraction]."
        ),
    )
    p.add_argument(
        "--model", default=None, help="diffusers pipeline folder or Hub id (default: embedded model)"
    )
    p.add_argument(
        "--prompt", action="append", default=[], help="a prompt (repeatable; default: 4 scene captions)"
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps to calibrate at")
    p.add_argument(
        "--scheduler",
        default=None,
        help="diffusers scheduler class name, e.g. EulerDiscreteScheduler (default: the pipeline's)",
    )
    p.add_argument(
        "--tolerance",
        type=finite_float,
        default=0.05,
        help="relative-change tolerance per 1/25 of the trajectory (TGateConfig.auto_tolerance)",
    )
    p.add_argument(
        "--min-fraction", type=finite_float, default=0.2, help="earliest gate, as a fraction of --steps"
    )
    p.add_argument(
        "--max-fraction", type=finite_float, default=0.8, help="latest gate, as a fraction of --steps"
    )
    p.add_argument("--guidance", type=finite_float, default=None, help="guidance_scale (default: pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt's generator")
    add_runtime_arguments(p)
    p.add_argument("--out", default="crossgate-profile.json", help="the profile (JSON) to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import crossgate
    from crossgate.config import ConfigError, TGateConfig

    try:  # the same validation a config made from the profile gets
        config = TGateConfig(
            gate_step="auto",
            auto_tolerance=args.tolerance,
            auto_min_fraction=args.min_fraction,
            auto_max_fraction=args.max_fraction,
        )
    except ConfigError as error:
        raise CommandError(str(error)) from None
    output_path(args.out)
    from crossgate.tools.quality.calibration import calibrate, write_profile  # torch, from here on

    set_threads(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    try:  # validation only: nothing is attached to the pipeline
        crossgate.check(pipe, config)
    except (crossgate.ConfigError, crossgate.UnsupportedPipelineError) as error:
        raise CommandError(str(error)) from None
    if args.scheduler:
        import diffusers

        cls = getattr(diffusers, args.scheduler, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise CommandError(f"unknown scheduler {args.scheduler!r}; use a diffusers scheduler class name.")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    profile = calibrate(
        pipe,
        args.prompt or DEFAULT_PROMPTS,
        args.steps,
        args.tolerance,
        args.min_fraction,
        args.max_fraction,
        args.guidance,
        args.seed,
    )
    profile["model"] = args.model or "embedded"
    try:
        path = write_profile(profile, args.out)
    except OSError as error:
        raise CommandError(f"cannot write {args.out!r}: {error}") from None
    print(
        f"gate_step {profile['gate_step']}/{args.steps} (fraction {profile['gate_fraction']:.2f}); "
        f"layers settle alone between {min(profile['layer_settle_steps'].values())} and "
        f"{max(profile['layer_settle_steps'].values())}"
    )
    print(f"wrote {path}; use: crossgate.TGateConfig.from_profile({str(path)!r})")
    return 0
