"""Helpers the subcommands share: argument types, model loading, image output, a quiet run.

Nothing here imports torch or diffusers at module level: the command modules import this one while
``crossgate --help`` is being built, and that should take well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


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


def resolution_arg(text: str) -> int | tuple[int, int]:
    """``--resolution``: a square side (``512``) or ``HEIGHTxWIDTH`` (``480x832``)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: give a side (512) or HEIGHTxWIDTH (480x832)")
    sides = [positive_int(part) for part in parts]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


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


class _TorchDtypes(Mapping[str, Any]):
    """``{"float32": torch.float32, ...}``: the names without importing torch, the dtypes on lookup."""

    _NAMES = ("float32", "float16", "bfloat16")

    def __getitem__(self, name: str) -> Any:
        if name not in self._NAMES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


DTYPES: Mapping[str, Any] = _TorchDtypes()


def device_arg(text: str) -> str:
    """Parse ``--device``: ``auto`` (the default) is ``cuda`` when torch sees a CUDA device, else ``cpu``.

    argparse passes a string default through its ``type`` only after parsing, so ``--help`` never
    imports torch.
    """
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        type=device_arg,
        default="auto",
        help="torch device (default: cuda if available, else cpu)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--dtype``, shared by the commands that run a pipeline."""
    add_device_argument(parser)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's); on a CPU shared with other jobs 1 is often much faster",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

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
    """The PIL image of a pipeline output (the CLI always asks for ``output_type="pil"``)."""
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


def output_path(out: str, example: str = "out.json") -> Path:
    """Check an output file name before any work: not a folder, and under a folder that exists or
    can be made. Raises :class:`CommandError` (one line) otherwise."""
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir():
        raise CommandError(f"--out {out!r} is a folder; give a file name such as {out.rstrip('/')}/{example}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CommandError(f"cannot write {out!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write {out!r}: no write permission in {str(ancestor)!r}")
    return path


def image_output_path(out: str) -> Path:
    """:func:`output_path` for an image: also a file extension PIL can write (``.png``, ``.jpg``, ...)."""
    from PIL import Image

    path = output_path(out, example="out.png")
    suffix = path.suffix.lower()
    if not suffix:
        raise CommandError(f"--out {out!r} has no file extension; give an image file name such as {out}.png")
    if Image.registered_extensions().get(suffix) not in Image.SAVE:
        raise CommandError(f"--out {out!r}: cannot write {suffix!r} images; use .png, .jpg or .webp")
    return path


def save_image(image: Any, out: str) -> Path:
    """Write ``image`` to ``out`` atomically: a temporary file in the same folder, then ``os.replace``.

    An interrupted or failed write leaves neither a partial image nor a temporary file behind (and an
    existing ``out`` untouched).
    """
    from PIL import Image

    path = Path(out).expanduser()
    image_format = Image.registered_extensions().get(path.suffix.lower())
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as handle:  # "x": never clobber another writer's temporary file
            image.save(handle, format=image_format)
        os.replace(temporary, path)
    except (OSError, ValueError) as error:  # ValueError: PIL has no writer for the extension
        raise CommandError(f"cannot write {out!r}: {error}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return path


# Third-party libraries whose warnings a command-line user cannot act on.
_NOISY_MODULES = (
    r"(torch|torchvision|diffusers|transformers|accelerate|huggingface_hub|safetensors|peft|tgate"
    r"|DeepCache|tomesd)(\.|$)"
)
_VERBOSITY_ENV = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY"}


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """While a command runs: diffusers' and transformers' logging at ERROR, their warnings filtered.

    Libraries already imported are set directly and restored afterwards; those imported later read
    ``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY``, set here unless the user set them. Warnings
    from crossgate itself (other than deprecations) still show.
    """
    saved_env = {name: os.environ.get(name) for name in _VERBOSITY_ENV.values()}
    saved_levels: dict[str, int] = {}
    for library, variable in _VERBOSITY_ENV.items():
        os.environ.setdefault(variable, "error")
        library_logging = sys.modules.get(f"{library}.utils.logging")
        if library_logging is not None:
            saved_levels[library] = library_logging.get_verbosity()
            library_logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", module=_NOISY_MODULES)
            yield
    finally:
        for library, variable in _VERBOSITY_ENV.items():
            library_logging = sys.modules.get(f"{library}.utils.logging")
            if library_logging is not None:
                if library in saved_levels:
                    library_logging.set_verbosity(saved_levels[library])
                elif saved_env[variable] is None:  # imported during the command: back to its default
                    library_logging.set_verbosity(logging.WARNING)
            if saved_env[variable] is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = saved_env[variable]
