"""``crossgate generate``: one prompt through a pipeline with TGATE, optionally beside the plain one.

``--compare`` times plain and TGATE as ``crossgate bench`` does (its runner): one untimed warm-up
each, then ``--rounds`` rounds in alternating order; it prints the median times, the speed-up of the
medians and the min-max of the per-round speed-ups. Fewer than 3 rounds are labelled indicative.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crossgate.cli.common import (
    CommandError,
    DefaultsHelpFormatter,
    add_device_argument,
    add_threads_argument,
    finite_float,
    gate_step_arg,
    image_output_path,
    load_pipeline,
    positive_int,
    save_image,
    set_threads,
    to_pil,
)
from crossgate.config import DEFAULT_GATE_STEP
from crossgate.images import labelled_row, upscale_for_viewing
from crossgate.loading import DTYPES

DEFAULT_ROUNDS = 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        formatter_class=DefaultsHelpFormatter,
        help="generate an image with TGATE (optionally --compare with plain)",
        description=(
            "Generate one image with TGATE. With --compare, also run the plain pipeline and write both "
            "side by side, timed as `crossgate bench` times them: one untimed warm-up each, then --rounds "
            "rounds in alternating order; the label gives median times and the speed-up with its "
            "per-round min-max (fewer than 3 rounds are marked indicative)."
        ),
    )
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the prompt (or use --prompt)")
    p.add_argument("--prompt", dest="prompt_opt", help="the prompt")
    p.add_argument("--negative-prompt", default=None, help="the negative prompt")
    p.add_argument(
        "--model", default=None, help="diffusers pipeline folder or Hub id (default: embedded model)"
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps")
    p.add_argument(
        "--gate-step",
        type=gate_step_arg,
        default=None,
        help=f"TGATE gate m: int steps, fraction in (0,1], or auto (default: {DEFAULT_GATE_STEP} of --steps)",
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
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (a CPU generator)")
    p.add_argument("--height", type=positive_int, default=None, help="image height (default: pipeline's)")
    p.add_argument("--width", type=positive_int, default=None, help="image width (default: pipeline's)")
    add_device_argument(p)
    add_threads_argument(p, default="auto")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="torch dtype")
    p.add_argument(
        "--out",
        default="out.png",
        help="output image (.png, .jpg, .webp); its folder must exist, or is made if the folder it sits in "
        "exists (one new level, never at the filesystem root) (default: out.png)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the plain pipeline; write both side by side, labelled with timings",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        help="with --compare: timed rounds per pipeline after a warm-up (1 is quick but only indicative)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import crossgate

    # Everything the user can get wrong is checked before torch is imported or the model loaded.
    prompt = args.prompt_opt or args.prompt_text
    if not prompt:
        raise CommandError('a prompt is required: crossgate generate "a red circle left of a blue square"')
    if args.no_tgate and args.compare:
        raise CommandError("--compare runs plain and TGATE side by side; it cannot be used with --no-tgate")
    image_output_path(args.out)
    gate = args.gate_step if args.gate_step is not None else DEFAULT_GATE_STEP
    config = None if args.no_tgate else _config(args, gate)
    engages = config is None or config.resolve_min_gate(args.steps) < args.steps
    if config is not None and not engages:
        print(
            f"crossgate generate: warning: the gate (m={config.resolve_gate(args.steps)}) is at or after the "
            f"last of {args.steps} steps, so TGATE never engages: the output equals the plain pipeline's",
            file=sys.stderr,
        )
    threads = set_threads(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    if threads is not None and pipe.device.type == "cpu":
        how = (
            " (auto: what the machine's load leaves idle; --threads N to choose)"
            if args.threads == "auto"
            else ""
        )
        print(f"torch CPU threads: {threads}{how}")
    pipe.set_progress_bar_config(disable=False, leave=False)
    if config is not None:
        try:
            crossgate.check(pipe, config)
        except (crossgate.ConfigError, crossgate.UnsupportedPipelineError) as error:
            raise CommandError(str(error)) from None

    kwargs: dict[str, Any] = dict(
        prompt=prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps
    )
    for key, value in (("guidance_scale", args.guidance), ("height", args.height), ("width", args.width)):
        if value is not None:
            kwargs[key] = value

    if args.compare:
        results = _compare(pipe, kwargs, config, args)
    else:
        results = [_single(pipe, kwargs, config, args, engages)]
    images = [upscale_for_viewing(image) for image, _ in results]
    labels = [label for _, label in results]
    out_image = labelled_row(images, labels) if len(results) > 1 else images[0]
    path = save_image(out_image, args.out)
    for label in labels:
        print(label.replace("\n", ", "))
    print(f"wrote {path}")
    return 0


def _single(pipe: Any, kwargs: dict[str, Any], config: Any, args: argparse.Namespace, engages: bool):
    """One call (plain with --no-tgate, else TGATE), its wall time labelled as the one run it is."""
    import torch

    import crossgate

    def call() -> tuple[Any, float]:
        _sync(pipe)
        start = time.perf_counter()
        image = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(args.seed)).images[0]
        _sync(pipe)
        return to_pil(image), time.perf_counter() - start

    one_run = "1 run, first call: set-up included"
    if config is None:
        print("plain:")
        image, seconds = call()
        return image, f"plain {seconds:.2f}s ({one_run})"
    print(f"TGATE gate_step={config.gate_step}:" if engages else "plain (TGATE never engages):")
    with crossgate.enabled(pipe, config):
        image, seconds = call()
        stats = crossgate.last_call(pipe)
    return image, f"{_tgate_label(stats, config, args.steps)} {seconds:.2f}s ({one_run})"


def _compare(pipe: Any, kwargs: dict[str, Any], config: Any, args: argparse.Namespace):
    """Plain and TGATE timed by the bench runner: warm-up, alternating rounds, medians and spread."""
    import crossgate
    from crossgate.tools.bench import Variant, run_bench

    kept: dict[str, Any] = {}

    def calling(name: str):
        def call(call_kwargs: dict[str, Any]) -> None:
            kept[name] = pipe(**call_kwargs).images[0]
            if name == "TGATE":
                kept["stats"] = crossgate.last_call(pipe)

        return call

    session: list[Any] = []

    def enable() -> None:
        session.append(crossgate.enabled(pipe, config))
        session[-1].__enter__()

    def disable() -> None:
        session.pop().__exit__(None, None, None)

    variants = [
        Variant("plain", call=calling("plain")),
        Variant("TGATE", enable=enable, disable=disable, call=calling("TGATE")),
    ]
    print(f"timing plain and TGATE: 1 warm-up each, then {args.rounds} round(s) in alternating order")
    report = run_bench(
        pipe,
        variants,
        dict(kwargs, output_type="pil"),
        repeats=args.rounds,
        warmup=1,
        seed=args.seed,
        device=pipe.device.type,
        log=lambda text: print(text, flush=True),
    )
    failed = [r for r in report.results if r.error]
    if failed:
        raise CommandError(f"{failed[0].name} failed: {failed[0].error}")
    timing = report.timing("TGATE")
    plain, gated = report.results
    stats = kept.get("stats")
    tgate_label = _tgate_label(stats, config, args.steps)
    macs = ""
    if plain.macs and gated.macs:
        macs = (
            f"; denoiser MACs ratio {gated.macs / plain.macs:.3f} (predicts {plain.macs / gated.macs:.2f}x)"
        )
    print(f"speed-up {timing.describe()}{macs}")
    return [
        (to_pil(kept["plain"]), f"plain {timing.base_median:.2f}s\n{timing.short_how}"),
        (to_pil(kept["TGATE"]), f"{tgate_label} {timing.median:.2f}s\n{timing.short()}"),
    ]


def _tgate_label(stats: Any, config: Any, steps: int) -> str:
    """``TGATE m=10/25``, or ``plain (m=30 >= 25 steps)`` when the gate never closed in the call."""
    if stats is not None and stats.gate >= stats.num_steps:
        return f"plain (m={stats.gate} >= {stats.num_steps} steps)"
    if stats is None and config.resolve_min_gate(steps) >= steps:
        return f"plain (m={config.resolve_gate(steps)} >= {steps} steps)"
    return f"TGATE m={stats.gate}/{stats.num_steps}" if stats is not None else "TGATE"


def _sync(pipe: Any) -> None:
    if getattr(pipe.device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()


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
