"""Per-call state shared by the hooks of one gated pipeline.

A call's state lives only while the pipeline's denoising loop runs: it is reset when the loop is
entered and again when it is left (also when the loop raises), so no call ever sees another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GateState:
    """What the hooks need to know about the running call.

    Attributes:
        active: a gated call's denoising loop is running; outside it every hook passes through.
        step: denoising steps completed so far in this call (the pipeline's own progress count, so a
            second-order scheduler's two denoiser calls belong to one step).
        num_steps: denoising steps this call's loop will run.
        gate: the resolved gate ``m`` for this call.
        cfg: whether this call batches ``[uncond; cond]``; read at the first denoiser call.
        denoiser_batches: the batch size of every denoiser pass this call (for accounting and tests).
    """

    active: bool = False
    step: int = 0
    num_steps: int = 0
    gate: int = 0
    cfg: bool | None = None
    denoiser_batches: list[int] = field(default_factory=list)
    watch_convergence: bool = False
    convergence: list[float] = field(default_factory=list)

    def begin(self, num_steps: int, gate: int, watch_convergence: bool = False) -> None:
        self.reset()
        self.active = True
        self.num_steps = num_steps
        self.gate = gate
        self.watch_convergence = watch_convergence

    def reset(self) -> None:
        self.active = False
        self.step = 0
        self.num_steps = 0
        self.gate = 0
        self.cfg = None
        self.denoiser_batches = []
        self.watch_convergence = False
        self.convergence = []

    def snapshot(self) -> CallStats:
        return CallStats(
            num_steps=self.num_steps,
            gate=self.gate,
            cfg=self.cfg,
            denoiser_batches=list(self.denoiser_batches),
            convergence=list(self.convergence),
        )

    @property
    def gated(self) -> bool:
        """True from step ``m`` on: cross-attention is replayed and CFG is dropped."""
        return self.active and self.step >= self.gate


@dataclass(frozen=True)
class CallStats:
    """What the last gated call did, kept after the call for inspection and accounting."""

    num_steps: int
    gate: int
    cfg: bool | None
    denoiser_batches: list[int]
    cross_attention_computed_steps: dict[str, int] = field(default_factory=dict)
    cross_attention_replays: dict[str, int] = field(default_factory=dict)
    self_attention_computed_steps: dict[str, list[int]] = field(default_factory=dict)
    convergence: list[float] = field(default_factory=list)  # auto: mean relative change, steps 1..
