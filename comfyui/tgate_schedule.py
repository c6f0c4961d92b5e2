"""Pure rules of the TGATE node: the gate, TGATE v2's self-attention schedule, step bookkeeping.

No ComfyUI and no torch here, so the rules can be tested anywhere. They are the same rules as the
`crossgate` package's (``TGateConfig.resolve_gate`` and ``crossgate.schedule``), restated so that this
folder installs on its own into ``ComfyUI/custom_nodes``; a test checks both agree on every case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

COMPUTE = "compute"  # run the module, keep nothing
STORE = "store"  # run the module and keep its output (at the gate: the mean of the CFG halves)
REUSE = "reuse"  # return the kept output, compute nothing

GATE_MODES = ("fraction", "step")


def resolve_gate(mode: str, gate_step: int, gate_fraction: float, num_steps: int) -> int:
    """The gate ``m`` of a ``num_steps``-step sampling run: steps ``0 .. m-1`` run as usual.

    ``mode="step"``: ``gate_step`` itself (>= 1). ``mode="fraction"``: ``gate_fraction * num_steps``
    rounded half up, at least 1 (0.4 of 25 steps is 10, 0.5 of 25 is 13). ``m >= num_steps`` means
    the gate never closes and the run is exactly the plain one.
    """
    if mode == "step":
        if isinstance(gate_step, bool) or int(gate_step) != gate_step or gate_step < 1:
            raise ValueError(f"TGATE: gate_step must be an integer >= 1, got {gate_step!r}")
        return int(gate_step)
    if mode == "fraction":
        fraction = float(gate_fraction)
        if not (0.0 < fraction <= 1.0):
            raise ValueError(f"TGATE: gate_fraction must be in (0, 1], got {gate_fraction!r}")
        return max(1, math.floor(fraction * num_steps + 0.5))
    raise ValueError(f"TGATE: gate_mode must be one of {GATE_MODES}, got {mode!r}")


def self_attention_action(
    step: int, gate: int, interval: int | None, interval_after: int = 1, warm_up: int = 2
) -> str:
    """What a self-attention layer does at ``step`` (0-based) of a run gated at ``gate`` (TGATE v2).

    ``interval=None`` and ``interval_after=1`` is TGATE v1: always compute. Otherwise: steps before
    ``warm_up`` compute; step ``warm_up`` and every ``interval``-th step store, the others reuse;
    step ``gate - 1`` stores (under CFG its mean of the halves feeds the steps after the gate); after
    the gate every ``interval_after``-th step stores and the others reuse (1: always compute).
    """
    caching_before = interval is not None
    caching_after = interval_after > 1
    if not (caching_before or caching_after):
        return COMPUTE
    if step == gate - 1:
        return STORE
    if step >= gate:
        if not caching_after:
            return COMPUTE
        return STORE if step % interval_after == 0 else REUSE
    if interval is None or step < warm_up:
        return COMPUTE
    if step == warm_up or step % interval == 0:
        return STORE
    return REUSE


def schedule_position(sigma: float, sigmas: Sequence[float]) -> int | None:
    """The index ``k`` of the first schedule entry with ``sigma >= sigmas[k]`` (relative tolerance 1e-4).

    A first-order sampler's call at ``sigmas[k]`` gets ``k``; a second-order sampler's extra call of
    step ``k`` (at ``sigmas[k + 1]`` for Heun, between the two for DPM-2) gets ``k + 1``. ``None`` if
    ``sigma`` is below the last entry. Used only to notice a sampler that never reports its steps.
    """
    for k, s in enumerate(sigmas):
        if sigma >= s * (1.0 - 1e-4):
            return k
    return None
