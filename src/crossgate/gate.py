"""The gate: when a call stops computing cross-attention and CFG, and what the call did.

* A :class:`GatePolicy` owns the deciding. :class:`FixedGate` knows its step from the start;
  :class:`AutoGate` starts at its latest allowed step and closes earlier after the first step whose
  convergence statistic is below the tolerance. Both answer one method, :meth:`GatePolicy.after_step`,
  so calibration replays a measured curve through the very rule the live call uses (:func:`replay`).
* A :class:`CallState` owns the stepping of one running call: its step counter, its policy, whether
  it runs CFG, its CFG layout, and the per-layer records kept for it. It lives only while the call's
  denoising loop runs and is reachable only through :func:`current_call` in the context (thread,
  nesting level) of the pipeline running that loop, so no call can see another's state. Only eager
  code reads it (the pipeline's loop and each model's gate around its pass), never a hook inside a
  model that may be compiled.
* :class:`CallStats` is what users read afterwards: ``crossgate.last_call(pipe)``.
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossgate.config import TGateConfig, fraction_to_steps
from crossgate.layouts import CfgLayout


class GatePolicy(ABC):
    """Decides the gate ``m`` of one call: steps ``0 .. m-1`` compute, steps ``m ..`` replay."""

    gate: int
    watches_convergence: bool = False

    @abstractmethod
    def after_step(self, step: int, change: float | None) -> None:
        """Step ``step`` (0-based) has completed; ``change`` is its convergence statistic, if measured."""


@dataclass
class FixedGate(GatePolicy):
    """A gate known before the call starts (``gate_step`` as steps or as a fraction)."""

    gate: int

    def after_step(self, step: int, change: float | None) -> None:
        return None


@dataclass
class AutoGate(GatePolicy):
    """``gate_step="auto"``: close after the first step whose change is below ``tolerance``.

    ``tolerance`` is already divided by the step-count scale (see ``TGateConfig.auto_tolerance``).
    The gate is never before ``min_gate`` and always by ``max_gate``.
    """

    tolerance: float
    min_gate: int
    max_gate: int
    gate: int = 0
    watches_convergence: bool = True

    def __post_init__(self) -> None:
        self.gate = self.max_gate

    def after_step(self, step: int, change: float | None) -> None:
        if change is None:
            return
        following = step + 1
        if following >= self.gate or following < self.min_gate:
            return
        if change < self.tolerance:
            self.gate = following


def gate_policy(config: TGateConfig, num_steps: int) -> GatePolicy:
    """The policy ``config`` describes for a call of ``num_steps`` denoising steps."""
    if config.is_auto:
        return AutoGate(
            tolerance=config.auto_tolerance / config.convergence_scale(num_steps),
            min_gate=fraction_to_steps(config.auto_min_fraction, num_steps),
            max_gate=fraction_to_steps(config.auto_max_fraction, num_steps),
        )
    return FixedGate(config.resolve_gate(num_steps))


def replay(policy: GatePolicy, curve: Sequence[float]) -> int:
    """The gate ``policy`` reaches on a measured curve (``curve[t-1]``: the change at step ``t``)."""
    for step, change in enumerate(curve, start=1):
        policy.after_step(step, change)
    return policy.gate


@dataclass
class CallState:
    """What one running call decided and keeps: read and written only by eager code.

    The hooks inside a (possibly compiled) model never read it: before each pass the model's gate
    (:mod:`crossgate.hooks`) reads it and writes what that pass must do into the model's ``Lane``.

    Attributes:
        owner: the pipeline whose denoising loop this is.
        adapter: the owner's family adapter (held, not copied).
        layout: the CFG layout strategy (:mod:`crossgate.layouts`): how a batch is halved after the
            gate and handed back, and where its CFG mean comes from.
        denoisers: the denoiser modules that loop runs (gates of other denoisers ignore this call);
            more than one for pipelines with experts (Wan 2.2).
        controls: the ControlNets the loop runs beside its denoiser, gated like it.
        config: the owner's TGATE configuration.
        policy: decides the gate; ``gate`` reads it.
        num_steps: denoising steps the loop will run.
        step: steps completed so far (the pipeline's own progress count, so a second-order
            scheduler's two denoiser calls belong to one step).
        cfg: whether this call runs CFG; read at the first pass (``cfg_probe``).
        records: per-layer data kept for this call only (caches, counts), keyed by model and layer.
        denoiser_batches: the batch of every denoiser pass (for accounting and tests).
        control_batches: per ControlNet (by id), the batch of every pass.
        convergence: ``gate_step="auto"``: the layer-averaged change, one value per step from step 1.
        ran_before_gate: ids of the models that ran a pass before the gate (an expert that did not
            has no cross-attention to replay).
        cond_only: ids of the ControlNets that run on the cond branch alone (guess mode): their
            caches are not CFG means and the denoiser takes their residuals from its cond half.
        branch: sequential CFG: the branch of the running pass (its ``cache_context`` name).
        cond_output: sequential CFG: the cond pass's output, handed to the skipped uncond call.
        guidance_delta: cond - uncond of the last pass before the gate (``guidance_after_gate``).
        slot / passes: the running pass's index within its step, and the passes started in it
            (several passes per step: Panorama's view windows keep one cache per slot).
    """

    owner: Any
    adapter: Any
    layout: CfgLayout
    denoisers: tuple[Any, ...]
    config: TGateConfig
    policy: GatePolicy
    num_steps: int
    controls: tuple[Any, ...] = ()
    cfg_probe: Callable[[], bool] | None = None
    step: int = 0
    cfg: bool | None = None
    records: dict[str, Any] = field(default_factory=dict)
    denoiser_batches: list[int] = field(default_factory=list)
    control_batches: dict[int, list[int]] = field(default_factory=dict)
    convergence: list[float] = field(default_factory=list)
    ran_before_gate: set[int] = field(default_factory=set)
    cond_only: set[int] = field(default_factory=set)
    branch: str | None = None
    cond_output: Any = None
    guidance_delta: Any = None
    slot: int = 0
    passes: int = 0

    @property
    def post_gate_inputs(self) -> str:
        return "cond" if self.layout.feeds_cond else "uncond"

    @property
    def per_pass(self) -> bool:
        return bool(self.adapter.per_pass_caches)

    def begin_pass(self) -> None:
        """One of this call's own denoiser passes starts: it takes the next slot of the step."""
        self.slot, self.passes = self.passes, self.passes + 1

    def runs(self, model: Any) -> bool:
        """Whether ``model`` (a denoiser or a ControlNet) is one this call's loop runs."""
        return any(m is model for m in (*self.denoisers, *self.controls))

    def runs_cfg(self) -> bool:
        """Whether the call runs CFG, asked of the pipeline at the first pass."""
        if self.cfg is None:
            self.cfg = bool(self.cfg_probe()) if self.cfg_probe is not None else False
        return self.cfg

    def cfg_batched(self, model: Any) -> bool:
        """Whether ``model``'s passes in this call hold both CFG halves (a guess-mode ControlNet's do not)."""
        return bool(self.cfg) and not self.layout.sequential and id(model) not in self.cond_only

    @property
    def gate(self) -> int:
        return self.policy.gate

    @property
    def gated(self) -> bool:
        """True from step ``m`` on: cross-attention is replayed and CFG is dropped."""
        return self.step >= self.policy.gate

    def complete_step(self, change: float | None) -> None:
        """The pipeline finished a step: let the policy decide, then advance."""
        if change is not None:
            self.convergence.append(change)
        self.policy.after_step(self.step, change)
        self.step += 1
        self.passes = 0


_RUNNING: contextvars.ContextVar[CallState | None] = contextvars.ContextVar("crossgate_call", default=None)


def current_call() -> CallState | None:
    """The gated call running in this context (thread, nesting level), or None."""
    return _RUNNING.get()


def enter_call(call: CallState) -> contextvars.Token:
    """Make ``call`` the running call of this context; pass the token to :func:`leave_call`."""
    return _RUNNING.set(call)


def leave_call(token: contextvars.Token) -> None:
    try:
        _RUNNING.reset(token)
    except ValueError:  # a generator-style loop closed from another context: nothing of ours is there
        _RUNNING.set(None)


@dataclass(frozen=True)
class CallStats:
    """What the last gated call of a pipeline did: ``crossgate.last_call(pipe)``.

    Attributes:
        num_steps: denoising steps the call ran.
        gate: the gate ``m`` it used (for ``"auto"``: the step the convergence rule chose).
        cfg: whether it ran classifier-free guidance.
        denoiser_batches: the batch of every denoiser pass (2B before the gate under CFG, B after).
        cross_attention_computed_steps: per cross-attention layer, the number of steps in which it
            computed (``m`` when the gate engaged; a step counts once however many passes it ran).
        cross_attention_replays: per cross-attention layer, the denoiser passes that replayed its
            cache (one per step after the gate; Panorama: one per view-window pass after the gate).
        self_attention_computed_steps: TGATE v2: per self-attention layer, the steps it computed.
        text_stream_replays: joint-attention families: per joint block, the passes that ran its
            image side against the frozen text stream (one per pass after the gate).
        convergence: ``"auto"`` only: the layer-averaged relative change, one value per step from 1.
        post_gate_inputs: the CFG half (``"uncond"``/``"cond"``) that fed the passes after the gate.
        control_batches: per ControlNet (its attribute path, e.g. ``controlnet.nets.0``), the batch of
            every pass: like the denoiser's, halved from the gate on.
    """

    num_steps: int
    gate: int
    cfg: bool | None
    denoiser_batches: list[int]
    cross_attention_computed_steps: dict[str, int] = field(default_factory=dict)
    cross_attention_replays: dict[str, int] = field(default_factory=dict)
    self_attention_computed_steps: dict[str, list[int]] = field(default_factory=dict)
    convergence: list[float] = field(default_factory=list)
    post_gate_inputs: str = "uncond"
    control_batches: dict[str, list[int]] = field(default_factory=dict)
    text_stream_replays: dict[str, int] = field(default_factory=dict)

    @property
    def engaged(self) -> bool:
        """Whether the gate closed inside the call (otherwise the output equals the plain pipeline's)."""
        return self.gate < self.num_steps
