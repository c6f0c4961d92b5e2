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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossgate import loading
from crossgate.loading import DTYPES, LoadError


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, ``(default: X)``, unless its help already says it or
    there is none to show (None, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return help_text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{help_text} (default: {shown})".strip()


def gate_step_arg(text: str) -> int | float:
    """Parse ``--gate-step``: an int (steps), a fraction in (0, 1], or ``auto``
    (:func:`crossgate.config.parse_gate_step`, the parser the app uses too)."""
    from crossgate.config import ConfigError, parse_gate_step

    try:
        return parse_gate_step(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def fixed_gate_step_arg(text: str) -> int | float:
    """``--gate-step`` where ``auto`` cannot apply (a fixed number of steps is needed up front)."""
    from crossgate.config import ConfigError, parse_gate_step

    try:
        return parse_gate_step(text, allow_auto=False)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``; ``auto`` is resolved (cuda if torch sees one, else cpu) only when the model is
    loaded, so parsing the arguments and checking them never imports torch."""
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: cpu, cuda, cuda:1, ... or auto (default: auto = cuda if available, else cpu)",
    )


def threads_arg(text: str) -> int | str:
    """``--threads``: a count >= 1, or ``auto`` (:func:`auto_threads`, decided when the command runs)."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def add_threads_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--threads``. ``default=None`` leaves torch's own count; ``"auto"`` picks :func:`auto_threads`."""
    if default == "auto":
        help_text = (
            "torch CPU threads: a number, or auto (the default): the CPUs the machine's current load leaves "
            "idle, at least 1 and at most torch's own default; on a busy CPU torch's default can be many "
            "times slower than 1 thread"
        )
    else:
        help_text = (
            "torch CPU threads (default: torch's), or auto (the CPUs the current load leaves idle); on a "
            "CPU shared with other jobs 1 is often much faster"
        )
    parser.add_argument("--threads", type=threads_arg, default=default, metavar="N|auto", help=help_text)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--dtype``, shared by the commands that run a pipeline."""
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="torch dtype")


def auto_threads() -> int:
    """torch CPU threads for a machine that may be busy: the CPUs this process may run on minus the
    1-minute load average (rounded), at least 1 and at most torch's default (its physical cores).

    An idle 8-core machine gets torch's default; a 2-core machine already running one job gets 1.
    Oversubscribed, torch's OpenMP threads wait on each other and a call can be many times slower.
    """
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(torch.get_num_threads(), cpus - round(load)))


def set_threads(args: argparse.Namespace) -> int | None:
    """Apply ``--threads`` (``auto``: :func:`auto_threads`); the count set, or None (torch's own)."""
    threads = getattr(args, "threads", None)
    if not threads:
        return None
    import torch

    if threads == "auto":
        threads = auto_threads()
    torch.set_num_threads(threads)
    return threads


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32") -> Any:
    """:func:`crossgate.loading.load_pipeline`, its refusals as :class:`CommandError`."""
    try:
        return loading.load_pipeline(model, device, dtype)
    except LoadError as error:
        raise CommandError(str(error)) from None


def to_pil(image: Any):
    """The PIL image of a pipeline output (the CLI always asks for ``output_type="pil"``)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    raise CommandError(f"unexpected image type {type(image).__name__}")


def output_path(out: str, example: str = "out.json") -> Path:
    """Check an output file name before any work; raises :class:`CommandError` (one line) otherwise.

    The file goes into a folder that exists, or into a new folder made inside one that exists
    (``--out results/x.png`` makes ``results``): one level, never a chain of folders from a typo, and
    never a new folder at the filesystem root (``--out /nonexistent/x.png`` is refused).
    """
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir():
        raise CommandError(f"--out {out!r} is a folder; give a file name such as {out.rstrip('/')}/{example}")
    folder = Path(os.path.abspath(path)).parent
    for ancestor in (folder, *folder.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise CommandError(f"cannot write {out!r}: {str(ancestor)!r} is a file, not a folder")
        if ancestor.exists():
            break
    if not folder.is_dir():
        inside = folder.parent
        if not inside.is_dir():
            raise CommandError(
                f"cannot write {out!r}: folder {str(folder)!r} does not exist, nor {str(inside)!r}; --out makes "
                f"at most one new folder, inside an existing one (create them first: mkdir -p {folder})"
            )
        if inside == Path(inside.anchor):
            raise CommandError(
                f"cannot write {out!r}: folder {str(folder)!r} does not exist, and --out never makes a folder at "
                "the filesystem root; create it first or choose another path"
            )
        writable_in = inside
    else:
        writable_in = folder
    if not os.access(writable_in, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write {out!r}: no write permission in {str(writable_in)!r}")
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
        path.parent.mkdir(exist_ok=True)  # output_path allowed at most this one new folder
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
# Loggers that speak while our imports run and say nothing a user can act on: torchao (imported by
# diffusers when installed) failing to load its optional CUDA kernels on a CPU machine, and torch's
# pytree deprecation notice for the enums torchao registers. Only their warnings are held back
# (level ERROR while a command runs); errors still show.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """While a command runs: diffusers' and transformers' logging at ERROR, their warnings filtered,
    torchao's and torch's import-time notices held back (``_NOISY_LOGGERS``).

    Libraries already imported are set directly and restored afterwards; those imported later read
    ``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY``, set here unless the user set them. Warnings
    from crossgate itself (other than deprecations) still show.
    """
    saved_env = {name: os.environ.get(name) for name in _VERBOSITY_ENV.values()}
    saved_levels: dict[str, int] = {}
    saved_loggers = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
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
        for name, level in saved_loggers.items():
            logging.getLogger(name).setLevel(level)
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
