"""Pick the adapter for a pipeline, or refuse it with a reason.

Which classes are supported is decided in one place, :mod:`crossgate.adapters.support`; this module
adds the run-time checks a class name cannot answer (the instance's denoiser really has
cross-attention; a user subclass's ``__call__`` does not call the denoiser per CFG branch, nor batch
more than the two CFG branches). These checks also hold for classes admitted with
:func:`~crossgate.adapters.support.allow_untested`: an opt-in must not start a call that a look at the
class before the call shows would fail midway.
"""

from __future__ import annotations

import inspect
import re

import torch

from crossgate.adapters import support
from crossgate.adapters.base import ModelAdapter, UnsupportedPipelineError
from crossgate.adapters.sequential import names_cfg_branches, per_branch_refusal
from crossgate.adapters.support import SVD, TRANSFORMER, UNET
from crossgate.joint import has_joint_attention

__all__ = [
    "SVD",
    "TRANSFORMER",
    "UNET",
    "batches_more_than_two_branches",
    "calls_denoiser_per_cfg_branch",
    "denoiser_of",
    "resolve_adapter",
]

_ADAPTERS: tuple[ModelAdapter, ...] = (UNET, TRANSFORMER)


def _classified(pipe: object) -> support.Verdict | None:
    """The class's verdict; raises for every class the classification does not support."""
    cls = type(pipe)
    verdict = support.classify(cls)
    if verdict is None or verdict.status == support.SUPPORTED_STATUS or support.is_allowed(cls):
        return verdict
    raise UnsupportedPipelineError(support.refusal(cls, verdict))


def resolve_adapter(pipe: object) -> ModelAdapter:
    """The adapter for ``pipe``, or :class:`UnsupportedPipelineError` with the reason (nothing touched)."""
    if isinstance(pipe, type):
        raise UnsupportedPipelineError(
            f"crossgate.apply expects a pipeline instance, got the class {pipe.__name__}; build one first, "
            f"e.g. pipe = {pipe.__name__}.from_pretrained(...)."
        )
    verdict = _classified(pipe)
    if verdict is not None:
        found = batches_more_than_two_branches(type(pipe))
        if found is not None:
            raise UnsupportedPipelineError(
                f"crossgate: {type(pipe).__name__}.__call__ batches more than the two CFG branches "
                f"[uncond; cond] (`{found}`); crossgate's gate halves a two-branch batch, so the call would "
                "fail midway. allow_untested() cannot change that."
            )
    if verdict is None or not callable(pipe) or not hasattr(pipe, "components"):
        raise UnsupportedPipelineError(
            f"crossgate.apply expects a diffusers pipeline (e.g. StableDiffusionPipeline), got "
            f"{type(pipe).__name__}."
        )
    for adapter in _ADAPTERS:
        denoiser = getattr(pipe, adapter.denoiser_attr, None)
        if denoiser is None:
            continue
        family = verdict.adapter or adapter
        if family.joint:
            if not has_joint_attention(denoiser):
                raise UnsupportedPipelineError(
                    f"{type(pipe).__name__}.{adapter.denoiser_attr} ({type(denoiser).__name__}) has no "
                    "joint-attention block crossgate knows (crossgate.joint.KINDS: SD3, FLUX.1, Qwen-Image, "
                    "HunyuanVideo), so there is no text stream to freeze."
                )
        elif not adapter.cross_attention(pipe):
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__}.{adapter.denoiser_attr} ({type(denoiser).__name__}) has no "
                "cross-attention layers, so there is nothing for TGATE to cache. TGATE applies to "
                "text-conditioned models whose attention attends to the prompt (SD, SDXL, PixArt, ...)."
            )
        per_branch = calls_denoiser_per_cfg_branch(type(pipe), adapter.denoiser_attr)
        # SD3's second denoiser call is skip-layer guidance (a plain extra pass, see crossgate.hooks)
        batched_refusal = family.cfg_layout == "batched" and not family.joint
        if per_branch and (
            batched_refusal
            or (
                family.cfg_layout == "sequential"
                and not family.branch_order  # an adapter that knows the unnamed calls' order
                and not names_cfg_branches(type(pipe))
            )
        ):
            raise UnsupportedPipelineError(per_branch_refusal(type(pipe)))
        if support.overrides_call(type(pipe)) and not support.is_allowed(type(pipe)):
            raise UnsupportedPipelineError(
                f"crossgate: {type(pipe).__name__} overrides {verdict.name}.__call__, so its denoising loop "
                f"is not the one crossgate tested ({verdict.reason}). If it still batches CFG as "
                "[uncond; cond] and ticks `self.progress_bar`, vouch for it with "
                "crossgate.adapters.support.allow_untested(type(pipe))."
            )
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


# The latents batched (or the prediction split) into a number of branches other than a literal 2:
# `torch.cat([latents] * 3)`, `[latents] * (3 if enable_safety_guidance else 2)`, PAG's
# `[latents] * (prompt_embeds.shape[0] // latents.shape[0])`, `noise_pred.chunk(1 + n)`.
_MANY_BRANCHES = re.compile(
    r"(?:torch\.cat\(\s*)?\[\s*(?:latents|latent_model_input)\s*\]\s*\*\s*(?!\s|2\s*\))[^\n]*"
    r"|noise_pred\w*\s*\.chunk\(\s*(?!\s|2\s*[,)])[^\n]*"
)


def batches_more_than_two_branches(pipeline_cls: type) -> str | None:
    """The line of ``pipeline_cls.__call__`` that batches more than two guidance branches, or None.

    PAG, InstructPix2Pix, Safe Latent Diffusion, LEDITS++, SEGA and friends stack three or more copies
    of the latents per step; after the gate crossgate would split such a batch in two and the call
    would fail midway. Read from the source, so the refusal happens at ``apply()``, also for a class
    admitted with ``allow_untested``.
    """
    try:
        source = inspect.getsource(pipeline_cls.__call__)
    except (OSError, TypeError):
        return None
    match = _MANY_BRANCHES.search(source)
    return match.group(0).strip() if match else None


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
