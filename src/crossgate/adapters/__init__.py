"""Model-family specifics, kept in small adapters so the engine stays family-agnostic.

An adapter answers three questions about a pipeline: which module is the denoiser, which of its
submodules are text cross-attention, and whether the current call runs classifier-free guidance
as one ``[uncond; cond]`` batch.
"""

from __future__ import annotations

from crossgate.adapters.base import (
    ModelAdapter,
    UnsupportedPipelineError,
    cross_attention_modules,
    self_attention_modules,
)
from crossgate.adapters.registry import denoiser_of, resolve_adapter
from crossgate.adapters.support import allow_untested

__all__ = [
    "ModelAdapter",
    "UnsupportedPipelineError",
    "allow_untested",
    "cross_attention_modules",
    "denoiser_of",
    "resolve_adapter",
    "self_attention_modules",
]
