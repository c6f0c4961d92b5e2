"""``crossgate bench``: plain vs crossgate vs peers, side by side in one process, medians and ratios."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from crossgate.cli.common import (
    DTYPES,
    CommandError,
    default_model,
    finite_float,
    load_pipeline,
    non_negative_int,
    positive_int,
)


def register(subparsers: Any) -> None:
    from crossgate.tools.bench import BENCH_MODELS, MIN_ROUNDS, PEERS

    p = subparsers.add_parser(
        "bench",
        help="time plain vs crossgate (several gates) vs peers (tgate, DeepCache, ToMe, PAB) side by side",
        description=(
            "Random-weight architectures (no download) or a model folder; configurations alternate "
            "in one process after a warm-up; the table gives median seconds and their min-max, "
            "speed-up over plain, the MACs each configuration's denoiser really executed (linear+conv, "
            "counted in the warm-up) and efficiency = measured speed-up / MACs-predicted speed-up. "
            f"Rows timed in fewer than {MIN_ROUNDS} rounds or without a warm-up are marked indicative."
        ),
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=None,
        choices=sorted(BENCH_MODELS),
        help="random-weight architectures, or `embedded` for the shipped trained model "
        "(default: sd15 sdxl, on CPU and on CUDA)",
    )
    p.add_argument("--model-dir", default=None, help="a diffusers pipeline folder instead of --model")
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="square image side (default: sd15 256 / sdxl 512 on CPU; 512 / 1024 on CUDA)",
    )
    p.add_argument("--steps", type=positive_int, default=25)
    p.add_argument("--gate-step", type=positive_int, nargs="+", default=[10, 5], metavar="M")
    p.add_argument(
        "--peers",
        nargs="*",
        default=list(PEERS),
        choices=PEERS,
        help="peer methods to include (default: all; pass --peers with no value for none)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help=f"timed rounds (median and min-max reported; fewer than {MIN_ROUNDS} are flagged as indicative)",
    )
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        default=1,
        help="untimed runs per configuration (0: count MACs in the first timed round, for slow CPUs; "
        "rows are then flagged as indicative)",
    )
    p.add_argument("--guidance", type=finite_float, default=7.5)
    p.add_argument("--decode", action="store_true", help="include the VAE decode (default: latents only)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--out", default="bench-out", help="folder for bench.md, bench.csv, bench.png")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossgate.tools.bench import (
        BENCH_MODELS,
        PROMPT,
        BenchError,
        build_variants,
        markdown,
        random_pipeline,
        run_bench,
        write_chart,
        write_csv,
    )

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda requested but torch sees no CUDA device; use --device cpu.")
    if args.model_dir and args.model:
        raise CommandError("pass either --model or --model-dir, not both.")
    gpu = args.device.startswith("cuda")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create --out folder {args.out!r}: {error}") from None
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))

    targets: list[tuple[str, int | None]] = []
    if args.model_dir:
        targets.append((args.model_dir, args.resolution))  # the pipeline's own default size if None
    else:
        for model in args.model or ["sd15", "sdxl"]:
            default = BENCH_MODELS[model]
            if gpu and model in ("sd15", "sdxl"):
                default *= 2
            targets.append((model, args.resolution or default))

    reports = []
    for model, resolution in targets:
        log(f"== {model} @ {resolution}px, {args.steps} steps, {args.dtype} on {args.device}")
        start = time.perf_counter()
        try:
            if args.model_dir or model == "embedded":
                folder = args.model_dir or default_model()
                if folder is None:
                    raise CommandError("the embedded model is not installed; pass --model-dir or a --model.")
                pipe = load_pipeline(folder, args.device, args.dtype)
                pipe.set_progress_bar_config(disable=True)
            else:
                pipe = random_pipeline(model, args.device, DTYPES[args.dtype])
            variants = build_variants(pipe, args.gate_step, args.peers)
        except BenchError as error:
            raise CommandError(str(error)) from None
        log(f"  built in {time.perf_counter() - start:.1f} s")
        call_kwargs: dict[str, Any] = dict(
            prompt=PROMPT,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            output_type="pil" if args.decode else "latent",
        )
        if resolution is not None:
            call_kwargs.update(height=resolution, width=resolution)
        setting = f"{resolution or 'default'}px, {args.steps} steps, {args.dtype}, {args.device}"
        report = run_bench(
            pipe,
            variants,
            call_kwargs,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            log=log,
            model=model,
            setting=setting,
        )
        reports.append(report)
        del pipe
        if gpu:
            torch.cuda.empty_cache()

    table = markdown(reports)
    header = environment_header(args)
    (out / "bench.md").write_text(header + "\n\n" + table)
    write_csv(reports, out / "bench.csv")
    charted = write_chart(reports, out / "bench.png", title=header.splitlines()[0])
    print(header)
    print()
    print(table)
    print(f"wrote {out / 'bench.md'}, {out / 'bench.csv'}" + (f", {out / 'bench.png'}" if charted else ""))
    return 0


def environment_header(args: argparse.Namespace) -> str:
    """Machine, versions and the command, so a table can be reproduced."""
    import diffusers
    import transformers

    import crossgate

    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    versions = (
        f"crossgate {crossgate.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}"
    )
    command = "crossgate " + " ".join(sys.argv[1:]) if sys.argv and "crossgate" in sys.argv[0] else ""
    lines = [
        f"crossgate bench on {machine}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        versions,
        "efficiency = measured speed-up / MACs-predicted speed-up (MACs: linear+conv the denoiser executed); "
        "spread = min-max over the timed rounds.",
    ]
    if command:
        lines.append(f"command: `{command}`")
    return "\n".join(lines)
