"""The diffusers ``ModelHook`` subclasses that implement TGATE.

Two hooks share one :class:`~crossgate.gate.GateState`:

* :class:`CrossAttentionGateHook` sits on every cross-attention module. Before the gate it lets the
  module's own attention processor run (LoRA, IP-Adapter, fused or custom processors stay in
  charge) and keeps a reference to the latest output. From the gate on it returns the cached output
  (the mean of the CFG halves) without computing anything.
* :class:`DenoiserGate` sits on the denoiser. From the gate on, when the call runs CFG, it feeds
  one half of the ``[uncond; cond]`` batch through the denoiser and hands the pipeline the result
  for both halves, so the pipeline's own guidance arithmetic returns it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook

from crossgate.gate import GateState
from crossgate.schedule import Action

CROSS_ATTENTION_HOOK = "crossgate_cross_attention"
SELF_ATTENTION_HOOK = "crossgate_self_attention"


class CrossAttentionGateHook(ModelHook):
    """Compute before the gate, replay the converged output after it."""

    _is_stateful = True

    def __init__(self, state: GateState, name: str) -> None:
        super().__init__()
        self.state = state
        self.name = name
        self.cache: torch.Tensor | None = None
        self._latest: torch.Tensor | None = None
        self._latest_step: int | None = None
        self.change: tuple[int, float] | None = None  # (step, relative change from the step before)
        self.computed_steps: set[int] = set()
        self.replayed_calls = 0

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if not state.gated:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if state.active:
                self._record(output)
            return output
        if self.cache is None:
            self.cache = self._freeze_cache()
        self.replayed_calls += 1
        return self.cache

    def _record(self, output: torch.Tensor) -> None:
        step = self.state.step
        if self.state.watch_convergence and self._latest is not None and self._latest_step != step:
            self.change = (step, relative_change(self._view(output), self._view(self._latest)))
        self._latest, self._latest_step = output, step
        self.computed_steps.add(step)

    def _view(self, output: torch.Tensor) -> torch.Tensor:
        return _cfg_mean(output) if self.state.cfg else output

    def _freeze_cache(self) -> torch.Tensor:
        latest, self._latest = self._latest, None
        if latest is None:
            raise RuntimeError(
                f"crossgate: cross-attention layer {self.name!r} was never computed before the gate, so "
                "there is no output to replay. Something skipped it in every step before the gate."
            )
        return self._view(latest)

    def reset_state(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        self.cache = None
        self._latest = None
        self._latest_step = None
        self.change = None
        self.computed_steps = set()
        self.replayed_calls = 0
        return module


def relative_change(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``||current - previous|| / ||previous||`` per image (Frobenius), averaged over images.

    The convergence statistic of ``gate_step="auto"``; the same definition as
    :func:`crossgate.tools.quality.convergence.record_convergence`'s "mean" view, so a calibration and a live auto
    gate measure the same thing.
    """
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    ratio = (current - previous).norm(dim=1) / previous.norm(dim=1).clamp_min(1e-12)
    return float(ratio.mean())


class SelfAttentionCacheHook(ModelHook):
    """TGATE v2: recompute self-attention only on the schedule's steps, reuse it in between."""

    _is_stateful = True

    def __init__(self, state: GateState, name: str, action: Callable[[int, int], Action]) -> None:
        super().__init__()
        self.state = state
        self.name = name
        self._action = action
        self.cache: torch.Tensor | None = None
        self.computed_steps: set[int] = set()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if not state.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        action = self._action(state.step, state.gate)
        batch = _batch_size(args, kwargs)
        if action is Action.REUSE and self.cache is not None and self.cache.shape[0] == batch:
            return self.cache
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.computed_steps.add(state.step)
        if action is Action.STORE:
            at_gate = state.step == state.gate - 1
            self.cache = _cfg_mean(output) if at_gate and state.cfg else output
        return output

    def reset_state(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        self.cache = None
        self.computed_steps = set()
        return module


class DenoiserGate:
    """Run the denoiser once per pass (batch B instead of 2B) once the gate has closed.

    Unlike the cross-attention hooks this one never skips the module, it only rewrites its inputs
    and output, so it uses PyTorch's own forward pre-hook and forward hook. Those survive anything
    that re-wraps ``forward``: accelerate's model offloading re-installs its wrapper at the end of
    every call (``maybe_free_model_hooks``) and drops any forward wrapper registered after it.
    """

    def __init__(self, state: GateState, cfg_active: Callable[[], bool], use_cond_half: bool) -> None:
        self.state = state
        self._cfg_active = cfg_active
        self._half = 1 if use_cond_half else 0
        self._halved: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, denoiser: torch.nn.Module) -> None:
        self._handles = [
            denoiser.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
            denoiser.register_forward_hook(self._after),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._halved = None
        state = self.state
        if not state.active:
            return None
        if state.cfg is None:
            state.cfg = bool(self._cfg_active())
        full = _batch_size(args, kwargs)
        if not (state.gated and state.cfg):
            state.denoiser_batches.append(full)
            return None
        if full % 2:
            raise RuntimeError(
                f"crossgate: expected a [uncond; cond] batch after the gate but the denoiser got batch "
                f"{full}; this pipeline may call the denoiser separately per CFG branch (unsupported)."
            )
        half = full // 2
        pick = slice(self._half * half, (self._half + 1) * half)
        state.denoiser_batches.append(half)
        self._halved = half
        return _map_batch((args, kwargs), full, lambda t: t[pick])

    def _after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        half, self._halved = self._halved, None
        if half is None:
            return None
        return _map_batch(output, half, lambda t: torch.cat([t, t], dim=0))


def _cfg_mean(output: torch.Tensor) -> torch.Tensor:
    """The mean of the ``[uncond; cond]`` halves: what one pass at batch B replays after the gate."""
    uncond, cond = output.chunk(2, dim=0)
    return (uncond + cond) / 2


def _batch_size(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    if not isinstance(sample, torch.Tensor):
        raise RuntimeError("crossgate: could not find the denoiser's latent input to read the batch size.")
    return sample.shape[0]


def _map_batch(tree: Any, batch: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in ``tree`` whose leading dimension is the batch."""
    if isinstance(tree, torch.Tensor):
        return fn(tree) if tree.dim() > 0 and tree.shape[0] == batch else tree
    if isinstance(tree, dict):
        mapped = {key: _map_batch(value, batch, fn) for key, value in tree.items()}
        return mapped if type(tree) is dict else type(tree)(**mapped)
    if isinstance(tree, (list, tuple)):
        mapped = [_map_batch(value, batch, fn) for value in tree]
        return type(tree)(mapped) if not hasattr(tree, "_fields") else type(tree)(*mapped)
    return tree
