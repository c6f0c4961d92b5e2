"""The embedded text-to-image models, trained on procedural scenes and shipped in the package.

``crossgate-shapes-32`` (short name ``shapes``, the default): a miniature Stable Diffusion (UNet,
cross-attention). ``crossgate-mmdit-32`` (``mmdit``): a miniature Stable Diffusion 3 (MMDiT, joint
attention), on the same scenes. The weights live in the package so that ``crossgate generate`` and the
quality evaluation work offline with no download; ``--model shapes`` / ``--model mmdit`` pick one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_NAME = "crossgate-shapes-32"
MODELS: dict[str, str] = {"shapes": MODEL_NAME, "mmdit": "crossgate-mmdit-32"}  # short name -> folder
_ROOT = Path(__file__).resolve().parent
_MODEL_DIR = _ROOT / MODEL_NAME


def model_path(name: str = "shapes") -> Path | None:
    """The folder of embedded model ``name`` (short or full name), or None when its weights are absent."""
    folder = _ROOT / MODELS.get(name, name)
    if name not in MODELS and name not in MODELS.values():
        return None
    if (folder / "model_index.json").is_file() and any(folder.glob("*/*.safetensors")):
        return folder
    return None


def default_model_path() -> Path | None:
    """The shipped default model folder, or None when its weights are absent (e.g. a source tree without them)."""
    return model_path("shapes")


def load_pipeline(path: str | Path | None = None, **kwargs: Any) -> Any:
    """Load an embedded (or another local) pipeline offline: a short name, a folder, or None (shapes)."""
    from diffusers import DiffusionPipeline

    folder = model_path(str(path)) if path is not None and str(path) in {*MODELS, *MODELS.values()} else None
    folder = folder or (Path(path) if path is not None else default_model_path())
    if folder is None or not (Path(folder) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model {path or MODEL_NAME!r} is not installed; train it with "
            "scripts/train_embedded.py (shapes) or scripts/train_embedded_mmdit.py (mmdit)"
        )
    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["MODELS", "MODEL_NAME", "default_model_path", "load_pipeline", "model_path"]
