"""``crossgate analyze``: where cross-attention converges (paper Figure 2) and the null-text ablation."""

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

FALLBACK_PROMPTS = ["a red circle left of a blue square", "a green triangle above a yellow circle"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="plot cross-attention convergence per step and run the null-text ablation",
        description=(
            "Records every cross-attention layer's output at every denoising step and plots the "
            "relative change ||o_t - o_{t-1}|| / ||o_{t-1}|| per layer and averaged (the TGATE "
            "paper's Figure 2), then replaces the text by the null text before / after step M and "
            "compares the images with the plain output. Writes convergence.{json,csv,png} and "
            "null_text.{json,csv,png} plus null_text_samples.png. Use it to pick a gate step."
        ),
    )
    p.add_argument("--model", default=None, help="diffusers pipeline folder (default: embedded model)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--num-prompts",
        type=positive_int,
        default=16,
        help="without --prompt: this many held-out scene captions (default 16)",
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps (default 25)")
    p.add_argument("--guidance", type=finite_float, default=None, help="guidance_scale (default: pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="base seed (prompt i uses seed + i)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per pipeline call")
    p.add_argument(
        "--null-gates",
        type=int_list,
        default=None,
        metavar="M,M,...",
        help="gate steps for the null-text ablation (default: 1/5, 2/5 and 3/5 of --steps)",
    )
    p.add_argument("--no-null-text", action="store_true", help="skip the null-text ablation")
    add_runtime_arguments(p)
    p.add_argument(
        "--out-dir", default="crossgate-analysis", help="output folder (default crossgate-analysis)"
    )
    p.set_defaults(func=run)


def default_prompts(count: int) -> list[str]:
    """Held-out scene captions spread over the set, or two fixed prompts without the scenes."""
    try:
        from crossgate.tools.quality.runner import default_captions

        captions = default_captions("held-out")
    except ImportError:
        return FALLBACK_PROMPTS[:count]
    stride = max(1, len(captions) // count)
    return captions[::stride][:count]


def run(args: argparse.Namespace) -> int:
    from crossgate.adapters import resolve_adapter
    from crossgate.tools.quality.convergence import record_convergence, write_convergence
    from crossgate.tools.quality.null_text import null_text_ablation, write_null_text

    prompts = args.prompt or default_prompts(args.num_prompts)
    if args.steps < 2:
        raise CommandError("--steps must be >= 2 to measure a change between steps")
    gates = args.null_gates or sorted({max(1, round(args.steps * f)) for f in (0.2, 0.4, 0.6)})
    if max(gates) > args.steps:
        raise CommandError(f"--null-gates must be <= --steps ({args.steps}), got {gates}")
    set_threads(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    out_dir = Path(args.out_dir)
    try:
        result = record_convergence(
            pipe, prompts, args.steps, args.guidance, seed=args.seed, batch_size=args.batch_size
        )
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    if not result.layers:
        raise CommandError(f"{type(pipe).__name__} has no cross-attention layers to analyse")
    written = write_convergence(result, out_dir)
    average = result.average("mean")
    what = "joint blocks' text streams" if resolve_adapter(pipe).joint else "cross-attention layers"
    print(
        f"{len(result.layers)} {what}, {len(prompts)} prompts, {args.steps} steps, "
        f"CFG {'on (curves: mean of the two halves)' if result.cfg else 'off'}"
    )
    print("| step t | mean relative change (all layers) |")
    print("|---|---|")
    for t, value in enumerate(average, start=1):
        print(f"| {t} | {value:.4f} |")
    for threshold in (0.10, 0.05):
        settle = result.settle_step(threshold)
        if settle is not None:
            print(f"average change stays below {threshold:.0%} from step {settle}")
        else:
            print(f"average change does not stay below {threshold:.0%} within the {args.steps} steps")
    if not args.no_null_text:
        if not result.cfg:
            raise CommandError(
                "the null-text ablation needs classifier-free guidance (pass --guidance > 1), or use "
                "--no-null-text"
            )
        try:
            ablation = null_text_ablation(
                pipe, prompts, gates, args.steps, args.guidance, seed=args.seed, batch_size=args.batch_size
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        written += write_null_text(ablation, out_dir)
        judged = ablation.plain_object_accuracy is not None
        print(
            "\n| arm | m | PSNR vs plain dB | SSIM vs plain |"
            + (" objects | relation | flipped |" if judged else "")
        )
        print("|---|---|---|---|" + ("---|---|---|" if judged else ""))
        for row in ablation.rows:
            line = f"| {row.arm} | {row.gate} | {row.psnr:.2f} | {row.ssim:.4f} |"
            if judged:
                line += (
                    f" {row.object_accuracy:.3f} | {row.relation_accuracy:.3f} | {row.relation_flipped:.3f} |"
                )
            print(line)
        if judged:
            print(
                f"plain: objects {ablation.plain_object_accuracy:.3f} relation "
                f"{ablation.plain_relation_accuracy:.3f} flipped {ablation.plain_relation_flipped:.3f}"
            )
    for path in written:
        print(f"wrote {path}")
    return 0
