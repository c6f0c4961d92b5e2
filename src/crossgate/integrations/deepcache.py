"""Composing crossgate with other step-caching accelerators that keep their own caches.

DeepCache (``DeepCacheSDHelper``) reuses the UNet's deep-block outputs on the steps between its full
passes. Those cached features have the batch of the pass that made them; at TGATE's gate the batch
halves (2B -> B), so a DeepCache step that reuses features from before the gate would feed 2B-batch
features into a B-batch UNet pass and fail. The composition rule: the first step after the gate is a
full DeepCache pass (its caches are refilled at batch B); every other step follows DeepCache's own
schedule, and crossgate's cross-attention hooks replay the latest output each layer computed.
"""

from __future__ import annotations

from typing import Any

from crossgate.gate import current_call


def compose_deepcache(pipe: Any, helper: Any) -> Any:
    """Make a ``DeepCacheSDHelper`` of ``pipe`` refill its caches when crossgate halves the batch.

    Call it once, before or after ``helper.enable()`` and ``crossgate.apply(pipe)``, in any order.
    It patches only the helper instance (``is_skip_step``); without crossgate applied, or without
    CFG, DeepCache behaves exactly as before. Returns the helper.
    """
    if not callable(getattr(type(helper), "is_skip_step", None)):
        raise TypeError(
            f"compose_deepcache expects a DeepCache helper (DeepCacheSDHelper), got {type(helper).__name__}."
        )
    own_skip = type(helper).is_skip_step.__get__(helper)

    def is_skip_step(block_i: int, layer_i: int, blocktype: str = "down") -> bool:
        call = current_call()
        if call is not None and call.owner is pipe and call.cfg and call.step == call.gate:
            return False  # the batch just halved: a full pass refills DeepCache at batch B
        return own_skip(block_i, layer_i, blocktype)

    helper.is_skip_step = is_skip_step
    return helper
