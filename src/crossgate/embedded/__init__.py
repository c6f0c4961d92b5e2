"""The embedded text-to-image model: a miniature Stable Diffusion trained on procedural scenes.

The weights live in the package (``crossgate-shapes-32/``) so that ``crossgate generate`` and the
quality evaluation work offline with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_NAME = "crossgate-shapes-32"
_MODEL_DIR = Path(__file__).resolve().parent / MODEL_NAME


def default_model_path() -> Path | None:
    """The shipped model folder, or None when its weights are absent (e.g. a source tree without them)."""
    if (_MODEL_DIR / "model_index.json").is_file() and any(_MODEL_DIR.glob("unet/*.safetensors")):
        return _MODEL_DIR
    return None


def load_pipeline(path: str | Path | None = None, **kwargs: Any) -> Any:
    """Load the embedded (or another local) StableDiffusionPipeline offline, safety checker off."""
    from diffusers import StableDiffusionPipeline

    folder = Path(path) if path is not None else default_model_path()
    if folder is None:
        raise FileNotFoundError(
            f"the embedded model {MODEL_NAME!r} is not installed; train it with scripts/train_embedded.py"
        )
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["MODEL_NAME", "default_model_path", "load_pipeline"]
