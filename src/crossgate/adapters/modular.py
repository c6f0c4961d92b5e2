"""Modular Diffusers pipelines: CFG run by a ``guider`` component as two unnamed calls per step.

A modular pipeline (``StableDiffusionXLModularPipeline``, ``WanModularPipeline``, ...) is assembled
from blocks. Its denoise loop is a ``LoopSequentialPipelineBlocks`` that ticks its *own*
``progress_bar`` (crossgate follows it there: :mod:`crossgate.pipeline`), and each step asks the
guider for the branches' inputs and calls the denoiser once per branch with ``B`` rows, cond first,
without naming the calls. The guider knows which call is running: ``guider.prepare_models(denoiser)``
runs just before each one and ``guider.is_conditional`` says whether it was the cond one. So these
pipelines use the sequential layout (:class:`crossgate.layouts.Sequential`): after the gate the
uncond call computes nothing and hands back the cond output, which every guider listed in
:data:`TWO_BRANCH_GUIDERS` turns into the cond prediction (``tests/test_modular.py`` checks each).

The supported classes and their adapters are in :mod:`crossgate.adapters.support` (``MODULAR``);
each is tested in ``tests/test_modular.py`` against the plain modular pipeline and against the
classic pipeline with crossgate on the same components. The semantics are those of sequential CFG
(:mod:`crossgate.hooks`) and, for SD3 / FLUX / Qwen-Image, of joint attention (:mod:`crossgate.joint`).
"""

from __future__ import annotations

from typing import Any

from crossgate.adapters.base import ModelAdapter, UnsupportedPipelineError

# Guiders that run exactly two predictions, cond first, and return the cond prediction when both are
# equal, with nothing carried from one step to the next (tests/test_modular.py checks each).
TWO_BRANCH_GUIDERS = (
    "ClassifierFreeGuidance",
    "ClassifierFreeZeroStarGuidance",
    "AdaptiveProjectedGuidance",
)


def guider_refusal(guider: Any, where: str) -> str | None:
    """Why crossgate cannot follow ``guider`` (the component at ``where``), or None when it can."""
    name = type(guider).__name__
    predictions = list(getattr(guider, "_input_predictions", None) or [])
    if name not in TWO_BRANCH_GUIDERS:
        kind = (
            f"runs {len(predictions)} predictions per step ({', '.join(predictions)})" if predictions else ""
        )
        return (
            f"the guider at `{where}` is {name}, which crossgate does not follow"
            + (f": it {kind}, and crossgate drops the uncond branch only of two-branch CFG" if kind else "")
            + f". Use one of {', '.join(TWO_BRANCH_GUIDERS)} (pipe.update_components({where}=...))."
        )
    momentum = getattr(guider, "adaptive_projected_guidance_momentum", None)
    if momentum is not None:
        return (
            f"the guider at `{where}` is {name} with momentum {momentum}: its running average of past "
            "guidance would keep steering after the gate, so the passes after it would not be the cond "
            "prediction alone. Set adaptive_projected_guidance_momentum=None."
        )
    start, stop = getattr(guider, "_start", 0.0), getattr(guider, "_stop", 1.0)
    if start != 0.0 or stop != 1.0:
        return (
            f"the guider at `{where}` runs CFG only from {start} to {stop} of the steps; crossgate's gate "
            "ends CFG itself (gate_step) and needs both branches from the first step to the gate. Build "
            "the guider with start=0.0 and stop=1.0 and set gate_step instead."
        )
    return None


def check_guiders(pipe: Any, adapter: ModelAdapter) -> None:
    """Refuse a guider crossgate cannot follow (at ``apply()``, and at each call: it may be swapped)."""
    for attr in adapter.guiders:
        guider = getattr(pipe, attr, None)
        if guider is None:
            continue
        reason = guider_refusal(guider, attr)
        if reason is not None:
            raise UnsupportedPipelineError(f"crossgate: {type(pipe).__name__}: {reason}")
