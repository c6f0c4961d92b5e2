"""What a benchmark runs on: random-weight real architectures (offline) at a CPU-friendly default size."""

from __future__ import annotations

from typing import Any

import torch

from crossgate.tools.bench.peers import BenchError

PROMPT = "a photo of a red cat sitting on a blue sofa"

# The models `crossgate bench --model` takes -> default square side in pixels on CPU. All but
# "embedded" (the shipped trained model, which the CLI loads) are crossgate.testing.random_pipeline's.
BENCH_MODELS: dict[str, int] = {
    "sd15": 256,
    "sd21": 768,
    "sdxl": 512,
    "tiny": 32,
    "tiny-sdxl": 32,
    "embedded": 32,
}
LOADED = ("embedded",)  # not built here


def random_pipeline(
    model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Any:
    """:func:`crossgate.testing.random_pipeline` for a bench model name."""
    if model not in BENCH_MODELS or model in LOADED:
        names = ", ".join(m for m in BENCH_MODELS if m not in LOADED)
        raise BenchError(f"unknown bench model {model!r}; random-weight models: {names}.")
    from crossgate import testing  # diffusers pipelines and transformers: only when building one

    return testing.random_pipeline(model, device, dtype, seed)
