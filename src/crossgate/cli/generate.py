"""``crossgate generate``: one prompt through a pipeline with TGATE, optionally beside the plain one."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crossgate.cli.common import (
    DTYPES,
    CommandError,
    add_device_argument,
    finite_float,
    gate_step_arg,
    image_output_path,
    labelled_row,
    load_pipeline,
    positive_int,
    save_image,
    to_pil,
    upscale_for_viewing,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="generate an image with TGATE (optionally --compare with plain)"
    )
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the prompt (or use --prompt)")
    p.add_argument("--prompt", dest="prompt_opt", help="the prompt")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument(
        "--model", default=None, help="diffusers pipeline folder or Hub id (default: embedded model)"
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps (default 25)")
    p.add_argument(
        "--gate-step",
        type=gate_step_arg,
        default=None,
        help="TGATE gate m: int steps, fraction in (0,1], or auto (default: 0.4 of --steps)",
    )
    p.add_argument(
        "--self-attention-interval",
        type=positive_int,
        default=None,
        metavar="K",
        help="TGATE v2: recompute self-attention every K-th step before the gate (default: off)",
    )
    p.add_argument("--profile", default=None, help="a `crossgate calibrate` profile (overrides --gate-step)")
    p.add_argument("--no-tgate", action="store_true", help="run the plain pipeline only")
    p.add_argument("--guidance", type=finite_float, default=None, help="guidance_scale (default: pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    add_device_argument(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--out", default="out.png", help="output PNG (default out.png)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the plain pipeline; write both side by side labelled with wall times",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import crossgate

    # Everything the user can get wrong is checked before the model is loaded.
    prompt = args.prompt_opt or args.prompt_text
    if not prompt:
        raise CommandError('a prompt is required: crossgate generate "a red circle left of a blue square"')
    if args.no_tgate and args.compare:
        raise CommandError("--compare runs plain and TGATE side by side; it cannot be used with --no-tgate")
    image_output_path(args.out)
    gate = args.gate_step if args.gate_step is not None else 0.4
    config = None if args.no_tgate else _config(args, gate)
    engages = config is None or config.resolve_min_gate(args.steps) < args.steps
    if config is not None and not engages:
        print(
            f"crossgate generate: warning: the gate (m={config.resolve_gate(args.steps)}) is at or after the "
            f"last of {args.steps} steps, so TGATE never engages: the output equals the plain pipeline's",
            file=sys.stderr,
        )
    import torch

    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=False, leave=False)
    if config is not None:
        try:
            crossgate.check(pipe, config)
        except (crossgate.ConfigError, crossgate.UnsupportedPipelineError) as error:
            raise CommandError(str(error)) from None

    def generate(label: str) -> tuple[Any, float]:
        kwargs: dict[str, Any] = dict(
            prompt=prompt,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            generator=torch.Generator("cpu").manual_seed(args.seed),
        )
        for key, value in (("guidance_scale", args.guidance), ("height", args.height), ("width", args.width)):
            if value is not None:
                kwargs[key] = value
        print(f"{label}:")
        start = time.perf_counter()
        image = pipe(**kwargs).images[0]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return to_pil(image), time.perf_counter() - start

    if args.compare:  # one untimed step first, so neither timed run pays the first call's set-up
        pipe(prompt=prompt, num_inference_steps=1, output_type="latent")
    results: list[tuple[Any, str]] = []
    if args.compare or args.no_tgate:
        image, seconds = generate("plain")
        results.append((image, f"plain {seconds:.2f}s"))
    if config is not None:
        with crossgate.enabled(pipe, config):
            image, seconds = generate(f"TGATE gate_step={gate}" if engages else "plain (TGATE never engages)")
            stats = crossgate.last_call(pipe)
        if stats is not None:
            engages = stats.gate < stats.num_steps
        if not engages:  # labelled as what it is
            m, n = (stats.gate, stats.num_steps) if stats else (config.resolve_gate(args.steps), args.steps)
            label = f"plain (m={m} >= {n} steps) {seconds:.2f}s"
        elif stats is not None:
            label = f"TGATE m={stats.gate}/{stats.num_steps} {seconds:.2f}s"
        else:
            label = f"TGATE {seconds:.2f}s"
        results.append((image, label))
    images = [upscale_for_viewing(image) for image, _ in results]
    out_image = labelled_row(images, [label for _, label in results]) if len(results) > 1 else images[0]
    path = save_image(out_image, args.out)
    for _, label in results:
        print(label)
    print(f"wrote {path}")
    return 0


def _config(args: argparse.Namespace, gate: Any):
    from crossgate.config import ConfigError, TGateConfig

    try:
        if args.profile:
            return TGateConfig.from_profile(
                args.profile, self_attention_interval=args.self_attention_interval
            )
        return TGateConfig(gate_step=gate, self_attention_interval=args.self_attention_interval)
    except ConfigError as error:
        raise CommandError(str(error)) from None
