"""Schedules (what each denoising step computes) and the per-image totals they imply.

A per-image total is a :class:`Schedule` applied to a :class:`~.counting.CallMacs`. The same
per-module counts turn a real call's :class:`crossgate.CallStats` into the MACs that actually
executed (:func:`executed_macs`), so a prediction can be checked against what ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossgate.schedule import Action, self_attention_plan
from crossgate.tools.accounting.counting import AccountingError, CallMacs, Convention, check_convention

if TYPE_CHECKING:
    from crossgate import CallStats


@dataclass(frozen=True)
class Schedule:
    """What each denoising step computes.

    Attributes:
        batch: samples per denoiser call at each step (2 with classifier-free guidance, else 1).
        cross_attention: per step, whether cross-attention is computed (False = replayed).
        self_attention: per step, whether self-attention is computed (False = served from a cache);
            the extension point for self-attention caching (TGATE v2) and similar schedules.
        calls_per_step: denoiser calls per step (2 for second-order schedulers such as Heun).
    """

    label: str
    batch: tuple[int, ...]
    cross_attention: tuple[bool, ...]
    self_attention: tuple[bool, ...] = field(default=())
    calls_per_step: int = 1

    def __post_init__(self) -> None:
        n = len(self.batch)
        if not self.self_attention:
            object.__setattr__(self, "self_attention", (True,) * n)
        if len(self.cross_attention) != n or len(self.self_attention) != n:
            raise AccountingError(
                f"schedule {self.label!r}: batch, cross_attention and self_attention need one entry per "
                f"step ({n}), got {len(self.cross_attention)} and {len(self.self_attention)}."
            )

    @property
    def num_steps(self) -> int:
        return len(self.batch)

    @classmethod
    def plain(cls, num_steps: int, cfg: bool = True) -> Schedule:
        _check_steps(num_steps)
        return cls("baseline", (2 if cfg else 1,) * num_steps, (True,) * num_steps)

    @classmethod
    def tgate(
        cls,
        num_steps: int,
        gate_step: int,
        cfg: bool = True,
        self_attention: Sequence[bool] | None = None,
        label: str | None = None,
    ) -> Schedule:
        """TGATE: ``gate_step`` steps with cross-attention (and CFG), then replay on one branch.

        ``self_attention`` (one bool per step) adds self-attention caching on top (TGATE v2).
        """
        _check_steps(num_steps)
        if gate_step < 1:
            raise AccountingError(f"gate_step must be >= 1, got {gate_step}.")
        m = min(gate_step, num_steps)
        batch = tuple((2 if cfg and i < m else 1) for i in range(num_steps))
        cross = tuple(i < m for i in range(num_steps))
        sa = tuple(bool(x) for x in self_attention) if self_attention is not None else ()
        return cls(label or f"TGATE m={gate_step}", batch, cross, sa)

    @classmethod
    def tgate_v2(
        cls, num_steps: int, gate_step: int, interval: int, warm_up: int = 2, cfg: bool = True
    ) -> Schedule:
        """TGATE v2 with the published schedule (:func:`v2_self_attention_steps`)."""
        sa = v2_self_attention_steps(num_steps, gate_step, interval, warm_up)
        return cls.tgate(num_steps, gate_step, cfg, sa, label=f"TGATE v2 m={gate_step},k={interval}")


def v2_self_attention_steps(num_steps: int, gate_step: int, interval: int, warm_up: int = 2) -> list[bool]:
    """Which steps compute self-attention under TGATE v2 (the engine's own schedule,
    :func:`crossgate.schedule.self_attention_plan`, so prediction and execution share one rule)."""
    if interval < 1:
        raise AccountingError(f"self-attention interval k must be >= 1, got {interval}.")
    plan = self_attention_plan(num_steps, gate_step, interval, warm_up=warm_up)
    return [action is not Action.REUSE for action in plan]


def _check_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise AccountingError(f"num_steps must be >= 1, got {num_steps}.")


def image_macs(call: CallMacs, schedule: Schedule, convention: Convention = "linear_conv") -> int:
    """Denoiser MACs for one image under ``schedule``."""
    per_step = (
        b * call.step(convention, ca, sa)
        for b, ca, sa in zip(schedule.batch, schedule.cross_attention, schedule.self_attention)
    )
    return schedule.calls_per_step * sum(per_step)


def executed_macs(call: CallMacs, stats: CallStats, convention: Convention = "linear_conv") -> int:
    """Denoiser MACs a real crossgate call executed, from its ``CallStats`` (all images of the call).

    Every denoiser pass runs the full model for its batch, minus each cross-attention module that
    was replayed in it. A module is replayed once per gated pass, and the gated passes are the last
    ones of the call, so module ``j``'s ``r`` replays fall in the last ``r`` passes. With
    self-attention caching, each self-attention module also saves its MACs at every step missing
    from its ``self_attention_computed_steps``.
    """
    convention = check_convention(convention)
    passes = stats.denoiser_batches
    macs = sum(passes) * call.full(convention)
    for name, replays in stats.cross_attention_replays.items():
        if name not in call.cross_attention:
            raise AccountingError(
                f"cross-attention module {name!r} is not in the counted model {call.model}."
            )
        if replays:
            macs -= sum(passes[-replays:]) * call.cross_attention[name][convention]
    # Self-attention caching (TGATE v2): a module skipped at a step saves its MACs for that step's batch.
    computed_steps = stats.self_attention_computed_steps
    if computed_steps and len(passes) != stats.num_steps:
        raise AccountingError(
            "self-attention accounting needs one denoiser pass per step; this call made "
            f"{len(passes)} passes in {stats.num_steps} steps."
        )
    for name, steps in computed_steps.items():
        if name not in call.self_attention:
            raise AccountingError(f"self-attention module {name!r} is not in the counted model {call.model}.")
        computed = set(steps)
        skipped = sum(b for step, b in enumerate(passes) if step not in computed)
        macs -= skipped * call.self_attention[name][convention]
    return macs
