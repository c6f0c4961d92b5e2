"""Pipelines that run classifier-free guidance as two named denoiser calls per step (Wan's family).

They call the denoiser once per branch, inside ``denoiser.cache_context("cond")`` and then
``cache_context("uncond")``, and combine ``uncond + g * (cond - uncond)``. crossgate supports a
pipeline of this kind when (1) it names both calls, cond first (read from its source at
``apply()``), and (2) it is listed here: each listed class is tested in tests/test_sequential.py,
including that its guidance returns the cond prediction when the uncond call hands it back.
The semantics are in :mod:`crossgate.hooks`.
"""

from __future__ import annotations

import inspect

from crossgate.adapters.base import ModelAdapter

SEQUENTIAL = ModelAdapter(family="sequential", denoiser_attr="transformer", cfg_layout="sequential")
WAN = ModelAdapter(
    family="wan", denoiser_attr="transformer", cfg_layout="sequential", extra_attrs=("transformer_2",)
)
# Tested classes and their adapters (Wan 2.2's second expert is `transformer_2`, when present).
SEQUENTIAL_ADAPTERS: dict[str, ModelAdapter] = {
    "WanPipeline": WAN,
    "WanImageToVideoPipeline": WAN,
    "WanVACEPipeline": WAN,
    "SkyReelsV2Pipeline": SEQUENTIAL,
}


def names_cfg_branches(pipeline_cls: type) -> bool:
    """Whether ``__call__`` wraps its denoiser calls in ``cache_context("cond")`` then ``("uncond")``."""
    try:
        source = inspect.getsource(pipeline_cls.__call__)
    except (OSError, TypeError):
        return False
    cond, uncond = source.find('cache_context("cond"'), source.find('cache_context("uncond"')
    return 0 <= cond < uncond


def per_branch_refusal(pipeline_cls: type) -> str:
    name = pipeline_cls.__name__
    if not names_cfg_branches(pipeline_cls):
        return (
            f"{name} calls its denoiser separately for the conditional and the unconditional branch "
            'without naming the calls (`cache_context("cond")` / `("uncond")`), so crossgate cannot tell '
            "the branches apart; it supports per-branch CFG only where the pipeline names them."
        )
    return (
        f"{name} calls its denoiser once per named CFG branch, but crossgate has not verified that its "
        f"guidance returns the conditional prediction when the uncond call is skipped; supported: "
        f"{', '.join(SEQUENTIAL_ADAPTERS)}."
    )
