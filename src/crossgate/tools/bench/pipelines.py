"""What a benchmark runs on: random-weight real architectures (offline) at a CPU-friendly default size.

Image models take a square side; video models (Wan 2.1 T2V 1.3B, ``wan13b``) a height, width and
frame count: a short clip, 480x832 x 17 frames on CUDA (5 latent frames), 64x64 x 5 on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crossgate.tools.bench.peers import BenchError

PROMPT = "a photo of a red cat sitting on a blue sofa"

# The models `crossgate bench --model` takes -> default height in pixels on CPU (square for image
# models). All but "embedded" (the shipped trained model, which the CLI loads) are
# crossgate.testing.random_pipeline's.
BENCH_MODELS: dict[str, int] = {
    "sd15": 256,
    "sd21": 768,
    "sdxl": 512,
    "pixart-alpha": 512,
    "wan13b": 64,
    "tiny": 32,
    "tiny-sdxl": 32,
    "tiny-pixart": 64,
    "tiny-wan": 16,
    "sd3-medium": 256,
    "flux1-dev": 256,
    "tiny-sd3": 32,
    "tiny-flux": 32,
    "embedded": 32,
    "embedded-mmdit": 32,
}
LOADED = ("embedded", "embedded-mmdit")  # not built here: crossgate-shapes-32, crossgate-mmdit-32
# Defaults on CUDA where they differ from the CPU ones: (height, width).
GPU_SIZES: dict[str, tuple[int, int]] = {
    "sd15": (512, 512),
    "sdxl": (1024, 1024),
    "pixart-alpha": (1024, 1024),
    "wan13b": (480, 832),
    "sd3-medium": (1024, 1024),
    "flux1-dev": (1024, 1024),
}
# Video models: (frames on CPU, frames on CUDA); a Wan clip has 1 + 4k frames.
VIDEO_FRAMES: dict[str, tuple[int, int]] = {"wan13b": (5, 17), "tiny-wan": (5, 5)}
LAYERED = (
    "pixart-alpha",
    "wan13b",
    "sd3-medium",
    "flux1-dev",
)  # transformer architectures whose depth --layers may cut


@dataclass(frozen=True)
class BenchSize:
    """What one benchmark generation produces: pixels, and frames for a video model."""

    height: int
    width: int
    frames: int | None = None

    def describe(self) -> str:
        side = f"{self.height}px" if self.height == self.width else f"{self.height}x{self.width}"
        return side + (f", {self.frames} frames" if self.frames else "")


def default_size(model: str, gpu: bool) -> BenchSize:
    """The size ``crossgate bench`` runs ``model`` at by default, on CUDA (``gpu``) or on CPU."""
    if model not in BENCH_MODELS:
        raise BenchError(f"unknown bench model {model!r}; use one of {', '.join(BENCH_MODELS)}.")
    height, width = GPU_SIZES[model] if gpu and model in GPU_SIZES else (BENCH_MODELS[model],) * 2
    frames = VIDEO_FRAMES.get(model, (None, None))[1 if gpu else 0]
    return BenchSize(height, width, frames)


def call_kwargs(pipe: Any, size: BenchSize | None) -> dict[str, Any]:
    """The size arguments (and the family's fixed ones) of one benchmark call of ``pipe``."""
    kwargs: dict[str, Any] = {}
    if size is not None:
        kwargs.update(height=size.height, width=size.width)
    name = type(pipe).__name__
    if name.startswith("PixArt"):
        # random-size runs: no snapping to the 1024-px aspect-ratio bins, no caption cleaning (bs4)
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    if name.startswith("Wan") and size is not None and size.frames is not None:
        kwargs["num_frames"] = size.frames
    return kwargs


def random_pipeline(
    model: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    num_layers: int | None = None,
) -> Any:
    """:func:`crossgate.testing.random_pipeline` for a bench model name (``num_layers``: smoke runs
    of a transformer architecture, the real widths at fewer layers)."""
    if model not in BENCH_MODELS or model in LOADED:
        names = ", ".join(m for m in BENCH_MODELS if m not in LOADED)
        raise BenchError(f"unknown bench model {model!r}; random-weight models: {names}.")
    if num_layers is not None and model not in LAYERED:
        raise BenchError(f"--layers applies to {', '.join(LAYERED)} only, not {model!r}.")
    from crossgate import testing  # diffusers pipelines and transformers: only when building one

    return testing.random_pipeline(model, device, dtype, seed, num_layers=num_layers)
