"""``crossgate batch``: many prompts to a folder of images + manifest, on one or many accelerate processes.

    crossgate batch prompts.txt --out runs/a
    accelerate launch --multi_gpu --num_processes 8 -m crossgate.cli batch prompts.jsonl --out runs/a

See docs/batch.md for the guarantees (determinism, resume after kill -9, manifest).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossgate.cli.common import (
    CommandError,
    DefaultsHelpFormatter,
    finite_float,
    fixed_gate_step_arg,
    load_pipeline,
    positive_int,
)
from crossgate.config import DEFAULT_GATE_STEP
from crossgate.loading import DTYPES, default_model, looks_local

WORKER_EXIT_DELAY_S = 5.0
EPILOG = (
    "Several processes: `accelerate launch --multi_gpu --num_processes N -m crossgate.cli batch ...`. "
    "Without --multi_gpu (and without an `accelerate config` that says multi-GPU), `accelerate launch "
    "--num_processes N` on a machine with no GPU starts ONE process, silently; crossgate then warns. "
    "--multi_gpu works on CPU too: crossgate asks accelerate for CPU processes, which talk over gloo "
    "(give each --threads so that N x threads fits the cores)."
)
SINGLE_PROCESS_WARNING = (
    "crossgate batch: warning: `accelerate launch` asked for several processes but started only this one "
    "(it does so without --multi_gpu on a machine with no GPU). To run N processes: accelerate launch "
    "--multi_gpu --num_processes N -m crossgate.cli batch ... (on CPU too)."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "batch",
        formatter_class=DefaultsHelpFormatter,
        help="generate images for a file of prompts (resumable; runs under `accelerate launch`)",
        description=(
            "Generate one image per prompt into OUT/images, with OUT/manifest.jsonl. Run it plainly or "
            "under `accelerate launch` (each process takes a share). Killed and started again with the "
            "same arguments, it generates only what is missing. See docs/batch.md."
        ),
        epilog=EPILOG,
    )
    p.add_argument("prompts", metavar="PROMPTS", help="text file (one prompt per line) or JSONL file")
    p.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    p.add_argument(
        "--format",
        choices=("auto", "text", "jsonl"),
        default="auto",
        help="input format (default auto: JSONL for *.jsonl or when the first line starts with '{')",
    )
    p.add_argument(
        "--model", default=None, help="diffusers pipeline folder or Hub id (default: embedded model)"
    )
    p.add_argument("--steps", type=positive_int, default=25, help="num_inference_steps (default 25)")
    p.add_argument(
        "--gate-step",
        type=fixed_gate_step_arg,
        default=DEFAULT_GATE_STEP,
        help="TGATE gate m: int steps or fraction in (0,1] (not auto: the run records a fixed gate)",
    )
    p.add_argument("--no-tgate", action="store_true", help="run the plain pipeline (no TGATE)")
    p.add_argument("--guidance", type=finite_float, default=None, help="guidance_scale (default: pipeline's)")
    p.add_argument(
        "--seed", type=int, default=0, help="base seed for prompts without their own seed (default 0)"
    )
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="prompts per pipeline call (default 4); images are bit-reproducible for a fixed batch size",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="one pipeline call per prompt, so images are bit-identical whatever --batch-size and the "
        "number of processes (slower on GPUs)",
    )
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads per process (default: torch's)"
    )
    p.set_defaults(func=run)


def resolve_model(model: str | None) -> str:
    """The model as recorded in run.json: an absolute folder path, or a Hub id as given."""
    model = model or default_model()
    if model is None:
        raise CommandError("--model is required (no embedded default model is installed).")
    path = Path(model).expanduser()
    if not looks_local(model):
        return model
    if not (path / "model_index.json").is_file():
        raise CommandError(
            f"model folder {model!r} not found or not a diffusers pipeline (no model_index.json); "
            "pass a folder saved with save_pretrained."
        )
    return str(path.resolve())


def launched_alone(environ: Mapping[str, str]) -> bool:
    """Whether ``accelerate launch --num_processes N`` (N > 1) fell back to one plain process.

    accelerate's simple launcher (what it uses without --multi_gpu on a machine with no GPU) runs one
    process and still sets ``MASTER_ADDR`` when N > 1; a real multi-process launch (torchrun) sets
    ``WORLD_SIZE`` too. Both mark the launch with ``ACCELERATE_MIXED_PRECISION``.
    """
    return (
        "ACCELERATE_MIXED_PRECISION" in environ and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ
    )


def run(args: argparse.Namespace) -> int:
    """Run the command; Ctrl-C ends it with status 130 and nothing partial left behind."""
    main = True
    try:
        import torch
        from accelerate import PartialState

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        # Asking for CPU without CUDA is what makes `accelerate launch --multi_gpu` start gloo processes.
        state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
        main = state.is_main_process
        if state.num_processes == 1 and launched_alone(os.environ):
            print(SINGLE_PROCESS_WARNING, file=sys.stderr, flush=True)
        return _run(args, state)
    except KeyboardInterrupt:
        # Writes remove their temporary file and an image whose record was not written, on the way out.
        if main:
            print(
                "crossgate batch: interrupted; finished images are kept and nothing partial was left. "
                "Run the same command again to generate the rest.",
                file=sys.stderr,
                flush=True,
            )
        return 130


def _run(args: argparse.Namespace, state: Any) -> int:
    import torch

    from crossgate.tools.batch import (
        BatchError,
        GenerationSettings,
        OutputDir,
        WriteError,
        parse_prompts,
        run_batch,
    )

    if not state.is_main_process:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # one progress display: the main process's
        transformers_logging.disable_progress_bar()

    def fail(error: Exception) -> int:
        # Every process sees the same error, and only the main process prints it; except for a failed
        # write, which only the process that hit it knows about.
        if state.is_main_process or isinstance(error, WriteError):
            print(f"crossgate batch: error: {error}", file=sys.stderr, flush=True)
        if state.num_processes > 1:
            if not state.is_main_process and not isinstance(error, WriteError):
                # The launcher stops every process once one exits with an error. Let the main process
                # be that one (a worker exiting first can get it killed before it prints); the
                # launcher ends this wait.
                time.sleep(WORKER_EXIT_DELAY_S)
            # Left to interpreter exit after a collective, gloo's teardown may abort the process.
            state.destroy_process_group()
        return 2

    try:
        model = resolve_model(args.model)
        items = parse_prompts(args.prompts, args.format, args.seed)
        device = str(state.device)
        device_type = state.device.type
        settings = GenerationSettings(
            model=model,
            steps=args.steps,
            guidance=args.guidance,
            height=args.height,
            width=args.width,
            tgate=not args.no_tgate,
            gate_step=args.gate_step,
            dtype=args.dtype,
            batch_size=args.batch_size,
            exact=args.exact,
            device=device_type,
            # CPU threads change the rounding of CPU kernels only; elsewhere they change nothing.
            threads=torch.get_num_threads() if device_type == "cpu" else None,
        )
        summary = run_batch(
            items,
            OutputDir(Path(args.out)),
            settings,
            state,
            load_pipe=lambda: load_pipeline(model, device, args.dtype),
            log=lambda text: print(text, flush=True),
        )
    except (BatchError, CommandError) as error:
        return fail(error)
    if state.is_main_process:
        print(
            f"generated {summary.generated} image(s) in {summary.seconds:.2f} s = "
            f"{summary.images_per_second:.2f} images/s on {summary.num_processes} process(es) "
            f"(batch size {args.batch_size}); {summary.already_done} were already done",
            flush=True,
        )
        extra = f" ({summary.foreign_records} from earlier inputs)" if summary.foreign_records else ""
        print(f"manifest: {Path(args.out) / 'manifest.jsonl'} ({summary.manifest_records} records{extra})")
    return 0
