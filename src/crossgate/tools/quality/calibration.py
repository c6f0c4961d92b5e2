"""Calibrate a fixed TGATE schedule from measured convergence: ``crossgate calibrate``.

A profile applies the live ``gate_step="auto"`` rule offline, on the layer-averaged (and per-layer)
convergence curves of a few prompts, so users get a deterministic schedule per model, scheduler and
step count: ``TGateConfig.from_profile(path)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossgate.config import TGateConfig
from crossgate.gate import gate_policy, replay
from crossgate.tools.quality.convergence import ConvergenceResult, record_convergence


def first_gate(curve: Sequence[float], config: TGateConfig, num_steps: int) -> int:
    """The gate ``gate_step="auto"`` (with ``config``'s tolerance and guard rails) picks on ``curve``.

    ``curve[t-1]`` is the change measured at step ``t``. The measured curve is replayed through the
    same :class:`~crossgate.gate.AutoGate` a live call uses, so the two cannot disagree.
    """
    return replay(gate_policy(config, num_steps), curve)


def profile_from_convergence(
    result: ConvergenceResult,
    tolerance: float,
    min_fraction: float = 0.2,
    max_fraction: float = 0.8,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A calibration profile (JSON-ready) from recorded convergence curves."""
    n = result.num_steps
    auto = TGateConfig(
        gate_step="auto",
        auto_tolerance=tolerance,
        auto_min_fraction=min_fraction,
        auto_max_fraction=max_fraction,
    )
    gate = first_gate(result.average("mean"), auto, n)
    # Where each layer alone would settle: information for the user (which layers converge late);
    # the profile gates all layers together (per-layer gating was dominated, see the docs).
    layer_settle = {
        layer: first_gate(result.relative_change["mean"][layer], auto, n) for layer in result.layers
    }
    return {
        **(meta or {}),
        "num_inference_steps": n,
        "tolerance": tolerance,
        "min_fraction": min_fraction,
        "max_fraction": max_fraction,
        "gate_step": gate,
        "gate_fraction": gate_fraction(gate, n, min_fraction, max_fraction),
        "layer_settle_steps": layer_settle,
        "convergence": result.average("mean"),
        "prompts": list(result.prompts),
    }


def gate_fraction(gate: int, num_steps: int, min_fraction: float, max_fraction: float) -> float:
    """The profile's ``gate_fraction``: ``gate / num_steps`` kept within the guard rails.

    ``"auto"`` rounds its rails to whole steps (0.8 of 6 steps is step 5 = 0.833), so the step's own
    fraction can lie just outside ``[min_fraction, max_fraction]``; the rail itself rounds back to the
    same step at ``num_steps``, and keeps its meaning at other step counts.
    """
    return min(max(gate / num_steps, min_fraction), max_fraction)


def calibrate(
    pipe: Any,
    prompts: Sequence[str],
    num_inference_steps: int = 25,
    tolerance: float = 0.05,
    min_fraction: float = 0.2,
    max_fraction: float = 0.8,
    guidance_scale: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``prompts`` through the plain ``pipe`` and derive a profile."""
    result = record_convergence(pipe, prompts, num_inference_steps, guidance_scale=guidance_scale, seed=seed)
    meta = {"scheduler": type(pipe.scheduler).__name__, "pipeline": type(pipe).__name__}
    return profile_from_convergence(result, tolerance, min_fraction, max_fraction, meta)


def write_profile(profile: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2))
    return path
