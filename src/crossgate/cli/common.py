"""Helpers the subcommands share: argument types, model loading, image output."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def gate_step_arg(text: str) -> int | float:
    """Parse ``--gate-step``: an int (steps), a fraction in (0, 1], or ``auto``."""
    from crossgate.config import ConfigError, TGateConfig

    if text == "auto":
        return "auto"

    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; use an int >= 1 or a fraction in (0, 1]"
            ) from None
    try:
        TGateConfig(gate_step=value)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return value


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (each >= 1)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1, e.g. 1,2,3,5,8,10,15,25")
    return values


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite")
    return value


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--dtype``, shared by the commands that run a pipeline."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's); on a CPU shared with other jobs 1 is often much faster",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def default_model() -> str | None:
    """The embedded model's folder, when the package ships it."""
    try:
        from crossgate.embedded import default_model_path
    except ImportError:
        return None
    path = default_model_path()
    return str(path) if path is not None else None


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load a diffusers pipeline from a local folder or a Hub id, with errors that say what to do."""
    from diffusers import DiffusionPipeline

    model = model or default_model()
    if model is None:
        raise CommandError("--model is required (no embedded default model is installed).")
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not (path / "model_index.json").is_file():
        raise CommandError(
            f"model folder {model!r} not found or not a diffusers pipeline (no model_index.json); "
            "pass a folder saved with save_pretrained or a Hugging Face Hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5."
        )
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(path) if looks_local else model, dtype=DTYPES[dtype], local_files_only=looks_local
        )
    except (OSError, ValueError) as error:
        raise CommandError(f"could not load model {model!r}: {error}") from None
    return pipe.to(device)


def to_pil(image: Any):
    """A PIL image from a pipeline output image (PIL, numpy or tensor)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    raise CommandError(f"unexpected image type {type(image).__name__}")


def upscale_for_viewing(image: Any, min_side: int = 256):
    """Tiny images (the embedded model makes 32x32) are enlarged with nearest-neighbour for people."""
    from PIL import Image

    factor = max(1, math.ceil(min_side / min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def labelled_row(images: list[Any], labels: list[str]):
    """Images side by side, each with a caption strip underneath."""
    from PIL import Image, ImageDraw

    strip = 22
    width = sum(im.width for im in images)
    height = max(im.height for im in images) + strip
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels):
        canvas.paste(image.convert("RGB"), (x, 0))
        draw.text((x + 4, image.height + 5), label, fill="black")
        x += image.width
    return canvas


def save_image(image: Any, out: str) -> Path:
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except OSError as error:
        raise CommandError(f"cannot write {out!r}: {error}") from None
    return path
