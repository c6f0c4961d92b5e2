"""The hooks that implement TGATE on one denoiser, for every pipeline that shares it.

The hooks are stateless: what a call keeps (caches, counts) lives in that call's
:class:`~crossgate.gate.CallState`, found with :func:`~crossgate.gate.current_call`, so pipelines that
share a denoiser (``from_pipe``, ``Pipeline(**pipe.components)``) and calls running in other threads
or nested in a callback never see each other's state.

* :class:`CrossAttentionGateHook` (a diffusers ``ModelHook`` on every cross-attention module): before
  the gate the module's own attention processor runs (LoRA, IP-Adapter, fused or custom processors
  stay in charge) and its latest output is kept; from the gate on it returns the mean of that
  output's CFG halves without computing anything.
* :class:`SelfAttentionCacheHook` (a ``ModelHook``, TGATE v2 only): compute, store or reuse
  self-attention on the steps :mod:`crossgate.schedule` says, dropping a cache once no later step
  reads it.
* :class:`DenoiserGate` (PyTorch forward pre/post hooks on the denoiser, not a ``ModelHook``: it
  rewrites inputs and outputs rather than skipping the module, and PyTorch's hooks survive
  accelerate's offloading re-installing its ``forward`` wrapper after every call). From the gate on,
  under CFG, it feeds one half of the ``[uncond; cond]`` batch through the denoiser and hands the
  pipeline the result for both halves, so the pipeline's own guidance arithmetic returns it unchanged.
* :class:`ControlGate` (PyTorch forward hooks on each ControlNet, batched CFG): gates a ControlNet
  like the denoiser it feeds, one CFG half after the gate, its cross-attention replayed too.
* :class:`BlockSkipHook` (a ``ModelHook`` on every top-level transformer block, sequential CFG only).

Sequential CFG (Wan and its family call the denoiser once per branch, inside
``denoiser.cache_context("cond")`` and then ``cache_context("uncond")``; crossgate reads the branch
from that name, never from call parity):

* before the gate both calls run as written; each cross-attention layer keeps its latest output per
  branch;
* at the gate the cache is the mean of the cond and uncond outputs of the last step before it (the
  batched rule; without CFG, the cond output);
* after the gate the cond call runs once with the cond inputs and the cache; the uncond call computes
  nothing: every block is skipped and the denoiser hands back the cond call's output, so the
  pipeline's ``uncond + g * (cond - uncond)`` returns the cond prediction exactly;
* a denoiser that never ran before the gate (Wan 2.2's second expert when the gate is in the first
  expert's range) has nothing to replay: its cross-attention keeps computing, its uncond call is
  still skipped.

Several passes per step (Panorama, MultiDiffusion: one denoiser pass per view window, each with CFG
interleaved per view, ``[u0, c0, u1, c1, ...]``; the adapter's ``per_pass_caches`` and
``cfg_interleaved``):

* each pass of a step takes a slot, its index in the step (the j-th own denoiser pass, counted again
  from 0 when the step completes); each window has its own queries, so each cross-attention layer
  keeps its latest output per slot;
* at the gate slot j's cache is the CFG mean of slot j's output from the last step before it,
  ``(x[0::2] + x[1::2]) / 2``;
* after the gate each pass runs one half of its interleaved batch (``x[0::2]``, the uncond entries, by
  default; ``x[1::2]`` for ``post_gate_inputs="cond"``) with its slot's cache replayed, and hands the
  output back with each row twice (``repeat_interleave(2)``), so the pipeline's
  ``noise_pred[::2]``/``noise_pred[1::2]`` guidance returns it unchanged;
* a layer's computed steps count steps (``m``), its replays count passes (slots x steps after the gate).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

import torch
from diffusers.hooks import ModelHook

from crossgate.gate import CallState, current_call
from crossgate.schedule import Action, self_attention_action
from crossgate.tensors import (
    cfg_double,
    cfg_half,
    cfg_join,
    cfg_mean,
    cfg_split,
    latent_batch,
    map_batch,
    relative_change,
)


@dataclass
class CrossAttentionRecord:
    """What one cross-attention layer keeps during one call."""

    latest: dict[str, torch.Tensor] = field(default_factory=dict)  # per branch ("batch" when batched)
    latest_step: dict[str, int] = field(default_factory=dict)
    cache: torch.Tensor | None = None
    change: tuple[int, float] | None = None  # (step, relative change from the step before)
    view: torch.Tensor | None = None  # sequential CFG, auto gate: the last step's CFG mean
    view_step: int | None = None
    computed_steps: set[int] = field(default_factory=set)
    replays: int = 0


@dataclass
class SelfAttentionRecord:
    """What one self-attention layer keeps during one call (TGATE v2)."""

    cache: torch.Tensor | None = None
    computed_steps: set[int] = field(default_factory=set)


def _call_for(model: torch.nn.Module) -> CallState | None:
    """The running call if it is running ``model`` in a pass of its own pipeline, else None."""
    call = current_call()
    return call if call is not None and call.runs(model) else None


_BATCH = "batch"  # the key of a batched pass's output (both CFG halves in one tensor)
# The UNet inputs that carry a ControlNet's residuals (diffusers' UNet2DConditionModel.forward).
_CONTROL_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")
# Denoiser inputs that are positional tables, never per sample, though a dimension may happen to
# equal the batch (Allegro's rotary tables have a row per latent frame, patch row and column).
_SHARED_INPUTS = frozenset({"image_rotary_emb"})


class _SkippingHook(ModelHook):
    """A ``ModelHook`` that replaces its module's forward and calls the original when it computes."""

    def _run_module(self, *args: Any, **kwargs: Any) -> Any:
        forward = cast(Callable[..., Any], self.fn_ref.original_forward)  # set by HookRegistry
        return forward(*args, **kwargs)


class CrossAttentionGateHook(_SkippingHook):
    """Compute before the gate, replay the converged output after it."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model = model  # the denoiser (or ControlNet) whose passes this layer belongs to
        self.name = name
        self._key = f"cross:{id(model)}:{name}"  # experts share module names

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = _call_for(self.model)
        if call is None:
            return self._run_module(*args, **kwargs)
        record = self.record(call)
        if not call.gated:
            output = self._run_module(*args, **kwargs)
            self._keep(call, record, output)
            return output
        if record.cache is None:
            if not record.latest and id(self.model) not in call.ran_before_gate:
                # an expert that first runs after the gate: nothing was measured, so compute
                output = self._run_module(*args, **kwargs)
                record.computed_steps.add(call.step)
                return output
            record.cache = self._freeze(call, record)
        record.replays += 1
        return record.cache

    def record(self, call: CallState) -> CrossAttentionRecord:
        """The record of the running pass: one per layer, or one per pass slot (``call.per_pass``)."""
        if call.per_pass:
            slots: dict[int, CrossAttentionRecord] = call.records.setdefault(self._key, {})
            if call.slot not in slots:
                slots[call.slot] = CrossAttentionRecord()
            return slots[call.slot]
        record = call.records.get(self._key)
        if record is None:
            record = call.records[self._key] = CrossAttentionRecord()
        return record

    def _records(self, call: CallState) -> list[CrossAttentionRecord]:
        if call.per_pass:
            return list(call.records.get(self._key, {}).values())
        return [self.record(call)]

    def change_at(self, call: CallState, step: int) -> float | None:
        """This layer's relative change measured at ``step`` of ``call``, if it computed then."""
        change = self.record(call).change
        return change[1] if change is not None and change[0] == step else None

    def stats(self, call: CallState) -> tuple[int, int]:
        """(steps computed, passes replayed) in ``call``; with per-pass slots, over all of them."""
        records = self._records(call)
        computed = set().union(*(record.computed_steps for record in records))
        return len(computed), sum(record.replays for record in records)

    def _keep(self, call: CallState, record: CrossAttentionRecord, output: torch.Tensor) -> None:
        step = call.step
        record.computed_steps.add(step)
        if call.sequential:
            branch = call.branch or "cond"
            record.latest[branch], record.latest_step[branch] = output, step
            if call.policy.watches_convergence and self._complete(call, record, step):
                view = self._sequential_mean(call, record)
                if record.view is not None and record.view_step != step:
                    record.change = (step, relative_change(view, record.view))
                record.view, record.view_step = view, step
            return
        previous, previous_step = record.latest.get(_BATCH), record.latest_step.get(_BATCH)
        if call.policy.watches_convergence and previous is not None and previous_step != step:
            record.change = (
                step,
                relative_change(self._batched_view(call, output), self._batched_view(call, previous)),
            )
        record.latest[_BATCH], record.latest_step[_BATCH] = output, step

    def _batched_view(self, call: CallState, output: torch.Tensor) -> torch.Tensor:
        return cfg_mean(output, call.interleaved) if call.cfg_batched(self.model) else output

    @staticmethod
    def _complete(call: CallState, record: CrossAttentionRecord, step: int) -> bool:
        """Sequential CFG: both branches (just cond without CFG) have an output from ``step``."""
        branches = ("cond", "uncond") if call.cfg else ("cond",)
        return all(record.latest_step.get(b) == step for b in branches)

    @staticmethod
    def _sequential_mean(call: CallState, record: CrossAttentionRecord) -> torch.Tensor:
        if call.cfg and "uncond" in record.latest and "cond" in record.latest:
            return (record.latest["uncond"] + record.latest["cond"]) / 2
        return record.latest["cond"]

    def _freeze(self, call: CallState, record: CrossAttentionRecord) -> torch.Tensor:
        if not record.latest:
            slot = f" in pass {call.slot} of a step" if call.per_pass else ""
            raise RuntimeError(
                f"crossgate: cross-attention layer {self.name!r} was never computed{slot} before the gate, so "
                "there is no output to replay. Something skipped it in every step before the gate"
                + (", or the pipeline runs more denoiser passes per step after the gate." if slot else ".")
            )
        if call.sequential:
            if call.cfg and not self._complete(call, record, max(record.latest_step.values())):
                raise RuntimeError(
                    f"crossgate: cross-attention layer {self.name!r} has no cond and uncond output from the "
                    "same step before the gate; the pipeline did not run both named CFG branches."
                )
            cache = self._sequential_mean(call, record)
        else:
            cache = self._batched_view(call, record.latest[_BATCH])
        record.latest.clear()
        return cache


class SelfAttentionCacheHook(_SkippingHook):
    """TGATE v2: recompute self-attention only on the schedule's steps, reuse it in between."""

    def __init__(self, denoiser: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.name = name
        self._key = f"self:{id(denoiser)}:{name}"

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = _call_for(self.denoiser)
        if call is None or not call.config.caches_self_attention:
            return self._run_module(*args, **kwargs)
        record = self.record(call)
        action = self._action(call, call.step)
        batch = latent_batch(args, kwargs)
        if action is Action.REUSE and record.cache is not None and record.cache.shape[0] == batch:
            return record.cache
        output = self._run_module(*args, **kwargs)
        record.computed_steps.add(call.step)
        if action is Action.STORE and self._reused_at(call, call.step + 1):  # else nobody reads it
            at_gate = call.step == call.gate - 1
            record.cache = cfg_mean(output) if at_gate and call.cfg else output
        return output

    def record(self, call: CallState) -> SelfAttentionRecord:
        record = call.records.get(self._key)
        if record is None:
            record = call.records[self._key] = SelfAttentionRecord()
        return record

    def stats(self, call: CallState) -> list[int]:
        """The steps this layer computed in ``call``."""
        return sorted(self.record(call).computed_steps)

    @staticmethod
    def _action(call: CallState, step: int) -> Action:
        config = call.config
        return self_attention_action(
            step,
            call.gate,
            config.self_attention_interval,
            config.self_attention_interval_after,
            config.self_attention_warm_up,
        )

    def drop_unread(self, call: CallState) -> None:
        """At a step boundary: free the cache unless the step now starting reuses it."""
        record = call.records.get(self._key)
        if record is not None and not self._reused_at(call, call.step):
            record.cache = None

    def _reused_at(self, call: CallState, step: int) -> bool:
        return step < call.num_steps and self._action(call, step) is Action.REUSE


class _InputOutputHooks:
    """PyTorch forward pre/post hooks on one model (``_before`` / ``_after``), removable together."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = [
            model.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
            model.register_forward_hook(self._after),
        ]

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        raise NotImplementedError

    def _after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        raise NotImplementedError

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class DenoiserGate(_InputOutputHooks):
    """Run the denoiser once per pass (batch B instead of 2B) once the gate has closed."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.denoiser = denoiser
        super().__init__(denoiser)

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = current_call()
        if call is None or not any(d is self.denoiser for d in call.denoisers):
            return None
        call.halved = None
        call.skip_pass = False
        call.foreign_pass = _calling_pipeline() is not call.owner
        if call.foreign_pass:
            return None  # a pipeline sharing this denoiser, called from inside this call: plain
        call.begin_pass()
        call.runs_cfg()
        full = latent_batch(args, kwargs)
        if not (call.gated and call.cfg):
            if not call.gated:
                call.ran_before_gate.add(id(self.denoiser))
            call.denoiser_batches.append(full)
            return None
        if call.sequential:
            return self._before_sequential(call, full)
        if full % 2:
            raise RuntimeError(
                f"crossgate: expected a [uncond; cond] batch after the gate but the denoiser got batch "
                f"{full}; this pipeline may call the denoiser separately per CFG branch (unsupported)."
            )
        half, second = full // 2, call.feeds_second_half
        call.denoiser_batches.append(half)
        call.halved = half
        per_sample = {k: v for k, v in kwargs.items() if k not in _SHARED_INPUTS}
        sliced_args, sliced_kwargs = map_batch(
            (args, per_sample), full, lambda t: cfg_half(t, second, call.interleaved)
        )
        sliced_kwargs.update({k: v for k, v in kwargs.items() if k in _SHARED_INPUTS})
        if call.cond_only and not second:
            # a guess-mode ControlNet ran on the cond half alone and the pipeline padded its
            # residuals with zeros for the uncond half: take them from the cond half, or the
            # control would vanish after the gate
            for key in _CONTROL_RESIDUALS:
                if key in kwargs:
                    sliced_kwargs[key] = map_batch(kwargs[key], full, lambda t: cfg_half(t, True))
        return sliced_args, sliced_kwargs

    @staticmethod
    def _before_sequential(call: CallState, full: int) -> None:
        if call.branch == "cond":
            call.denoiser_batches.append(full)
            return None
        if call.branch == "uncond" and call.cond_output is not None:
            call.skip_pass = True  # BlockSkipHook skips every block; _after returns the cond output
            return None
        raise RuntimeError(
            f"crossgate: after the gate a {'cond' if call.branch is None else call.branch!r} denoiser call "
            "arrived that crossgate cannot place; sequential CFG needs each call inside "
            "cache_context('cond') and then cache_context('uncond')."
        )

    def _after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        call = current_call()
        if call is None or not call.runs(self.denoiser):
            return None
        keep_guidance = bool(call.cfg) and call.config.guidance_after_gate > 0
        if call.sequential:
            return self._after_sequential(call, output, keep_guidance)
        half, call.halved = call.halved, None
        if half is None:
            if keep_guidance and not call.gated and call.step == call.gate - 1:
                uncond, cond = cfg_split(_first_tensor(output), call.cond_first)
                call.guidance_delta = cond - uncond
            return None
        if not keep_guidance or call.guidance_delta is None:
            return map_batch(output, half, lambda t: cfg_double(t, call.interleaved))
        shift = call.guidance_delta * (call.config.guidance_weight(call.step - call.gate) / 2)
        return _map_first(output, lambda t: cfg_join(t - shift, t + shift, call.cond_first), half)

    @staticmethod
    def _after_sequential(call: CallState, output: Any, keep_guidance: bool) -> Any:
        if call.skip_pass:
            call.skip_pass = False
            if not keep_guidance or call.guidance_delta is None:
                return call.cond_output
            shift = call.guidance_delta * call.config.guidance_weight(call.step - call.gate)
            return _map_first(call.cond_output, lambda t: t - shift)
        if not call.gated and keep_guidance and call.step == call.gate - 1:
            if call.branch == "cond":
                call.cond_output = output
            elif call.branch == "uncond" and call.cond_output is not None:
                call.guidance_delta = _first_tensor(call.cond_output) - _first_tensor(output)
                call.cond_output = None
        if call.gated and call.cfg and call.branch == "cond":
            call.cond_output = output
        return None


class ControlGate(_InputOutputHooks):
    """Run a ControlNet at the denoiser's batch after the gate: one CFG half in, residuals out twice.

    Before the gate the ControlNet runs as written and its cross-attention layers keep their outputs
    (their own :class:`CrossAttentionGateHook`). From the gate on, under CFG, it gets the same half of
    its inputs as the denoiser (``post_gate_inputs``), its cross-attention replays the cached mean,
    and its residuals are handed back for both halves of the pipeline's batch; the denoiser's gate
    slices them to that half again. A guess-mode ControlNet runs on the cond half alone (batch B) at
    every step: it runs as written, its caches are its cond outputs, and the denoiser takes its
    residuals from the cond half.
    """

    def __init__(self, control: torch.nn.Module) -> None:
        self.control = control
        super().__init__(control)

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = current_call()
        if call is None or not any(c is self.control for c in call.controls):
            return None
        call.foreign_pass = _calling_pipeline() is not call.owner
        if call.foreign_pass:
            return None
        key = id(self.control)
        if call.runs_cfg() and kwargs.get("guess_mode", False):
            call.cond_only.add(key)
        if not call.gated:
            call.ran_before_gate.add(key)
        full = latent_batch(args, kwargs)
        batches = call.control_batches.setdefault(key, [])
        if not (call.gated and call.cfg_batched(self.control)):
            batches.append(full)
            return None
        if full % 2:
            raise RuntimeError(
                f"crossgate: expected a [uncond; cond] batch for {type(self.control).__name__} after the gate "
                f"but it got batch {full}."
            )
        half, second = full // 2, call.feeds_second_half
        batches.append(half)
        call.control_halved[key] = half
        return map_batch((args, kwargs), full, lambda t: cfg_half(t, second, call.interleaved))

    def _after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        call = current_call()
        if call is None or not call.runs(self.control):
            return None
        half = call.control_halved.pop(id(self.control), None)
        if half is None:
            return None
        return map_batch(output, half, lambda t: cfg_double(t, call.interleaved))


class BlockSkipHook(_SkippingHook):
    """Sequential CFG after the gate: the uncond call's blocks compute nothing (identity).

    Its output is discarded (the denoiser returns the cond call's output instead), so each block
    hands its input hidden states straight through.
    """

    def __init__(self, denoiser: torch.nn.Module, passthrough: Callable[[tuple, dict], Any]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self._passthrough = passthrough

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = _call_for(self.denoiser)
        if call is not None and call.skip_pass:
            return self._passthrough(args, kwargs)
        return self._run_module(*args, **kwargs)


def _first_tensor(output: Any) -> torch.Tensor:
    """The prediction in a denoiser output: a tensor, ``(tensor, ...)`` or ``Output(sample=...)``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(v for v in output.values() if isinstance(v, torch.Tensor))
    return output[0]


def _map_first(output: Any, fn: Callable[[torch.Tensor], torch.Tensor], batch: int | None = None) -> Any:
    """``output`` with its prediction replaced by ``fn(prediction)``, every other batch tensor doubled."""
    first = _first_tensor(output)
    if batch is not None:
        output = map_batch(output, batch, lambda t: t if t is first else torch.cat([t, t], dim=0))
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, dict):
        key = next(k for k, v in output.items() if v is first)
        mapped = dict(output)
        mapped[key] = fn(first)
        return mapped if type(output) is dict else type(output)(**mapped)
    return type(output)([fn(first), *list(output)[1:]])


@torch.compiler.disable  # stack inspection: run eagerly, outside any compiled graph
def _calling_pipeline() -> Any:
    """The innermost diffusers pipeline on the Python stack: the one whose code called the denoiser.

    A pipeline that shares the denoiser with a gated one and is called from the gated call's
    callback runs in the same context; only the stack tells its passes apart.
    """
    from diffusers import DiffusionPipeline

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(owner, DiffusionPipeline):
            return owner
        frame = frame.f_back
    return None
