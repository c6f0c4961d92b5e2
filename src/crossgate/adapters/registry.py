"""Pick the adapter for a pipeline, or refuse it with a reason."""

from __future__ import annotations

from crossgate.adapters.base import ModelAdapter, UnsupportedPipelineError

UNET = ModelAdapter(family="unet", denoiser_attr="unet")
TRANSFORMER = ModelAdapter(family="transformer", denoiser_attr="transformer")

_ADAPTERS: tuple[ModelAdapter, ...] = (UNET, TRANSFORMER)


def resolve_adapter(pipe: object) -> ModelAdapter:
    """The adapter whose denoiser this pipeline has and which holds text cross-attention."""
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
        return adapter
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} has neither a `unet` nor a `transformer` denoiser; crossgate does not "
        "know where to gate it."
    )
