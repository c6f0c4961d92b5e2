"""The hooks that implement TGATE on one denoiser, for every pipeline that shares it.

Two sides, so that a compiled denoiser traces cleanly (no graph break, a bounded set of graphs):

* **Eager side: each model's gate** (:class:`DenoiserGate`, :class:`ControlGate`) runs around every
  pass of its model, outside any compiled region: as PyTorch forward pre/post hooks on the model, on
  the ``OptimizedModule`` of ``torch.compile(model)``, or wrapped around the compiled call of
  ``model.compile()``. It finds the running call (:func:`~crossgate.gate.current_call`, a context
  variable, and a stack walk for passes of other pipelines sharing the model), decides what the pass
  does, writes that into the model's :class:`Lane`, and after the pass moves what the hooks kept into
  the call's records (caches, counts). It holds the lane's lock for the pass, so passes of one model
  from several threads run one after another, each with its own call's lane contents. Around a
  model compiled whole, with ``compile_split_cfg``, it runs each batched-CFG pass before the gate as
  two B-row passes (the uncond rows from its entry, the cond rows as the call itself) and joins their
  outputs and kept cross-attention outputs into the 2B pass the pipeline asked for, so the graphs
  before and after the gate take one batch shape and inductor builds their kernels once.
* **Inside the model: the module hooks** (:class:`CrossAttentionGateHook`,
  :class:`SelfAttentionCacheHook`, :class:`BlockSkipHook`) read only their lane: a mode (a Python int
  dynamo guards on cheaply) and dicts of tensors. They never read the step, the gate, the prompt or
  a context variable, so the gate step, the prompt and the number of steps never cause a retrace.
  Modes: ``PASS`` (compute, keep nothing: no gated call, or another pipeline's pass), ``KEEP``
  (compute and keep the output: before the gate), ``REPLAY`` (return the cache: after the gate),
  ``SKIP`` (sequential CFG's uncond call after the gate: blocks compute nothing).

What a call keeps lives in its :class:`~crossgate.gate.CallState`, so pipelines that share a denoiser
(``from_pipe``, ``Pipeline(**pipe.components)``) and calls running in other threads or nested in a
callback never see each other's state; a lane holds tensors only for the duration of one pass.

* :class:`CrossAttentionGateHook` (a diffusers ``ModelHook`` on every cross-attention module): before
  the gate the module's own attention processor runs (LoRA, IP-Adapter, fused or custom processors
  stay in charge) and its latest output is kept; from the gate on it returns the mean of that
  output's CFG halves (the layout's mean, :mod:`crossgate.layouts`) without computing anything.
* :class:`SelfAttentionCacheHook` (a ``ModelHook``, TGATE v2 only): compute, store or reuse
  self-attention on the steps :mod:`crossgate.schedule` says, dropping a cache once no later step
  reads it.
* :class:`DenoiserGate` (PyTorch forward pre/post hooks on the denoiser, not a ``ModelHook``: it
  rewrites inputs and outputs rather than skipping the module, and PyTorch's hooks survive
  accelerate's offloading re-installing its ``forward`` wrapper after every call). From the gate on,
  under CFG, it feeds one CFG half of the batch through the denoiser and hands the pipeline the
  result for both halves (the call's layout slices and doubles), so the pipeline's own guidance
  arithmetic returns it unchanged.
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

import functools
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

import torch
from diffusers.hooks import ModelHook

from crossgate.gate import CallState, current_call
from crossgate.joint import JointKind, TextStream, text_tokens
from crossgate.schedule import Action, self_attention_action
from crossgate.tensors import latent_batch, map_batch, relative_change, zip_batch

# What the hooks inside a model do in the running pass (``Lane.mode``).
PASS, KEEP, REPLAY, SKIP = 0, 1, 2, 3

_BATCH = "batch"  # the key of a batched pass's output (both CFG halves in one tensor)
# The UNet inputs that carry a ControlNet's residuals (diffusers' UNet2DConditionModel.forward).
_CONTROL_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")
# Denoiser inputs that are positional tables, never per sample, though a dimension may happen to
# equal the batch (Allegro's rotary tables have a row per latent frame, patch row and column).
_SHARED_INPUTS = frozenset({"image_rotary_emb"})


@dataclass(eq=False)
class Lane:
    """What every hook inside one model reads during one pass; written only by the model's gate.

    ``mode`` and ``self_action`` are the values compiled code is specialised on (a handful of
    graphs; ``text_tokens`` too where a concatenated joint block reads it: it changes with the text
    length, which changes the shapes anyway). Tensors go in and out through each hook's own slots (``cache``, ``kept``), never keyed by
    the layer's name, so identical blocks trace to one graph (regional compilation).
    """

    mode: int = PASS
    self_action: Action = Action.COMPUTE
    capture: bool = False  # joint blocks: keep the text stream in this KEEP pass (the step before the gate)
    # joint blocks over one concatenated [text; image] sequence (Chroma's single-stream blocks) are not
    # told where the text ends: the gate writes the pass's text length here (a constant per prompt)
    text_tokens: int = 0
    # eager only: the call whose pass is running, the batch the gate halved it to, the pass lock
    # and its holder, and whether the pass was entered around a compiled call (``outer``: the
    # model's own hooks stand by)
    call: CallState | None = None
    halved: int | None = None
    # ``compile_split_cfg``: this pass before the gate runs as two B-row passes around a compiled
    # model; ``first`` holds the uncond pass's output and its cross-attention outputs until the cond
    # pass ends and the two are joined
    split: bool = False
    first: tuple[Any, dict[str, torch.Tensor | None]] | None = None
    entered: bool = False
    thread: int = 0
    outer: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __deepcopy__(self, memo: dict) -> Lane:
        return Lane()  # a copied model gets an idle lane of its own (the contents live for one pass)

    def clear(self) -> None:
        self.mode, self.self_action, self.call, self.halved = PASS, Action.COMPUTE, None, None
        self.capture = self.split = False
        self.first = None


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
class JointRecord:
    """What one joint-attention block keeps during one call: its text stream at the capture step."""

    latest: dict[str, TextStream] = field(default_factory=dict)  # per branch ("batch" when batched)
    frozen: dict[tuple[str, bool], TextStream] = field(default_factory=dict)  # (branch, halved)
    replays: int = 0


@dataclass
class SelfAttentionRecord:
    """What one self-attention layer keeps during one call (TGATE v2)."""

    cache: torch.Tensor | None = None
    computed_steps: set[int] = field(default_factory=set)


Compute = Callable[..., Any]  # the module's own forward, unbound: compute(module, *args, **kwargs)


class ModuleHook:
    """A hook on one module inside a model: decides, from its lane's mode alone, whether it computes.

    ``run`` stands in for the module's forward. Its slots hand tensors to and from the model's gate
    for the running pass only (``reset`` clears them after it).
    """

    def __init__(self, lane: Lane) -> None:
        self.lane = lane

    def run(self, compute: Compute, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def reset(self) -> None:
        """Drop what the pass left in the slots."""


class CrossAttentionGateHook(ModuleHook):
    """Compute (and keep the output) before the gate, replay the converged output after it."""

    def __init__(self, lane: Lane) -> None:
        super().__init__(lane)
        self.reset()

    def reset(self) -> None:
        self.cache: torch.Tensor | None = None  # in: what REPLAY returns
        self.kept: torch.Tensor | None = None  # out: what KEEP computed
        self.replayed = False

    def run(self, compute: Compute, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.lane.mode == REPLAY and self.cache is not None:
            self.replayed = True
            return self.cache
        output = compute(module, *args, **kwargs)
        if self.lane.mode == KEEP:
            self.kept = output
        return output


class SelfAttentionCacheHook(ModuleHook):
    """TGATE v2: recompute self-attention only on the schedule's steps, reuse it in between."""

    def __init__(self, lane: Lane) -> None:
        super().__init__(lane)
        self.reset()

    def reset(self) -> None:
        self.cache: torch.Tensor | None = None  # in: what REUSE returns (when its batch fits)
        self.kept: torch.Tensor | None = None  # out: what STORE computed
        self.ran = False

    def run(self, compute: Compute, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.lane.self_action is Action.REUSE and self.cache is not None:
            return self.cache
        output = compute(module, *args, **kwargs)
        self.ran = True
        if self.lane.self_action is Action.STORE:
            self.kept = output
        return output


class BlockSkipHook(ModuleHook):
    """Sequential CFG after the gate: the uncond call's blocks compute nothing (identity).

    Its output is discarded (the denoiser returns the cond call's output instead), so each block
    hands its input hidden states straight through.
    """

    def __init__(self, lane: Lane, passthrough: Callable[[tuple, dict], Any]) -> None:
        super().__init__(lane)
        self._passthrough = passthrough

    def run(self, compute: Compute, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.lane.mode == SKIP:
            return self._passthrough(args, kwargs)
        return compute(module, *args, **kwargs)


class JointBlockHook(ModuleHook):
    """On each joint block: compute before the gate (keeping its text stream on the capture step);
    after it, the image side alone against the frozen text stream; skipped under sequential CFG."""

    def __init__(self, lane: Lane, kind: JointKind) -> None:
        super().__init__(lane)
        self.kind = kind
        self.reset()

    def reset(self) -> None:
        self.cache: TextStream | None = None  # in: the frozen text stream REPLAY uses
        self.kept: TextStream | None = None  # out: what the capture step computed
        self.replayed = False

    def run(self, compute: Compute, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        named = self.kind.bind(args, kwargs)  # by name for crossgate; the block gets its own call
        if self.kind.concatenated:
            named = {**named, "text_tokens": self.lane.text_tokens}
        mode = self.lane.mode
        if mode == SKIP:
            return self.kind.passthrough(named)
        if mode == REPLAY and self.cache is not None:
            self.replayed = True
            return self.kind.image_only(module, self.cache, named)
        output = compute(module, *args, **kwargs)
        if mode == KEEP and self.lane.capture:
            # copies, once per call: a slice of the block's [text; image] output would keep the image
            # rows alive until the call ends (scripts/joint_memory.py measured it on FLUX's single blocks)
            self.kept = self.kind.text_stream(module, named, output).map(torch.clone)
        return output


# --- putting a ModuleHook on a module, and taking it off ---------------------------------------
#
# The module's class is swapped for a subclass whose ``forward`` asks the hook (tomesd's way): one
# subclass per class, shared by every instance, so compiled blocks stay identical to dynamo (one
# graph for all of them, as for the plain model) and nothing per instance is guarded on. A module
# whose instance ``forward`` another hook system already wraps (a diffusers ``HookRegistry`` cache
# applied first) gets the hook through that registry instead, so it stays inside that chain.

_HOOK_ATTR = "_crossgate_hook"
_REGISTRY_NAME = "crossgate"
_HOOKED_CLASSES: dict[type, type] = {}


def _hooked_class(base: type[torch.nn.Module]) -> type:
    cls = _HOOKED_CLASSES.get(base)
    if cls is None:
        compute = base.forward  # the function itself: dynamo inlines it (not a lookup on the class)

        def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            hook = getattr(self, _HOOK_ATTR, None)
            if hook is None:  # taken off while another wrapper still holds this bound forward
                return compute(self, *args, **kwargs)
            return hook.run(compute, self, *args, **kwargs)

        # inspect.signature(module.forward) answers with the base's parameters (cache-dit matches a
        # block's forward signature to its patterns)
        functools.update_wrapper(forward, compute)
        namespace = {"forward": forward, "__module__": base.__module__, "__qualname__": base.__qualname__}
        cls = _HOOKED_CLASSES[base] = type(base.__name__, (base,), namespace)
    _share_block_metadata(base, cls)
    return cls


def _share_block_metadata(base: type, cls: type) -> None:
    """diffusers' caches look a block's metadata up by its exact class (SeaCache, FirstBlockCache,
    MagCache applied after crossgate): the swapped-in subclass answers as its base does."""
    try:
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:  # an older diffusers without the registry: nothing to share
        return
    TransformerBlockRegistry._register()
    registry = TransformerBlockRegistry._registry
    if base in registry and cls not in registry:
        registry[cls] = registry[base]


class _RegistryHook(ModelHook):
    """A :class:`ModuleHook` inside a diffusers ``HookRegistry`` chain that was there first."""

    def __init__(self, hook: ModuleHook) -> None:
        super().__init__()
        self.hook = hook

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.hook.run(self._compute, module, *args, **kwargs)

    def _compute(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = cast(Callable[..., Any], self.fn_ref.original_forward)  # set by HookRegistry
        return forward(*args, **kwargs)


def attach(module: torch.nn.Module, hook: ModuleHook) -> None:
    """Make ``hook`` decide ``module``'s forward (one crossgate hook per module)."""
    if hooked(module):
        raise ValueError(f"crossgate: {type(module).__name__} already carries a crossgate hook.")
    if "forward" in module.__dict__:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(module).register_hook(_RegistryHook(hook), _REGISTRY_NAME)
        return
    module.__class__ = _hooked_class(type(module))
    module.__dict__[_HOOK_ATTR] = hook


def detach(module: torch.nn.Module) -> None:
    """Take crossgate's hook off ``module`` (nothing happens if it has none)."""
    if module.__dict__.pop(_HOOK_ATTR, None) is not None:
        base = type(module).__bases__[0]
        if _HOOKED_CLASSES.get(base) is type(module):
            module.__class__ = base
        return
    registry = module.__dict__.get("_diffusers_hook")
    if registry is not None and registry.get_hook(_REGISTRY_NAME) is not None:
        registry.remove_hook(_REGISTRY_NAME, recurse=False)


def hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` carries a crossgate hook."""
    registry = module.__dict__.get("_diffusers_hook")
    in_registry = registry is not None and registry.get_hook(_REGISTRY_NAME) is not None
    return _HOOK_ATTR in module.__dict__ or in_registry


class _CompiledEntry:
    """Stands in for ``model._compiled_call_impl`` (``model.compile()``): the gate runs around it, eagerly."""

    def __init__(self, gate: _ModelGate, compiled: Callable[..., Any]) -> None:
        self.gate = gate
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        entered = self.gate._enter_outer(self.compiled, args, kwargs)
        if entered is not None:
            args, kwargs = entered
        try:
            output = self.compiled(*args, **kwargs)
        except BaseException:
            self.gate._outer_after(None, args, None)
            raise
        replaced = self.gate._outer_after(None, args, output)
        return output if replaced is None else replaced


class _ModelGate:
    """The eager side of one model (a denoiser or a ControlNet): decides each pass, keeps its results.

    Its entry runs where nothing is compiled: PyTorch hooks on the model (eager models, regional
    compilation), on each ``OptimizedModule`` wrapping it, and a :class:`_CompiledEntry` for
    ``model.compile()``. The model's own hooks stand by when an outer entry has the pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lane: Lane,
        cross: dict[str, CrossAttentionGateHook],
        self_attention: dict[str, SelfAttentionCacheHook],
        joint: dict[str, JointBlockHook] | None = None,
    ) -> None:
        self.model = model
        self.lane = lane
        self.cross = cross
        self.self_attention = self_attention
        self.joint = joint if joint is not None else {}
        self._key = f"{id(model)}"  # experts share module names
        self._handles: list[torch.utils.hooks.RemovableHandle] = [
            model.register_forward_pre_hook(self._inner_before, with_kwargs=True, prepend=True),
            model.register_forward_hook(self._inner_after, always_call=True),
        ]
        self._wrappers: dict[int, list[torch.utils.hooks.RemovableHandle]] = {}

    # --- where passes enter -------------------------------------------------------------------

    def follow(self, wrapper: torch.nn.Module | None) -> None:
        """Enter passes eagerly around any compiled form of the model (call before each call's loop)."""
        if wrapper is not None and wrapper is not self.model and id(wrapper) not in self._wrappers:
            self._wrappers[id(wrapper)] = [
                wrapper.register_forward_pre_hook(self._outer_before, with_kwargs=True, prepend=True),
                wrapper.register_forward_hook(self._outer_after, always_call=True),
            ]
        compiled = getattr(self.model, "_compiled_call_impl", None)
        if compiled is not None and not isinstance(compiled, _CompiledEntry):
            self.model._compiled_call_impl = _CompiledEntry(self, compiled)

    def detach(self) -> None:
        for handle in [*self._handles, *(h for hs in self._wrappers.values() for h in hs)]:
            handle.remove()
        self._handles, self._wrappers = [], {}
        compiled = getattr(self.model, "_compiled_call_impl", None)
        if isinstance(compiled, _CompiledEntry) and compiled.gate is self:
            self.model._compiled_call_impl = compiled.compiled

    def _inner_before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # Traced (the model is compiled whole): the outer entry has the pass; without one the lane
        # stays PASS and the model runs plain. Eager inside an outer entry of this thread: stand by.
        if torch.compiler.is_compiling() or self._entered_outside():
            return None
        return self._enter(args, kwargs)

    def _inner_after(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if torch.compiler.is_compiling() or self._entered_outside():
            return None
        return self._exit(output)

    def _entered_outside(self) -> bool:
        return self.lane.outer and self.lane.thread == threading.get_ident()

    def _outer_before(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return self._enter_outer(module.forward, args, kwargs)  # the wrapper's forward skips its hooks

    def _enter_outer(self, run: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Enter a pass around a compiled model; ``run`` calls that model without entering again."""
        entered = self._enter(args, kwargs, outer=True)
        if not self.lane.split:
            return entered
        try:
            return self._run_uncond_first(run, args, kwargs)
        except BaseException:
            self._release()
            raise

    def _outer_after(self, module: Any, args: tuple, output: Any) -> Any:
        self.lane.outer = False
        return self._exit(output)

    def _enter(self, args: tuple, kwargs: dict, outer: bool = False) -> tuple[tuple, dict] | None:
        lane = self.lane
        lane.lock.acquire()
        lane.entered, lane.thread, lane.outer = True, threading.get_ident(), outer
        try:
            call = current_call()
            if call is None or not call.runs(self.model) or calling_pipeline() is not call.owner:
                return None  # no gated call, or another pipeline sharing the model: a plain pass
            lane.call = call
            return self._begin(call, args, kwargs)
        except BaseException:
            self._release()
            raise

    def _exit(self, output: Any) -> Any:
        if not self.lane.entered:
            return None
        try:
            call = self.lane.call
            if call is None or output is None:
                return None
            joined = None
            if self.lane.first is not None:
                joined = output = self._join_uncond_first(call, output)
            self._collect(call)
            replaced = self._finish(call, output)
            return joined if replaced is None else replaced
        finally:
            self._release()

    def _release(self) -> None:
        lane = self.lane
        for hook in (*self.cross.values(), *self.self_attention.values(), *self.joint.values()):
            hook.reset()
        lane.clear()
        lane.outer = lane.entered = False
        lane.lock.release()

    def _run_uncond_first(self, run: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``compile_split_cfg``: run the uncond rows now and hand back the cond rows for the call."""
        lane = self.lane
        call = cast(CallState, lane.call)
        full, layout = latent_batch(args, kwargs), call.layout
        uncond = self._rows(call, args, kwargs, full, lambda t: layout.split(t)[0])
        cond = self._rows(call, args, kwargs, full, lambda t: layout.split(t)[1])
        output = run(*uncond[0], **uncond[1])
        lane.first = (output, {name: hook.kept for name, hook in self.cross.items()})
        for hook in self.cross.values():
            hook.kept = None
        return cond

    def _join_uncond_first(self, call: CallState, output: Any) -> Any:
        """The two halves of a split pass as the one 2B pass the pipeline asked for."""
        first, kept = cast(tuple, self.lane.first)
        join = call.layout.join
        for name, hook in self.cross.items():
            uncond = kept.get(name)
            # a layer that ran in one half only kept nothing of this step
            hook.kept = None if uncond is None or hook.kept is None else join(uncond, hook.kept)
        return zip_batch(first, output, join)

    def _rows(
        self,
        call: CallState,
        args: tuple,
        kwargs: dict,
        full: int,
        pick: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[tuple, dict]:
        """The denoiser's inputs with ``pick`` applied to the rows of every per-sample input."""
        samples, second = call.adapter.sample_lists, call.adapter.batch_dim1
        per_sample = {k: v for k, v in kwargs.items() if k not in _SHARED_INPUTS and k not in second}
        picked_args, picked_kwargs = map_batch((args, per_sample), full, pick, samples)
        picked_kwargs.update({k: v for k, v in kwargs.items() if k in _SHARED_INPUTS})
        for key in second:  # batch second (HiDream's LLaMA layers first)
            if isinstance(kwargs.get(key), torch.Tensor):
                picked_kwargs[key] = pick(kwargs[key].transpose(0, 1)).transpose(0, 1)
        return picked_args, picked_kwargs

    # --- what a pass does ---------------------------------------------------------------------

    def _begin(self, call: CallState, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        raise NotImplementedError

    def _finish(self, call: CallState, output: Any) -> Any:
        raise NotImplementedError

    def _arm(self, call: CallState, mode: int, batch: int) -> None:
        """Set the lane for a pass of ``batch`` rows: ``KEEP`` before the gate, ``REPLAY`` after it."""
        lane = self.lane
        if mode == REPLAY and id(self.model) not in call.ran_before_gate:
            mode = KEEP  # an expert first running after the gate: nothing was measured, so compute
        if mode == REPLAY:
            for name in self.cross:
                record = self.record(call, name)
                if record.cache is None:
                    record.cache = self._freeze(call, name, record)
                self.cross[name].cache = record.cache
            if call.config.text_stream != "live":
                for name, hook in self.joint.items():
                    hook.cache = self._joint_frozen(call, name)
        elif mode == KEEP and self.joint and call.config.text_stream != "live":
            lane.capture = call.gate is not None and call.step == call.gate - 1
        lane.mode = mode
        if self.self_attention and call.config.caches_self_attention:
            self._arm_self(call, batch)

    def _arm_self(self, call: CallState, batch: int) -> None:
        action = self._self_action(call, call.step)
        if action is Action.REUSE:
            for name, hook in self.self_attention.items():
                cache = self._self_record(call, name).cache
                if cache is not None and cache.shape[0] == batch:
                    hook.cache = cache
        elif action is Action.STORE and not self._self_reused_at(call, call.step + 1):
            action = Action.COMPUTE  # nobody would read the store
        self.lane.self_action = action

    def _collect(self, call: CallState) -> None:
        """Move what the hooks kept in this pass into the call's records."""
        step = call.step
        for name, hook in self.cross.items():
            if hook.kept is not None:
                self._keep(call, name, self.record(call, name), hook.kept)
            if hook.replayed:
                self.record(call, name).replays += 1
        for name, joint_hook in self.joint.items():
            if joint_hook.kept is not None:
                branch = (call.branch or "cond") if call.layout.sequential else _BATCH
                self._joint_record(call, name).latest[branch] = joint_hook.kept
            if joint_hook.replayed:
                self._joint_record(call, name).replays += 1
        at_gate = step == call.gate - 1
        for name, sa_hook in self.self_attention.items():
            if sa_hook.ran:
                self._self_record(call, name).computed_steps.add(step)
            if sa_hook.kept is not None:
                mean = at_gate and call.cfg_batched(self.model)
                self._self_record(call, name).cache = call.layout.mean(sa_hook.kept) if mean else sa_hook.kept

    # --- cross-attention records (eager) --------------------------------------------------------

    def record(self, call: CallState, name: str) -> CrossAttentionRecord:
        """The record of ``name`` for the running pass: one per layer, or per pass slot (``per_pass``)."""
        key = f"cross:{self._key}:{name}"
        if call.per_pass:
            slots: dict[int, CrossAttentionRecord] = call.records.setdefault(key, {})
            return slots.setdefault(call.slot, CrossAttentionRecord())
        record = call.records.get(key)
        if record is None:
            record = call.records[key] = CrossAttentionRecord()
        return record

    def _records(self, call: CallState, name: str) -> list[CrossAttentionRecord]:
        key = f"cross:{self._key}:{name}"
        if call.per_pass:
            return list(call.records.get(key, {}).values())
        record = call.records.get(key)
        return [record] if record is not None else []

    def changes(self, call: CallState) -> list[float]:
        """The relative changes its cross-attention layers measured at ``call``'s current step."""
        found = []
        for name in self.cross:
            for record in self._records(call, name):
                if record.change is not None and record.change[0] == call.step:
                    found.append(record.change[1])
        return found

    def stats(self, call: CallState, name: str) -> tuple[int, int]:
        """(steps computed, passes replayed) of layer ``name`` in ``call``, over all pass slots."""
        records = self._records(call, name)
        computed: set[int] = set().union(*(record.computed_steps for record in records))
        return len(computed), sum(record.replays for record in records)

    def _keep(self, call: CallState, name: str, record: CrossAttentionRecord, output: torch.Tensor) -> None:
        step = call.step
        record.computed_steps.add(step)
        if call.layout.sequential:
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
            record.change = (step, relative_change(self._view(call, output), self._view(call, previous)))
        record.latest[_BATCH], record.latest_step[_BATCH] = output, step

    def _view(self, call: CallState, output: torch.Tensor) -> torch.Tensor:
        return call.layout.mean(output) if call.cfg_batched(self.model) else output

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

    def _freeze(self, call: CallState, name: str, record: CrossAttentionRecord) -> torch.Tensor:
        if not record.latest:
            slot = f" in pass {call.slot} of a step" if call.per_pass else ""
            raise RuntimeError(
                f"crossgate: cross-attention layer {name!r} was never computed{slot} before the gate, so "
                "there is no output to replay. Something skipped it in every step before the gate"
                + (", or the pipeline runs more denoiser passes per step after the gate." if slot else ".")
            )
        if call.layout.sequential:
            if call.cfg and not self._complete(call, record, max(record.latest_step.values())):
                raise RuntimeError(
                    f"crossgate: cross-attention layer {name!r} has no cond and uncond output from the "
                    "same step before the gate; the pipeline did not run both named CFG branches."
                )
            cache = self._sequential_mean(call, record)
        else:
            cache = self._view(call, record.latest[_BATCH])
        record.latest.clear()
        return cache

    # --- joint-attention records (eager) ----------------------------------------------------------

    def _joint_record(self, call: CallState, name: str) -> JointRecord:
        key = f"joint:{self._key}:{name}"
        record = call.records.get(key)
        if record is None:
            record = call.records[key] = JointRecord()
        return record

    def joint_replays(self, call: CallState, name: str) -> int:
        record = call.records.get(f"joint:{self._key}:{name}")
        return 0 if record is None else record.replays

    def _joint_frozen(self, call: CallState, name: str) -> TextStream:
        """The text stream block ``name`` replays in this pass (see :mod:`crossgate.joint`)."""
        record = self._joint_record(call, name)
        halved = self.lane.halved is not None
        branch = (call.branch or "cond") if call.layout.sequential else _BATCH
        found = record.frozen.get((branch, halved))
        if found is not None:
            return found
        mean = call.config.text_stream == "frozen_mean" and bool(call.cfg)
        latest, layout = record.latest, call.layout
        frozen: TextStream | None
        if call.layout.sequential:
            if mean and "cond" in latest and "uncond" in latest:
                frozen = latest["cond"].mean_with(latest["uncond"])
            else:
                frozen = latest.get(branch) or latest.get("cond")
        else:
            frozen = latest.get(_BATCH)
            if frozen is not None and call.cfg_batched(self.model):
                if halved and frozen.key.shape[0] == self.lane.halved:
                    pass  # captured in a pass the pipeline ran without CFG (Z-Image's cfg_truncation)
                elif halved:  # a copy of the half: a view would keep the other branch's rows alive
                    frozen = frozen.map(layout.mean if mean else (lambda t: layout.half(t).clone()))
                elif mean:
                    frozen = frozen.map(lambda t: layout.double(layout.mean(t)))
        if frozen is None:
            raise RuntimeError(
                f"crossgate: joint block {name!r} kept no text stream at the step before the gate, so there "
                "is nothing to freeze; something skipped it at that step."
            )
        record.frozen[(branch, halved)] = frozen
        if not call.config.keep_cfg:  # one frozen stream serves every later pass: free the capture
            record.latest.clear()
        return frozen

    # --- self-attention records (TGATE v2, eager) -----------------------------------------------

    def _self_record(self, call: CallState, name: str) -> SelfAttentionRecord:
        key = f"self:{self._key}:{name}"
        record = call.records.get(key)
        if record is None:
            record = call.records[key] = SelfAttentionRecord()
        return record

    def self_stats(self, call: CallState, name: str) -> list[int]:
        """The steps self-attention layer ``name`` computed in ``call``."""
        return sorted(self._self_record(call, name).computed_steps)

    def drop_unread(self, call: CallState) -> None:
        """At a step boundary: free the self-attention caches unless the step now starting reuses them."""
        if self._self_reused_at(call, call.step):
            return
        for name in self.self_attention:
            record = call.records.get(f"self:{self._key}:{name}")
            if record is not None:
                record.cache = None

    @staticmethod
    def _self_action(call: CallState, step: int) -> Action:
        config = call.config
        return self_attention_action(
            step,
            call.gate,
            config.self_attention_interval,
            config.self_attention_interval_after,
            config.self_attention_warm_up,
        )

    def _self_reused_at(self, call: CallState, step: int) -> bool:
        return step < call.num_steps and self._self_action(call, step) is Action.REUSE


class DenoiserGate(_ModelGate):
    """Run the denoiser once per pass (batch B instead of 2B) once the gate has closed."""

    def _begin(self, call: CallState, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("skip_layers") is not None:
            # SD3's skip-layer guidance: an extra pass on the cond batch with some blocks skipped. It
            # runs plain (text stream computed) and is not a CFG branch the gate could halve.
            self.lane.call = None
            return None
        call.begin_pass()
        self.lane.text_tokens = text_tokens(self.model, args, kwargs)
        if call.layout.sequential:  # unnamed calls: the guider's, or the call's place in the step
            branch = call.adapter.unnamed_branch(call.owner, self.model, call.slot)
            if branch is not None:
                call.branch = branch
        if not call.runs_cfg() and call.layout.sequential and call.branch == "uncond":
            call.cfg = True  # a pipeline that names an uncond call runs CFG (FLUX's true CFG has no flag)
        full = latent_batch(args, kwargs)
        if not call.gated:
            call.ran_before_gate.add(id(self.model))
            call.denoiser_batches.append(full)
            self._arm(call, KEEP, full)
            self.lane.split = self._splits(call, full)
            return None
        if not call.cfg:
            call.denoiser_batches.append(full)
            self._arm(call, REPLAY, full)
            return None
        if call.config.keep_cfg:  # joint families: both branches run, each with its frozen text stream
            call.denoiser_batches.append(full)
            self._arm(call, REPLAY, full)
            return None
        if call.layout.sequential:
            self._begin_sequential(call, full)
            return None
        samples = call.adapter.sample_lists
        if samples and call.denoiser_batches and 2 * full == call.denoiser_batches[0]:
            # the pipeline itself left CFG out of this pass (Z-Image's `cfg_truncation`): its batch
            # is the fed half already; it replays that half's frozen stream and keeps its output
            call.denoiser_batches.append(full)
            self.lane.halved = full
            self._arm(call, REPLAY, full)
            self.lane.halved = None
            return None
        if full % 2:
            raise RuntimeError(
                f"crossgate: expected a [uncond; cond] batch after the gate but the denoiser got batch "
                f"{full}; this pipeline may call the denoiser separately per CFG branch (unsupported)."
            )
        half, layout = full // 2, call.layout
        call.denoiser_batches.append(half)
        self.lane.halved = half
        sliced_args, sliced_kwargs = self._rows(call, args, kwargs, full, layout.half)
        self.lane.text_tokens = text_tokens(self.model, sliced_args, sliced_kwargs)  # Z-Image's: the half's
        if call.cond_only and not layout.feeds_cond:
            # a guess-mode ControlNet ran on the cond half alone and the pipeline padded its
            # residuals with zeros for the uncond half: take them from the cond half, or the
            # control would vanish after the gate
            for key in _CONTROL_RESIDUALS:
                if key in kwargs:
                    sliced_kwargs[key] = map_batch(kwargs[key], full, layout.cond)
        self._arm(call, REPLAY, half)
        return sliced_args, sliced_kwargs

    def _splits(self, call: CallState, full: int) -> bool:
        """Whether this pass before the gate runs as two B-row passes (``compile_split_cfg``): only
        around a model compiled whole, under batched CFG, in a call whose gate closes."""
        return (
            self.lane.outer
            and call.config.compile_split_cfg
            and call.cfg_batched(self.model)
            and not self.joint
            and full % 2 == 0
            and call.gate < call.num_steps
        )

    def _begin_sequential(self, call: CallState, full: int) -> None:
        if call.branch == "cond":
            call.denoiser_batches.append(full)
            self._arm(call, REPLAY, full)
            return None
        if call.branch == "uncond" and call.cond_output is not None:
            self.lane.mode = SKIP  # every block is skipped; _finish returns the cond output
            return None
        raise RuntimeError(
            f"crossgate: after the gate a {'cond' if call.branch is None else call.branch!r} denoiser call "
            "arrived that crossgate cannot place; sequential CFG needs each call inside "
            "cache_context('cond') and then cache_context('uncond')."
        )

    def _finish(self, call: CallState, output: Any) -> Any:
        keep_guidance = bool(call.cfg) and call.config.guidance_after_gate > 0
        if call.layout.sequential:
            return self._finish_sequential(call, output, keep_guidance)
        half, layout = self.lane.halved, call.layout
        if half is None:
            if keep_guidance and not call.gated and call.step == call.gate - 1:
                uncond, cond = layout.split(_first_tensor(output))
                call.guidance_delta = cond - uncond
            return None
        if not keep_guidance or call.guidance_delta is None:
            return map_batch(output, half, layout.double, call.adapter.sample_lists)
        shift = call.guidance_delta * (call.config.guidance_weight(call.step - call.gate) / 2)
        return _map_first(output, lambda t: layout.join(t - shift, t + shift), half, layout.double)

    def _finish_sequential(self, call: CallState, output: Any, keep_guidance: bool) -> Any:
        if self.lane.mode == SKIP:
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


class ControlGate(_ModelGate):
    """Run a ControlNet at the denoiser's batch after the gate: one CFG half in, residuals out twice.

    Before the gate the ControlNet runs as written and its cross-attention layers keep their outputs.
    From the gate on, under CFG, it gets the same half of its inputs as the denoiser
    (``post_gate_inputs``), its cross-attention replays the cached mean, and its residuals are handed
    back for both halves of the pipeline's batch; the denoiser's gate slices them to that half again.
    A guess-mode ControlNet runs on the cond half alone (batch B) at every step: it runs as written,
    its caches are its cond outputs, and the denoiser takes its residuals from the cond half.
    """

    def _begin(self, call: CallState, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        key = id(self.model)
        if call.runs_cfg() and kwargs.get("guess_mode", False):
            call.cond_only.add(key)
        full = latent_batch(args, kwargs)
        batches = call.control_batches.setdefault(key, [])
        if not call.gated:
            call.ran_before_gate.add(key)
            batches.append(full)
            self._arm(call, KEEP, full)
            return None
        if not call.cfg_batched(self.model):
            batches.append(full)
            self._arm(call, REPLAY, full)
            return None
        if full % 2:
            raise RuntimeError(
                f"crossgate: expected a [uncond; cond] batch for {type(self.model).__name__} after the gate "
                f"but it got batch {full}."
            )
        half = full // 2
        batches.append(half)
        self.lane.halved = half
        self._arm(call, REPLAY, half)
        return map_batch((args, kwargs), full, call.layout.half)

    def _finish(self, call: CallState, output: Any) -> Any:
        half = self.lane.halved
        return None if half is None else map_batch(output, half, call.layout.double)


def _first_tensor(output: Any) -> torch.Tensor:
    """The prediction in a denoiser output: a tensor, ``(tensor, ...)`` or ``Output(sample=...)``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(v for v in output.values() if isinstance(v, torch.Tensor))
    return output[0]


def _map_first(
    output: Any,
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int | None = None,
    double: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Any:
    """``output`` with its prediction replaced by ``fn(prediction)``, every other ``batch`` tensor doubled."""
    first = _first_tensor(output)
    if batch is not None and double is not None:
        output = map_batch(output, batch, lambda t: t if t is first else double(t))
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, dict):
        key = next(k for k, v in output.items() if v is first)
        mapped = dict(output)
        mapped[key] = fn(first)
        return mapped if type(output) is dict else type(output)(**mapped)
    return type(output)([fn(first), *list(output)[1:]])


def calling_pipeline() -> Any:
    """The innermost diffusers pipeline (classic or modular) on the Python stack: the one whose code
    called the model.

    A pipeline that shares the denoiser with a gated one and is called from the gated call's
    callback runs in the same context; only the stack tells its passes apart. Runs eagerly, in the
    model's gate, never inside a compiled region.
    """
    from diffusers import DiffusionPipeline, ModularPipeline

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(owner, (DiffusionPipeline, ModularPipeline)):
            return owner
        frame = frame.f_back
    return None
