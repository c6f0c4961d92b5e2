"""What the tools, the app, the CLI and ``crossgate.testing`` share for getting a model: a folder or
Hub id into a pipeline (with errors that say what to do), ``--device auto``, dtype names, the
embedded model's folder and the architecture configs bundled in ``crossgate/configs``.

A room below all of them (it imports only ``crossgate.embedded``, lazily), so that none of them
imports another for these. Nothing here imports torch or diffusers at module level.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any


class LoadError(ValueError):
    """A model cannot be loaded; the message says why and what to pass instead."""


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


def resolve_device(text: str) -> str:
    """``auto`` is ``cuda`` when torch sees a CUDA device, else ``cpu``; anything else as given."""
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bundled_config(name: str) -> dict[str, Any]:
    """A config shipped in ``crossgate/configs`` (e.g. ``"sd15_unet.json"``)."""
    return json.loads(resources.files("crossgate").joinpath("configs", name).read_text())


def default_model() -> str | None:
    """The embedded model's folder, when the package ships it."""
    try:
        from crossgate.embedded import default_model_path
    except ImportError:
        return None
    path = default_model_path()
    return str(path) if path is not None else None


def embedded_model(name: str) -> str | None:
    """The folder of the embedded model called ``name`` (``shapes``, ``mmdit`` or a full name), or None."""
    try:
        from crossgate.embedded import model_path
    except ImportError:
        return None
    path = model_path(name)
    return str(path) if path is not None else None


def looks_local(model: str) -> bool:
    """Whether ``model`` names a folder (it exists, starts with ``.``, ``/`` or ``~``, or has more
    than one ``/``) rather than a Hub id such as ``org/name``."""
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def load_pipeline(model: str | None, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load a diffusers pipeline from a local folder or a Hub id, with errors that say what to do.

    ``model`` None: the embedded model; ``"shapes"`` / ``"mmdit"``: an embedded model by its short
    name. Raises :class:`LoadError` (one message, no traceback needed).
    """
    from diffusers import DiffusionPipeline

    model = model or default_model()
    if model is None:
        raise LoadError("--model is required (no embedded default model is installed).")
    model = embedded_model(model) or model  # a short name: shapes, mmdit
    path = Path(model).expanduser()
    local = looks_local(model)
    if local and not (path / "model_index.json").is_file():
        raise LoadError(
            f"model folder {model!r} not found or not a diffusers pipeline (no model_index.json); "
            "pass a folder saved with save_pretrained or a Hugging Face Hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5."
        )
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(path) if local else model, dtype=DTYPES[dtype], local_files_only=local
        )
    except (OSError, ValueError) as error:
        raise LoadError(f"could not load model {model!r}: {load_failure(error, hub=not local)}") from None
    return pipe.to(resolve_device(device))


# diffusers ends an offline / unreachable Hub failure with this, pointing at a traceback the CLI does
# not print; the cause it means is the error's __cause__.
_SEE_STACKTRACE = re.compile(r"\s*Please check out the root cause in the stacktrace above\.?", re.IGNORECASE)


def load_failure(error: BaseException, hub: bool = True) -> str:
    """``error`` as one readable message: its cause spelled out (not "see the stacktrace above"), and
    for a Hub id what to do offline."""
    text = _SEE_STACKTRACE.sub("", str(error)).strip()
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        first = str(cause).strip().splitlines()[0].rstrip()
        text += f" Cause: {type(cause).__name__}: {first}" + ("" if first.endswith((".", "!", "?")) else ".")
    if hub and _SEE_STACKTRACE.search(str(error)) is not None:
        text += (
            " The Hub could not be reached and the model is not fully in the local cache: check the "
            "connection and the model id, download it once while online (or with `hf download`), or pass "
            "a local folder saved with save_pretrained."
        )
    return text
