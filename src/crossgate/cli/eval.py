"""``crossgate eval``: TGATE's quality vs compute on scene captions, scored by the analytic judge."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crossgate.cli.common import (
    CommandError,
    add_runtime_arguments,
    finite_float,
    int_list,
    load_pipeline,
    positive_int,
    set_threads,
)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap ``pipe``'s scheduler for another built from the same config (betas, prediction type)."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score plain vs TGATE (several gate steps) on held-out scene captions",
        description=(
            "Generates N images per caption with fixed seeds under each configuration and reports "
            "object accuracy, strict relation accuracy with its flipped control, a Frechet distance "
            "in the judge's feature space against real procedural images, PSNR/SSIM against the "
            "plain pipeline at the same seed, executed denoiser MACs and wall time. Writes "
            "eval.md, eval.csv, eval.json, eval.png (quality vs compute) and samples.png."
        ),
    )
    p.add_argument("--model", default=None, help="diffusers pipeline folder (default: embedded model)")
    p.add_argument(
        "--gate-steps",
        type=int_list,
        default=[1, 2, 3, 5, 8, 10, 15, 25],
        metavar="M,M,...",
        help="TGATE gate steps to evaluate (default 1,2,3,5,8,10,15,25); plain always runs",
    )
    p.add_argument(
        "--null-text",
        type=int_list,
        default=[],
        metavar="M,M,...",
        help="also run the null-text ablation (text replaced by null before / after step M)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SPEC",
        help=(
            "extra configuration (repeatable): plain, tgate:M, tgate:M:k=K (TGATE v2: self-attention "
            "recomputed every K-th step before the gate), tgate:M:late=K (every K-th step after it), "
            "tgate:M:w=W[:d=D] (guidance_after_gate W, decay D), null-before:M, null-after:M, "
            "auto:TOL (gate when cross-attention converged), profile:PATH (a `crossgate calibrate` "
            "profile). Study configurations (docs/quality-frontier.md): cfg-cutoff:M (CFG dropped from "
            "step M, cross-attention still computed), cache-only:M (cross-attention frozen per CFG "
            "branch, both branches run), deepcache:N (DeepCache, interval N), tgate:M:dc=N (crossgate "
            "+ DeepCache), tgate:M:dca=N (DeepCache after the gate only), tgate:M:w=W:ws=eps (kept "
            "guidance rescaled by the noise level)"
        ),
    )
    p.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default=None,
        help="replace the pipeline's scheduler (same config): " + ", ".join(sorted(SCHEDULERS)),
    )
    p.add_argument("--per-caption", type=positive_int, default=4, help="images per caption (default 4)")
    p.add_argument(
        "--captions",
        choices=["held-out", "train", "all"],
        default="held-out",
        help="caption set of the embedded scenes (default held-out: never seen in training)",
    )
    p.add_argument("--caption-file", default=None, help="one scene caption per line instead of --captions")
    p.add_argument("--max-captions", type=positive_int, default=None, help="use only the first K captions")
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps (default 25)")
    p.add_argument("--guidance", type=finite_float, default=None, help="guidance_scale (default: pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="base seed (image i uses seed + i)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="prompts per pipeline call")
    add_runtime_arguments(p)
    p.add_argument("--out-dir", default="crossgate-eval", help="output folder (default crossgate-eval)")
    p.set_defaults(func=run)


def _captions(args: argparse.Namespace) -> list[str]:
    from crossgate.tools.quality.judge import Judge
    from crossgate.tools.quality.runner import default_captions

    if args.caption_file:
        try:
            lines = Path(args.caption_file).read_text().splitlines()
        except OSError as error:
            raise CommandError(f"cannot read --caption-file {args.caption_file!r}: {error}") from None
        captions = [line.strip() for line in lines if line.strip()]
        for caption in captions:
            try:
                Judge.parse(caption)
            except ValueError as error:
                raise CommandError(f"{args.caption_file}: {error}") from None
    else:
        captions = default_captions(args.captions)
    captions = captions[: args.max_captions] if args.max_captions else captions
    if not captions:
        raise CommandError("no captions to evaluate")
    return captions


def run(args: argparse.Namespace) -> int:
    import crossgate
    from crossgate.tools.quality.report import markdown_table, write_report
    from crossgate.tools.quality.runner import RunConfig, evaluate

    try:
        configs = [RunConfig("tgate", m) for m in args.gate_steps]
        for m in args.null_text:
            configs += [RunConfig("null-before", m), RunConfig("null-after", m)]
        configs += [RunConfig.parse(spec) for spec in args.config]
    except ValueError as error:
        raise CommandError(str(error)) from None
    too_late = [c.name for c in configs if c.kind.startswith("null") and c.gate > args.steps]
    if too_late:
        raise CommandError(f"null-text gate steps must be <= --steps {args.steps}: {too_late}")
    captions = _captions(args)
    set_threads(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    try:
        crossgate.check(pipe, gate_step=1)
    except crossgate.UnsupportedPipelineError as error:
        raise CommandError(str(error)) from None
    try:
        report = evaluate(
            pipe,
            captions,
            configs,
            per_caption=args.per_caption,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(markdown_table(report))
    for path in write_report(report, Path(args.out_dir)):
        print(f"wrote {path}")
    return 0
