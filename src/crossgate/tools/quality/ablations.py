"""Study configurations that take TGATE apart, for ``crossgate eval`` (docs/quality-frontier.md).

None of these is an engine option; they are measuring instruments, built from PyTorch hooks (and,
where a module must *not* run, a swapped diffusers attention processor) that are removed on exit.

* :func:`cfg_cutoff`: drop classifier-free guidance from step ``m`` on while cross-attention keeps
  computing: the denoiser runs the cond half of the ``[uncond; cond]`` batch only and the pipeline
  gets that prediction for both halves, so its guidance returns it unchanged. This is what diffusers'
  ``SDCFGCutoffCallback`` does (cond prompt only, guidance off); the callback itself keeps only the
  *last* prompt embedding (``prompt_embeds[-1:]``), which is wrong for batches of several prompts,
  so the hook slices the batch instead.
* :func:`cache_only`: freeze cross-attention from step ``m`` on while both CFG branches keep running:
  every cross-attention layer replays its own output of step ``m - 1``, **per branch** (the uncond
  half its uncond output, the cond half its cond output), so guidance still sees a text difference.
  The layer's processor is swapped for one that returns the cache without running the projections,
  so the replayed layers cost nothing in the executed MACs.
* :class:`GuidanceSchedule` / :func:`kept_guidance`: TGATE's ``guidance_after_gate`` with any weight
  schedule (the engine offers ``w d^k``): after the gate the single prediction ``p`` (handed to the
  pipeline as ``[p, p]``) is replaced by ``[p - s, p + s]``, ``s = w_k delta / 2``, ``delta`` the
  ``cond - uncond`` of the denoiser output at step ``m - 1``. Schedule ``eps`` rescales by the noise
  level: ``w_k = w alpha(m - 1) / alpha(t_k)`` (``alpha = sqrt(alphabar)``) keeps the difference
  constant in epsilon space for a v-prediction model (``eps = sigma x + alpha v``), which on the
  embedded model tracks how fast the true guidance difference decays (docs/quality-frontier.md).
* :func:`deepcache`: DeepCache (``DeepCacheSDHelper``) around a call, composed with crossgate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from crossgate.adapters import cross_attention_modules, resolve_adapter
from crossgate.tensors import latent_batch, map_batch
from crossgate.tools.quality.sampling import StepTracker, cfg_active, check_step_callback

SCHEDULES = ("const", "eps")


def _prediction(output: Any) -> torch.Tensor:
    """The prediction in a denoiser output: a tensor, ``(tensor, ...)`` or ``Output(sample=...)``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(v for v in output.values() if isinstance(v, torch.Tensor))
    return output[0]


def _replace_prediction(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return value
    if isinstance(output, dict):
        key = next(k for k, v in output.items() if isinstance(v, torch.Tensor))
        mapped = dict(output)
        mapped[key] = value
        return mapped if type(output) is dict else type(output)(**mapped)
    return type(output)([value, *list(output)[1:]])


@dataclass
class StudyStats:
    """What one call of a study configuration did (read like ``crossgate.last_call``)."""

    gate: int
    denoiser_batches: list[int]


class PassLog:
    """Records the latent batch of every denoiser pass; :meth:`take` ends a call's record."""

    def __init__(self, gate: int) -> None:
        self.gate = gate
        self.batches: list[int] = []

    def take(self) -> StudyStats:
        stats = StudyStats(self.gate, self.batches)
        self.batches = []
        return stats


@contextlib.contextmanager
def pass_log(pipe: Any, gate: int) -> Iterator[PassLog]:
    """Log the batch the denoiser actually runs at each pass (after every other pre-hook)."""
    log = PassLog(gate)
    denoiser = resolve_adapter(pipe).denoiser(pipe)

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        log.batches.append(latent_batch(args, kwargs))

    handle = denoiser.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield log
    finally:
        handle.remove()


@contextlib.contextmanager
def cfg_cutoff(pipe: Any, gate: int, tracker: StepTracker) -> Iterator[None]:
    """CFG off from step ``gate`` on (cond prediction only), cross-attention still computed."""
    check_step_callback(pipe)
    adapter = resolve_adapter(pipe)
    denoiser = adapter.denoiser(pipe)
    halved: list[int | None] = [None]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        halved[0] = None
        full = latent_batch(args, kwargs)
        if tracker.step < gate or not cfg_active(pipe, full, tracker.prompts, adapter):
            return None
        half = full // 2
        halved[0] = half
        return map_batch((args, kwargs), full, lambda t: t[half:])  # the cond half

    def after(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        half, halved[0] = halved[0], None
        if half is None:
            return None
        return map_batch(output, half, lambda t: torch.cat([t, t], dim=0))

    handles = [
        denoiser.register_forward_pre_hook(before, with_kwargs=True),
        denoiser.register_forward_hook(after),
    ]
    try:
        yield None
    finally:
        for handle in handles:
            handle.remove()


class _ReplayProcessor:
    """A cross-attention processor that computes before the gate and replays per branch after it."""

    def __init__(self, processor: Any, gate: int, tracker: StepTracker) -> None:
        self.processor = processor
        self.gate = gate
        self.tracker = tracker
        self.cache: torch.Tensor | None = None
        self.computed: list[int] = []
        self.replayed: list[int] = []

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        step = self.tracker.step
        cache = self.cache
        if step >= self.gate and cache is not None and cache.shape[0] == hidden_states.shape[0]:
            self.replayed.append(step)
            return cache
        output = self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        self.computed.append(step)
        if step < self.gate:
            self.cache = output  # both CFG halves, each its own branch's output
        return output


@contextlib.contextmanager
def cache_only(pipe: Any, gate: int, tracker: StepTracker) -> Iterator[dict[str, _ReplayProcessor]]:
    """Cross-attention frozen (per CFG branch) from step ``gate`` on; both branches keep running."""
    check_step_callback(pipe)
    denoiser = resolve_adapter(pipe).denoiser(pipe)
    swapped: dict[str, _ReplayProcessor] = {}
    originals: dict[str, tuple[Any, Any]] = {}
    for name, module in cross_attention_modules(denoiser):
        if not hasattr(module, "processor"):
            raise ValueError(
                f"cache-only needs diffusers Attention modules with a processor; {name} has none"
            )
        originals[name] = (module, module.processor)
        swapped[name] = _ReplayProcessor(module.processor, gate, tracker)
        module.processor = swapped[name]
    try:
        yield swapped
    finally:
        for module, processor in originals.values():
            module.processor = processor


@dataclass(frozen=True)
class GuidanceSchedule:
    """Weights of the kept guidance difference after the gate (see the module docstring)."""

    weight: float = 1.0
    decay: float = 1.0
    kind: str = "const"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule {self.kind!r}; use one of {SCHEDULES}")
        if not (math.isfinite(self.weight) and self.weight >= 0 and 0 < self.decay <= 1):
            raise ValueError(f"kept guidance needs w >= 0 and d in (0, 1], got {self.weight}, {self.decay}")

    def weights(self, scheduler: Any, gate: int, steps: int) -> list[float]:
        """``w_k`` for the steps ``gate .. steps - 1`` (``k = 0`` is the first gated step)."""
        base = [self.weight * self.decay**k for k in range(max(0, steps - gate))]
        if self.kind == "const":
            return base
        timesteps = [int(t) for t in scheduler.timesteps]
        alphabar = scheduler.alphas_cumprod

        def alpha(step: int) -> float:
            return float(alphabar[timesteps[step]]) ** 0.5

        reference = alpha(gate - 1)
        return [w * reference / max(alpha(gate + k), 1e-8) for k, w in enumerate(base)]


@contextlib.contextmanager
def kept_guidance(
    pipe: Any, gate: int, schedule: GuidanceSchedule, tracker: StepTracker
) -> Iterator[list[float]]:
    """Add ``w_k`` times the last pre-gate guidance difference back after the gate (no extra pass).

    Enter it *inside* ``crossgate.enabled`` (or :func:`cfg_cutoff`): its forward hook must run after
    the one that doubles the single prediction to ``[p, p]``. Yields the weights used at each gated
    step of the last call (for tests).
    """
    check_step_callback(pipe)
    denoiser = resolve_adapter(pipe).denoiser(pipe)
    state: dict[str, Any] = {"delta": None, "weights": None}
    used: list[float] = []

    def after(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        step = tracker.step
        prediction = _prediction(output)
        if step == 0:
            state["delta"], state["weights"] = None, None
            used.clear()
        if step < gate:
            if step == gate - 1 and prediction.shape[0] % 2 == 0:
                uncond, cond = prediction.chunk(2)
                state["delta"] = cond - uncond
            return None
        delta = state["delta"]
        if delta is None or prediction.shape[0] != 2 * delta.shape[0]:
            return None
        if state["weights"] is None:
            state["weights"] = schedule.weights(pipe.scheduler, gate, len(pipe.scheduler.timesteps))
        weight = state["weights"][step - gate]
        used.append(weight)
        single = prediction[: delta.shape[0]]
        shift = delta * (weight / 2)
        return _replace_prediction(output, torch.cat([single - shift, single + shift], dim=0))

    handle = denoiser.register_forward_hook(after)
    try:
        yield used
    finally:
        handle.remove()


@contextlib.contextmanager
def deepcache(
    pipe: Any, interval: int, composed: bool, after: int | None = None, gate: int | None = None
) -> Iterator[Any]:
    """DeepCache (cache branch 0, uniform skipping every ``interval`` steps) around the block.

    ``composed``: crossgate is (or will be) applied inside, so let it refill DeepCache's caches
    when the batch halves (:func:`crossgate.compose_deepcache`). ``after`` (study option, with
    ``gate``): a second interval for the steps after the gate; the full passes are then steps
    ``0, interval, 2 interval, ... < gate``, the gate itself (the refill at batch B) and
    ``gate + after, gate + 2 after, ...``.
    """
    import crossgate

    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError as error:  # pragma: no cover - DeepCache is a dev dependency
        raise ValueError("dc=/deepcache: configurations need the DeepCache package") from error
    helper = DeepCacheSDHelper(pipe=pipe)
    if after is None:
        helper.set_params(cache_interval=interval, cache_branch_id=0)
    else:
        if gate is None:
            raise ValueError("a DeepCache interval after the gate needs the gate")
        # DeepCache's own rule with an interval no step reaches: full at step 0 only, so it
        # answers "which blocks are skipped" and the schedule below decides which steps are full.
        helper.set_params(cache_interval=10**9, cache_branch_id=0)
    helper.enable()
    if after is not None:
        own_skip = type(helper).is_skip_step.__get__(helper)

        def full_pass(step: int) -> bool:
            if step < gate:
                return step % interval == 0
            return (step - gate) % after == 0

        def is_skip_step(block_i: int, layer_i: int, blocktype: str = "down") -> bool:
            if full_pass(helper.cur_timestep):
                return False
            return own_skip(block_i, layer_i, blocktype)

        helper.is_skip_step = is_skip_step
    elif composed:
        crossgate.compose_deepcache(pipe, helper)
    try:
        yield helper
    finally:
        helper.disable()
