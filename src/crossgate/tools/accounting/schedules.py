"""Schedules (what each denoising step computes) and the per-image totals they imply.

A per-image total is a :class:`Schedule` applied to a :class:`~.counting.CallMacs`. The same
per-module counts turn a real call's :class:`crossgate.CallStats` into the MACs that actually
executed (:func:`executed_macs`), so a prediction can be checked against what ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crossgate.schedule import Action, self_attention_plan
from crossgate.tools.accounting.counting import (
    AccountingError,
    CallMacs,
    CfgLayout,
    Convention,
    check_cfg_layout,
    check_convention,
)

if TYPE_CHECKING:
    from crossgate import CallStats


@dataclass(frozen=True)
class Schedule:
    """What each denoising step computes.

    Attributes:
        batch: samples per denoiser pass at each step (2 with batched classifier-free guidance, else 1).
        cross_attention: per step, whether cross-attention is computed (False = replayed).
        self_attention: per step, whether self-attention is computed (False = served from a cache);
            the extension point for self-attention caching (TGATE v2) and similar schedules.
        calls_per_step: denoiser calls per step (2 for second-order schedulers such as Heun).
        passes: per step, the denoiser passes that really compute (default 1 each; sequential CFG:
            2 per step, the cond and the uncond call, each at ``batch``).
        idle_passes: per step, passes whose top-level blocks are all skipped (sequential CFG after the
            gate: crossgate's uncond call). They still run the denoiser's patch and condition
            embeddings and its output head, :meth:`CallMacs.outside_blocks` each.
        cfg_layout: ``"batched"`` or ``"sequential"``, how the schedule's pipeline runs CFG.
    """

    label: str
    batch: tuple[int, ...]
    cross_attention: tuple[bool, ...]
    self_attention: tuple[bool, ...] = field(default=())
    calls_per_step: int = 1
    passes: tuple[int, ...] = field(default=())
    idle_passes: tuple[int, ...] = field(default=())
    cfg_layout: CfgLayout = "batched"

    def __post_init__(self) -> None:
        n = len(self.batch)
        if not self.self_attention:
            object.__setattr__(self, "self_attention", (True,) * n)
        if not self.passes:
            object.__setattr__(self, "passes", (1,) * n)
        if not self.idle_passes:
            object.__setattr__(self, "idle_passes", (0,) * n)
        check_cfg_layout(self.cfg_layout)
        lengths = [
            len(self.cross_attention),
            len(self.self_attention),
            len(self.passes),
            len(self.idle_passes),
        ]
        if any(length != n for length in lengths):
            raise AccountingError(
                f"schedule {self.label!r}: batch, cross_attention, self_attention, passes and idle_passes "
                f"need one entry per step ({n}), got {', '.join(map(str, lengths))}."
            )

    @property
    def num_steps(self) -> int:
        return len(self.batch)

    @property
    def denoiser_batches(self) -> list[int]:
        """The batch of every computing pass, in order: what ``CallStats.denoiser_batches`` records."""
        return [b for b, p in zip(self.batch, self.passes) for _ in range(p)] * self.calls_per_step

    @classmethod
    def plain(cls, num_steps: int, cfg: bool = True, cfg_layout: CfgLayout = "batched") -> Schedule:
        """No TGATE: every step runs the full model for both CFG branches.

        ``cfg_layout="sequential"``: two passes at batch 1 per step (cond, uncond) instead of one at 2.
        """
        _check_steps(num_steps)
        if check_cfg_layout(cfg_layout) == "sequential":
            return cls(
                "baseline",
                (1,) * num_steps,
                (True,) * num_steps,
                passes=(2 if cfg else 1,) * num_steps,
                cfg_layout=cfg_layout,
            )
        return cls("baseline", (2 if cfg else 1,) * num_steps, (True,) * num_steps)

    @classmethod
    def tgate(
        cls,
        num_steps: int,
        gate_step: int,
        cfg: bool = True,
        self_attention: Sequence[bool] | None = None,
        label: str | None = None,
        cfg_layout: CfgLayout = "batched",
        idle_cost: bool = True,
    ) -> Schedule:
        """TGATE: ``gate_step`` steps with cross-attention (and CFG), then replay on one branch.

        ``self_attention`` (one bool per step) adds self-attention caching on top (TGATE v2).
        ``cfg_layout="sequential"`` (Wan): before the gate two passes at batch 1 per step; after it
        one pass (cond, cross-attention replayed) plus, under CFG, the uncond call, whose blocks are
        all skipped: with ``idle_cost`` (default, what crossgate executes) it still costs
        :meth:`CallMacs.outside_blocks`; ``idle_cost=False`` counts it as nothing at all.
        """
        _check_steps(num_steps)
        if gate_step < 1:
            raise AccountingError(f"gate_step must be >= 1, got {gate_step}.")
        m = min(gate_step, num_steps)
        cross = tuple(i < m for i in range(num_steps))
        sa = tuple(bool(x) for x in self_attention) if self_attention is not None else ()
        label = label or f"TGATE m={gate_step}"
        if check_cfg_layout(cfg_layout) == "sequential":
            passes = tuple((2 if cfg and i < m else 1) for i in range(num_steps))
            idle = tuple(int(cfg and idle_cost and i >= m) for i in range(num_steps))
            return cls(
                label, (1,) * num_steps, cross, sa, passes=passes, idle_passes=idle, cfg_layout=cfg_layout
            )
        batch = tuple((2 if cfg and i < m else 1) for i in range(num_steps))
        return cls(label, batch, cross, sa)

    @classmethod
    def tgate_v2(
        cls,
        num_steps: int,
        gate_step: int,
        interval: int,
        warm_up: int = 2,
        cfg: bool = True,
        cfg_layout: CfgLayout = "batched",
    ) -> Schedule:
        """TGATE v2 with the published schedule (:func:`v2_self_attention_steps`)."""
        sa = v2_self_attention_steps(num_steps, gate_step, interval, warm_up)
        label = f"TGATE v2 m={gate_step},k={interval}"
        return cls.tgate(num_steps, gate_step, cfg, sa, label=label, cfg_layout=cfg_layout)


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
    """Denoiser MACs for one image (or clip) under ``schedule``."""
    idle = call.outside_blocks(convention) if any(schedule.idle_passes) else 0
    per_step = (
        b * (p * call.step(convention, ca, sa) + i * idle)
        for b, ca, sa, p, i in zip(
            schedule.batch,
            schedule.cross_attention,
            schedule.self_attention,
            schedule.passes,
            schedule.idle_passes,
        )
    )
    return schedule.calls_per_step * sum(per_step)


def executed_macs(
    call: CallMacs,
    stats: CallStats,
    convention: Convention = "linear_conv",
    cfg_layout: CfgLayout | None = None,
    controls: Mapping[str, CallMacs] | None = None,
) -> int:
    """MACs a real crossgate call executed, from its ``CallStats`` (all images of the call).

    Every denoiser pass runs the full model for its batch, minus each cross-attention module that
    was replayed in it. A module is replayed once per gated pass, and the gated passes are the last
    ones of the call, so module ``j``'s ``r`` replays fall in the last ``r`` passes. With
    self-attention caching, each self-attention module also saves its MACs at every step missing
    from its ``self_attention_computed_steps``.

    ControlNets (``stats.control_batches``) are counted the same way from their own passes; pass
    their per-sample counts in ``controls`` by path (``CallMeter.control_call_macs()``).

    Sequential CFG (``cfg_layout``, by default the counted model's own): ``denoiser_batches`` lists
    only the passes that computed (2 per step before the gate, the cond pass after it); under CFG
    each step after the gate also made the uncond call, whose blocks were all skipped and which
    still ran :meth:`CallMacs.outside_blocks` at the cond pass's batch.
    """
    convention = check_convention(convention)
    layout = check_cfg_layout(cfg_layout or call.cfg_layout)
    passes = stats.denoiser_batches
    replays = dict(stats.cross_attention_replays)
    macs = 0
    for path, batches in stats.control_batches.items():
        counted = (controls or {}).get(path)
        if counted is None:
            raise AccountingError(
                f"the call ran the ControlNet {path!r}; pass its counts as controls={{{path!r}: ...}} "
                "(CallMeter.control_call_macs())."
            )
        prefix = f"{path}."
        own = {name[len(prefix) :]: replays.pop(name) for name in list(replays) if name.startswith(prefix)}
        macs += _passes_macs(counted, batches, own, convention)
    macs += _passes_macs(call, passes, replays, convention)
    computed_steps = stats.self_attention_computed_steps
    if layout == "sequential":
        if computed_steps:
            raise AccountingError(
                "self-attention caching under sequential CFG is not modelled (the engine has not verified "
                "TGATE v2 on two calls per step)."
            )
        gated = max(stats.num_steps - stats.gate, 0)
        expected = (2 if stats.cfg else 1) * (stats.num_steps - gated) + gated
        if len(passes) != expected:
            raise AccountingError(
                f"a sequential-CFG call of {stats.num_steps} steps gated at {stats.gate} makes {expected} "
                f"computing passes, but this one made {len(passes)} (a second denoiser or a multi-call "
                "scheduler is not modelled)."
            )
        if stats.cfg and gated:
            macs += sum(passes[-gated:]) * call.outside_blocks(convention)
        return macs
    # Self-attention caching (TGATE v2): a module skipped at a step saves its MACs for that step's batch.
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


def _passes_macs(
    call: CallMacs, passes: list[int], replays: Mapping[str, int], convention: Convention
) -> int:
    """Full passes at their batches, minus each cross-attention module's replays (the last passes)."""
    macs = sum(passes) * call.full(convention)
    for name, count in replays.items():
        if name not in call.cross_attention:
            raise AccountingError(
                f"cross-attention module {name!r} is not in the counted model {call.model}."
            )
        if count:
            macs -= sum(passes[-count:]) * call.cross_attention[name][convention]
    return macs
