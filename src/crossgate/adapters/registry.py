"""Pick the adapter for a pipeline, or refuse it with a reason."""

from __future__ import annotations

import inspect
import re

import torch

from crossgate.adapters.base import ModelAdapter, UnsupportedPipelineError
from crossgate.adapters.sequential import SEQUENTIAL_ADAPTERS, names_cfg_branches, per_branch_refusal

UNET = ModelAdapter(family="unet", denoiser_attr="unet")
TRANSFORMER = ModelAdapter(family="transformer", denoiser_attr="transformer")

# Stable Video Diffusion's unconditional half is all zeros (image embeddings and image latents), so
# feeding it after the gate would drop the image conditioning; the original release feeds the cond half.
SVD = ModelAdapter(family="svd", denoiser_attr="unet", post_gate_inputs="cond")

_ADAPTERS: tuple[ModelAdapter, ...] = (UNET, TRANSFORMER)
# Families that differ from the generic adapter, by pipeline class name (subclasses included).
_FAMILY_ADAPTERS: dict[str, ModelAdapter] = {
    "StableVideoDiffusionPipeline": SVD,
    **SEQUENTIAL_ADAPTERS,
}


def _family_adapter(pipe: object, generic: ModelAdapter) -> ModelAdapter:
    for cls in type(pipe).__mro__:
        adapter = _FAMILY_ADAPTERS.get(cls.__name__)
        if adapter is None:
            continue
        # a sequential-CFG family is verified for its own __call__, not for a subclass's rewrite of it
        if adapter.cfg_layout == "sequential" and cls.__dict__.get("__call__") is not type(pipe).__call__:
            return generic
        return adapter
    return generic


def resolve_adapter(pipe: object) -> ModelAdapter:
    """The adapter whose denoiser this pipeline has and which holds text cross-attention."""
    if isinstance(pipe, type):
        raise UnsupportedPipelineError(
            f"crossgate.apply expects a pipeline instance, got the class {pipe.__name__}; build one first, "
            f"e.g. pipe = {pipe.__name__}.from_pretrained(...)."
        )
    if not callable(pipe) or not hasattr(pipe, "components"):
        raise UnsupportedPipelineError(
            f"crossgate.apply expects a diffusers pipeline (e.g. StableDiffusionPipeline), got "
            f"{type(pipe).__name__}."
        )
    for adapter in _ADAPTERS:
        denoiser = getattr(pipe, adapter.denoiser_attr, None)
        if denoiser is None:
            continue
        if not adapter.cross_attention(pipe):
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__}.{adapter.denoiser_attr} ({type(denoiser).__name__}) has no "
                "cross-attention layers, so there is nothing for TGATE to cache. TGATE applies to "
                "text-conditioned models whose attention attends to the prompt (SD, SDXL, PixArt, ...)."
            )
        family = _family_adapter(pipe, adapter)
        per_branch = calls_denoiser_per_cfg_branch(type(pipe), adapter.denoiser_attr)
        if per_branch and (family.cfg_layout == "batched" or not names_cfg_branches(type(pipe))):
            raise UnsupportedPipelineError(per_branch_refusal(type(pipe)))
        return family
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} has neither a `unet` nor a `transformer` denoiser; crossgate does not "
        "know where to gate it."
    )


def denoiser_of(pipe: object) -> torch.nn.Module:
    """The pipeline's denoiser (``unet`` or ``transformer``), without checking it can be gated.

    For tools (accounting, benchmarks) that measure any pipeline, gated or not.
    """
    for adapter in _ADAPTERS:
        denoiser = getattr(pipe, adapter.denoiser_attr, None)
        if isinstance(denoiser, torch.nn.Module):
            return denoiser
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} has neither a `unet` nor a `transformer` denoiser."
    )


def calls_denoiser_per_cfg_branch(pipeline_cls: type, denoiser_attr: str) -> bool:
    """Whether ``pipeline_cls.__call__`` assigns the output of two separate denoiser calls.

    Pipelines that batch CFG call the denoiser once per step (``noise_pred = self.unet(...)``);
    Wan, QwenImage, CogView4 and friends call it once per branch. Read from the source, so the
    refusal happens at ``apply()`` rather than mid-call.
    """
    try:
        source = inspect.getsource(pipeline_cls.__call__)
    except (OSError, TypeError):
        return False
    pattern = re.compile(rf"=\s*(?:self\.{re.escape(denoiser_attr)}|current_model)\(")
    return len(pattern.findall(source)) >= 2
