"""The adapter contract and the helpers every family shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedPipelineError(TypeError):
    """The pipeline (or model) cannot be gated; the message says why and what would work."""


def is_attention_module(module: torch.nn.Module) -> bool:
    """Diffusers attention modules carry a swappable ``processor`` (old and new style alike)."""
    return hasattr(module, "processor") and hasattr(module, "is_cross_attention")


def cross_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every attention module of ``denoiser`` whose keys/values come from the conditioning.

    Diffusers marks these with ``is_cross_attention`` (set when ``cross_attention_dim`` is given),
    which is exactly the set TGATE caches: UNet ``attn2``, PixArt/Sana ``attn2``, video ``attn2``.
    """
    return [
        (name, module)
        for name, module in denoiser.named_modules()
        if is_attention_module(module) and bool(getattr(module, "is_cross_attention", False))
    ]


def self_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every attention module of ``denoiser`` that attends within the image tokens."""
    return [
        (name, module)
        for name, module in denoiser.named_modules()
        if is_attention_module(module) and not bool(getattr(module, "is_cross_attention", False))
    ]


@dataclass(frozen=True)
class ModelAdapter:
    """Where a pipeline family keeps its denoiser and how it lays out its CFG batch."""

    family: str
    denoiser_attr: str

    def denoiser(self, pipe: object) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_attr)

    def cross_attention(self, pipe: object) -> list[tuple[str, torch.nn.Module]]:
        return cross_attention_modules(self.denoiser(pipe))

    def cfg_active(self, pipe: object) -> bool:
        """Whether the running call batches ``[uncond; cond]``; read once per call, mid-call.

        Diffusers pipelines expose ``do_classifier_free_guidance`` (it is False for
        guidance-distilled models such as LCM, whose UNet has ``time_cond_proj_dim``).
        """
        flag = getattr(pipe, "do_classifier_free_guidance", None)
        if flag is None:
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__} does not say whether it runs classifier-free guidance "
                "(no `do_classifier_free_guidance`); crossgate needs an adapter for it."
            )
        return bool(flag)
