"""``crossgate bench``: plain vs crossgate vs peers, side by side in one process, medians and ratios."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

from crossgate.cli.common import (
    CommandError,
    DefaultsHelpFormatter,
    finite_float,
    load_pipeline,
    non_negative_int,
    positive_int,
    resolution_arg,
)
from crossgate.loading import DTYPES, default_model, embedded_model

# What --help lists, written out so that building the parser imports no torch (crossgate.tools.bench
# does); tests/test_cli_main.py keeps these equal to crossgate.tools.bench's BENCH_MODELS, PEERS and
# MIN_ROUNDS.
BENCH_MODELS = (
    "sd15",
    "sd21",
    "sdxl",
    "pixart-alpha",
    "wan13b",
    "sd3-medium",
    "flux1-dev",
    "tiny",
    "tiny-sdxl",
    "tiny-pixart",
    "tiny-wan",
    "tiny-sd3",
    "tiny-flux",
    "embedded",
    "embedded-mmdit",
)
PEERS = (
    "tgate",
    "tgate-v2",
    "deepcache",
    "tomesd",
    "pab",
    "crossgate+deepcache",
    "cfg-cutoff",
)
MIN_ROUNDS = 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        formatter_class=DefaultsHelpFormatter,
        help="time plain vs crossgate (several gates) vs peers (tgate, DeepCache, ToMe, PAB) side by side",
        description=(
            "Random-weight architectures (no download) or a model folder; configurations alternate "
            "in one process after a warm-up; the table gives median seconds and their min-max, "
            "speed-up over plain, the MACs each configuration's denoiser really executed (linear+conv, "
            "counted in the warm-up) and efficiency = measured speed-up / MACs-predicted speed-up. "
            f"Rows timed in fewer than {MIN_ROUNDS} rounds or without a warm-up are marked indicative; rows "
            "whose min-max overlaps a row they are compared with (their baseline, or a row doing the same "
            "MACs) are marked unresolved. Each table records the machine's load average."
        ),
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=None,
        choices=sorted(BENCH_MODELS),
        help="random-weight architectures (sd15, sd21, sdxl, pixart-alpha, wan13b = Wan 2.1 T2V 1.3B; "
        "tiny-* for smoke runs), or `embedded` for the shipped trained model (default: sd15 sdxl)",
    )
    p.add_argument("--model-dir", default=None, help="a diffusers pipeline folder instead of --model")
    p.add_argument(
        "--resolution",
        type=resolution_arg,
        default=None,
        help="image side, or HEIGHTxWIDTH (default on CPU: sd15 256, sdxl 512, pixart-alpha 512, wan13b "
        "64x64; on CUDA: 512, 1024, 1024, 480x832)",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="video models: frames per clip, 1 + 4k (default wan13b: 5 on CPU, 17 on CUDA)",
    )
    p.add_argument(
        "--layers",
        type=positive_int,
        default=None,
        help="smoke runs only: build pixart-alpha / wan13b / sd3-medium / flux1-dev with this many layers "
        "(real widths; FLUX: as many double- and single-stream blocks); the "
        "table is then not the real model's and says so",
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps")
    p.add_argument(
        "--gate-step",
        type=positive_int,
        nargs="+",
        default=[10, 5],
        metavar="M",
        help="crossgate gates m, in steps",
    )
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
    p.add_argument(
        "--time-budget",
        type=finite_float,
        default=None,
        metavar="SECONDS",
        help="per model: start no timed round that would end past this many seconds after the model's "
        "first warm-up (for capped GPU runs; the table says when rounds were cut)",
    )
    p.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="also time plain and crossgate with the denoiser compiled by torch.compile with this backend "
        "(inductor; aot_eager for a quick check); their first call (compile included) is reported apart",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode for --compile (e.g. reduce-overhead: CUDA graphs, one per batch shape)",
    )
    p.add_argument(
        "--compile-split-cfg",
        action="store_true",
        help="with --compile: also time crossgate compiled with compile_split_cfg=True (the steps before "
        "the gate as two B-row passes, so both sides of the gate share one batch shape)",
    )
    p.add_argument("--guidance", type=finite_float, default=7.5, help="guidance_scale")
    p.add_argument("--decode", action="store_true", help="include the VAE decode (default: latents only)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's); on a CPU shared with other jobs fewer threads often time "
        "steadier",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="torch dtype")
    p.add_argument("--out", default="bench-out", help="folder for bench.md, bench.csv, bench.png")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from crossgate.tools.bench import (
        PROMPT,
        BenchError,
        BenchSize,
        build_variants,
        call_kwargs,
        compiled_variants,
        default_size,
        random_pipeline,
        run_bench,
    )

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError("--device cuda requested but torch sees no CUDA device; use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_dir and args.model:
        raise CommandError("pass either --model or --model-dir, not both.")
    gpu = args.device.startswith("cuda")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create --out folder {args.out!r}: {error}") from None
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))

    targets: list[tuple[str, BenchSize | None]] = []
    if args.model_dir:
        size = _size(args, None)
        targets.append((args.model_dir, size))  # the pipeline's own default size if None
    else:
        for model in args.model or ["sd15", "sdxl"]:
            targets.append((model, _size(args, default_size(model, gpu))))

    reports = []
    for model, size in targets:
        where = size.describe() if size is not None else "default size"
        depth = f", {args.layers} layers (smoke run, not the real model)" if args.layers else ""
        log(f"== {model} @ {where}, {args.steps} steps, {args.dtype} on {args.device}{depth}")
        start = time.perf_counter()
        try:
            if args.model_dir or model.startswith("embedded"):
                if args.layers:
                    raise CommandError(
                        "--layers applies to the random-weight transformer architectures only."
                    )
                folder = args.model_dir or (
                    default_model() if model == "embedded" else embedded_model("mmdit")
                )
                if folder is None:
                    raise CommandError(f"{model} is not installed; pass --model-dir or another --model.")
                pipe = load_pipeline(folder, args.device, args.dtype)
                pipe.set_progress_bar_config(disable=True)
            else:
                pipe = random_pipeline(model, args.device, DTYPES[args.dtype], num_layers=args.layers)
            variants = build_variants(pipe, args.gate_step, args.peers)
            if args.compile:
                variants += compiled_variants(
                    pipe, args.gate_step, args.compile, args.compile_mode, split=args.compile_split_cfg
                )
        except BenchError as error:
            raise CommandError(str(error)) from None
        log(f"  built in {time.perf_counter() - start:.1f} s")
        kwargs: dict[str, Any] = dict(
            prompt=PROMPT,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            output_type="pil" if args.decode else "latent",
            **call_kwargs(pipe, size),
        )
        setting = f"{where}, {args.steps} steps, {args.dtype}, {args.device}{depth}"
        report = run_bench(
            pipe,
            variants,
            kwargs,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            log=log,
            model=model,
            setting=setting,
            time_budget=args.time_budget,
        )
        reports.append(report)
        del pipe
        if gpu:
            torch.cuda.empty_cache()
    write_outputs(reports, args, out)
    return 0


def _size(args: argparse.Namespace, default: Any) -> Any:
    """The size to run at: ``--resolution`` / ``--frames`` over the model's default (None: the
    pipeline's own, for --model-dir without --resolution)."""
    from crossgate.tools.bench import BenchSize

    if args.resolution is None and args.frames is None:
        return default
    if args.resolution is None and default is None:
        raise CommandError("--frames needs --resolution with --model-dir.")
    if args.resolution is None:
        height, width = default.height, default.width
    elif isinstance(args.resolution, int):
        height = width = args.resolution
    else:
        height, width = args.resolution
    frames = args.frames if args.frames is not None else (default.frames if default is not None else None)
    return BenchSize(height, width, frames)


def write_outputs(reports: list[Any], args: argparse.Namespace, out: Path) -> None:
    """bench.md (environment header + tables), bench.csv and bench.png into ``out``; print the table."""
    from crossgate.tools.bench import markdown, write_chart, write_csv

    table = markdown(reports)
    header = environment_header(args)
    (out / "bench.md").write_text(header + "\n\n" + table)
    write_csv(reports, out / "bench.csv")
    charted = write_chart(reports, out / "bench.png", title=header.splitlines()[0])
    print(header)
    print()
    print(table)
    print(f"wrote {out / 'bench.md'}, {out / 'bench.csv'}" + (f", {out / 'bench.png'}" if charted else ""))


def environment_header(args: argparse.Namespace) -> str:
    """Machine (with its load), versions and the command, so a table can be reproduced."""
    import os

    import diffusers
    import torch
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
    try:
        load = "load average {:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min) when written".format(*os.getloadavg())
    except (AttributeError, OSError):
        load = "load average not available"
    lines = [
        f"crossgate bench on {machine}, {os.cpu_count() or '?'} CPUs, {load}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        versions,
        "efficiency = measured speed-up / MACs-predicted speed-up (MACs: linear+conv the denoiser executed); "
        "spread = min-max over the timed rounds; each table's heading has the 1-minute load average as its "
        "rows began and ended.",
    ]
    if command:
        lines.append(f"command: `{command}`")
    return "\n".join(lines)
