"""Apply TGATE to a diffusers pipeline instance, and take it off again.

The pipeline's own ``__call__`` keeps running. crossgate learns where a call's denoising loop starts,
advances and ends from the pipeline's own progress bar (every diffusers pipeline wraps its loop in
``with self.progress_bar(total=...)`` and calls ``update()`` once per completed step, which already
counts a second-order scheduler's two denoiser calls as one step). The progress bar is replaced on
this instance only, never on its class.

Two objects, two lifetimes:

* a ``_Session`` per pipeline: its configuration, the instance patches, the last call's stats;
* an ``_Installation`` per denoiser: the hooks on its modules, shared by every session whose pipeline
  uses that denoiser and removed when the last of them is removed. The hooks hold no call data;
  each call's data lives in its :class:`~crossgate.gate.CallState`, made when its loop starts.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from crossgate.adapters import (
    ModelAdapter,
    UnsupportedPipelineError,
    cross_attention_modules,
    resolve_adapter,
    self_attention_modules,
)
from crossgate.adapters.modular import check_guiders
from crossgate.config import ConfigError, TGateConfig, coerce_config
from crossgate.gate import CallState, CallStats, current_call, enter_call, gate_policy, leave_call
from crossgate.hooks import (
    BlockSkipHook,
    ControlGate,
    CrossAttentionGateHook,
    DenoiserGate,
    JointBlockHook,
    Lane,
    ModuleHook,
    SelfAttentionCacheHook,
    attach,
    calling_pipeline,
    detach,
)
from crossgate.joint import joint_blocks
from crossgate.layouts import layout_for

_SESSION_ATTR = "_crossgate_session"
_INSTALLATION_ATTR = "_crossgate_installation"
# Methods crossgate shadows on the pipeline instance (never on its class); remove() deletes them.
_INSTANCE_PATCHES = ("progress_bar", "encode_prompt")


@dataclass(frozen=True)
class _Part:
    """A model the pipeline's loop runs that crossgate hooks: a denoiser (or expert), or a ControlNet.

    ``module`` is the model itself; ``wrapper`` the ``OptimizedModule`` the pipeline holds instead when
    the user assigned ``torch.compile(model)`` back (its passes are entered eagerly there).
    """

    path: str  # its attribute path in the pipeline: "unet", "transformer_2", "controlnet.nets.0"
    module: torch.nn.Module
    control: bool = False
    wrapper: torch.nn.Module | None = field(default=None, compare=False)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``torch.compile(model)``'s ``OptimizedModule`` (the model itself otherwise)."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _parts(adapter: ModelAdapter, pipe: Any) -> list[_Part]:
    found = [(path, m, False) for path, m in adapter.denoisers(pipe)]
    found += [(path, m, True) for path, m in adapter.controls(pipe)]
    return [
        _Part(path, _unwrapped(m), control, wrapper=m if _unwrapped(m) is not m else None)
        for path, m, control in found
    ]


@dataclass
class _Installation:
    """The hooks crossgate put on one denoiser or ControlNet, and the sessions that use them."""

    model: torch.nn.Module  # the hooked denoiser, or a ControlNet when ``control``
    control: bool = False
    cross_attention: dict[str, CrossAttentionGateHook] = field(default_factory=dict)
    self_attention: dict[str, SelfAttentionCacheHook] = field(default_factory=dict)
    joint: dict[str, JointBlockHook] = field(default_factory=dict)
    lane: Lane = field(default_factory=Lane)  # what the hooks inside the model read during a pass
    gate: DenoiserGate | ControlGate | None = None
    users: list[_Session] = field(default_factory=list)
    _hooked: list[torch.nn.Module] = field(default_factory=list)
    _self_modules: list[torch.nn.Module] = field(default_factory=list)

    @classmethod
    def acquire(cls, session: _Session, part: _Part) -> _Installation:
        """``part``'s installation with ``session`` among its users (hooking it if needed)."""
        installation = part.module.__dict__.get(_INSTALLATION_ATTR)
        fresh = installation is None
        if installation is None:
            installation = cls(part.module, control=part.control)
        try:
            if fresh:
                installation._hook(session.adapter)
            else:
                installation.follow_branches(session.adapter)
            installation.users.append(session)
            installation.sync()
        except BaseException:
            if session in installation.users:
                installation.users.remove(session)
            if fresh:
                installation._unhook()
            raise
        part.module.__dict__[_INSTALLATION_ATTR] = installation
        return installation

    def release(self, session: _Session) -> None:
        """Drop ``session``; unhook the model when no session uses it any more."""
        if session in self.users:
            self.users.remove(session)
        if self.users:
            self.sync()
            return
        self._unhook()
        self.model.__dict__.pop(_INSTALLATION_ATTR, None)

    def sync(self) -> None:
        """Self-attention hooks exist exactly while some user caches self-attention (TGATE v2).

        Only on denoisers: a ControlNet's self-attention keeps computing (at batch B after the gate).
        """
        needed = not self.control and any(user.config.caches_self_attention for user in self.users)
        if needed and not self.self_attention:
            for name, module in self_attention_modules(self.model):
                hook = SelfAttentionCacheHook(self.lane)
                self._register(module, hook)
                self.self_attention[name] = hook
                self._self_modules.append(module)
        elif not needed and self.self_attention:
            for module in self._self_modules:
                detach(module)
                self._hooked.remove(module)
            self._self_modules.clear()
            self.self_attention.clear()

    def _hook(self, adapter: ModelAdapter) -> None:
        denoiser, lane = self.model, self.lane
        for name, module in cross_attention_modules(denoiser):
            hook = CrossAttentionGateHook(lane)
            self._register(module, hook)
            self.cross_attention[name] = hook
        if adapter.joint and not self.control:
            _check_joint_processors(denoiser)
            for name, block, block_kind in joint_blocks(denoiser):
                joint_hook = JointBlockHook(lane, block_kind)
                self._register(block, joint_hook)
                self.joint[name] = joint_hook
        kind = ControlGate if self.control else DenoiserGate
        self.gate = kind(denoiser, lane, self.cross_attention, self.self_attention, self.joint)
        self.follow_branches(adapter)

    def follow_branches(self, adapter: ModelAdapter) -> None:
        """Per-branch CFG: name the calls and skip the uncond one after the gate.

        On first hooking, and again when a session of another layout joins (a modular pipeline built
        from a classic one's components shares its denoiser).
        """
        denoiser = self.model
        if self.control or adapter.cfg_layout != "sequential" or "cache_context" in denoiser.__dict__:
            return
        if not adapter.joint:  # the joint hooks skip the uncond call themselves
            for block, passthrough in adapter.blocks(denoiser):
                self._register(block, BlockSkipHook(self.lane, passthrough))
        denoiser.__dict__["cache_context"] = _branch_context_for(denoiser)

    def changes(self, call: CallState) -> list[float]:
        """The relative changes its cross-attention layers measured at ``call``'s current step."""
        return self.gate.changes(call) if self.gate is not None else []

    def _register(self, module: torch.nn.Module, hook: ModuleHook) -> None:
        attach(module, hook)
        self._hooked.append(module)

    def _unhook(self) -> None:
        self.model.__dict__.pop("cache_context", None)
        if self.gate is not None:
            self.gate.detach()
            self.gate = None
        for module in reversed(self._hooked):
            detach(module)
        self._hooked.clear()
        self._self_modules.clear()
        self.cross_attention.clear()
        self.self_attention.clear()
        self.joint.clear()


@dataclass(eq=False)
class _Session:
    """Everything crossgate attached to one pipeline, so that ``remove`` can undo all of it."""

    config: TGateConfig
    adapter: ModelAdapter
    parts: list[_Part]
    installations: list[_Installation] = field(default_factory=list)
    last_call: CallStats | None = None
    prompt_cfg: bool | None = None

    @property
    def post_gate_inputs(self) -> str:
        return self.config.post_gate_inputs or self.adapter.post_gate_inputs

    def install(self) -> None:
        """Hook every denoiser and ControlNet of the pipeline (rolling back if one fails)."""
        try:
            for part in self.parts:
                self.installations.append(_Installation.acquire(self, part))
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        for installation in self.installations:
            installation.release(self)
        self.installations = []

    def sync(self) -> None:
        for installation in self.installations:
            installation.sync()

    def begin_loop(self, pipe: Any, num_steps: int) -> CallState:
        _check_diffusers_caches(pipe, self.adapter)  # a cache enabled after apply()
        check_guiders(pipe, self.adapter)  # a guider swapped after apply()
        if self.adapter.joint:  # a processor swapped after apply() (an IP-Adapter loaded)
            _check_joint_processors(self.adapter.denoiser(pipe))
        parts = _parts(self.adapter, pipe)
        if [(p.path, p.module) for p in parts] != [(p.path, p.module) for p in self.parts]:
            self._rehook(pipe, parts)
        for part, installation in zip(parts, self.installations):
            if installation.gate is not None:
                installation.gate.follow(part.wrapper)  # compiled since apply(): enter eagerly around it
        return CallState(
            owner=pipe,
            adapter=self.adapter,
            layout=layout_for(self.adapter, self.post_gate_inputs),
            denoisers=tuple(p.module for p in self.parts if not p.control),
            controls=tuple(p.module for p in self.parts if p.control),
            config=self.config,
            policy=gate_policy(self.config, num_steps),
            num_steps=num_steps,
            cfg_probe=lambda: self.adapter.cfg_active(pipe, self.prompt_cfg),
        )

    def end_step(self, call: CallState, steps: int = 1) -> None:
        for _ in range(steps):
            change = None
            if call.policy.watches_convergence:
                # the denoisers' layers only: the auto rule's tolerance is calibrated on them
                changes = [c for inst in self.installations if not inst.control for c in inst.changes(call)]
                change = sum(changes) / len(changes) if changes else None
            call.complete_step(change)
        for installation in self.installations:
            if installation.gate is not None and installation.self_attention:
                installation.gate.drop_unread(call)

    def end_loop(self, call: CallState) -> None:
        """Keep what the call did (its caches go with ``call``)."""
        computed: dict[str, int] = {}
        replays: dict[str, int] = {}
        self_computed: dict[str, list[int]] = {}
        text_replays: dict[str, int] = {}
        for index, (part, installation) in enumerate(zip(self.parts, self.installations)):
            prefix = "" if index == 0 else f"{part.path}."
            gate = installation.gate
            if gate is None:
                continue
            for name in installation.cross_attention:
                computed[prefix + name], replays[prefix + name] = gate.stats(call, name)
            for name in installation.joint:
                text_replays[prefix + name] = gate.joint_replays(call, name)
            if call.config.caches_self_attention:
                for name in installation.self_attention:
                    self_computed[prefix + name] = gate.self_stats(call, name)
        self.last_call = CallStats(
            num_steps=call.num_steps,
            gate=call.gate,
            cfg=call.cfg,
            denoiser_batches=list(call.denoiser_batches),
            cross_attention_computed_steps=computed,
            cross_attention_replays=replays,
            text_stream_replays=text_replays,
            self_attention_computed_steps=self_computed,
            convergence=list(call.convergence),
            post_gate_inputs=call.post_gate_inputs,
            control_batches={
                p.path: list(call.control_batches.get(id(p.module), [])) for p in self.parts if p.control
            },
        )

    def _rehook(self, pipe: Any, parts: list[_Part]) -> None:
        """A denoiser or ControlNet was replaced after ``apply``: move the hooks to the new ones."""
        try:
            resolve_adapter(pipe)  # the new denoiser must be gateable too
        except UnsupportedPipelineError as error:
            raise UnsupportedPipelineError(
                f"crossgate: {type(pipe).__name__}.{self.adapter.denoiser_attr} was replaced after apply() "
                f"and the new one cannot be gated ({error}); restore it or call crossgate.remove(pipe)."
            ) from None
        old_parts, old = self.parts, self.installations
        self.installations, self.parts = [], parts
        try:
            self.install()
        except BaseException:
            self.installations, self.parts = old, old_parts
            raise
        for installation in old:
            installation.release(self)


def apply(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> Any:
    """Enable TGATE on ``pipe`` in place and return it.

    ``config`` defaults to :class:`TGateConfig()` (gate at 0.4 of the steps); keyword ``overrides``
    replace its fields (``apply(pipe, gate_step=10)``). Applying again replaces the configuration
    (the same config twice is a no-op). Pipelines that share a denoiser each carry their own
    configuration. Nothing is changed on the pipeline if validation fails.
    """
    config = check(pipe, config, **overrides)
    session = _session(pipe)
    if session is not None:
        if session.config != config:
            previous, session.config = session.config, config
            try:
                session.sync()
            except BaseException:
                session.config = previous
                raise
        return pipe
    adapter = resolve_adapter(pipe)
    session = _Session(config=config, adapter=adapter, parts=_parts(adapter, pipe))
    try:
        session.install()
        if adapter.modular:
            _follow_loop_blocks(pipe, session)
        else:
            pipe.progress_bar = _progress_bar_for(pipe, session)
        if callable(getattr(type(pipe), "encode_prompt", None)):
            pipe.encode_prompt = _encode_prompt_for(pipe, session)
        setattr(pipe, _SESSION_ATTR, session)
    except BaseException:
        session.uninstall()
        _unfollow_loop_blocks(pipe, session)
        for name in _INSTANCE_PATCHES:
            pipe.__dict__.pop(name, None)
        raise
    return pipe


def remove(pipe: Any) -> Any:
    """Take TGATE off ``pipe``; calling it on a pipeline without TGATE does nothing.

    Other pipelines sharing the denoiser keep their own TGATE.
    """
    session = _session(pipe)
    if session is None:
        return pipe
    session.uninstall()
    _unfollow_loop_blocks(pipe, session)
    for name in _INSTANCE_PATCHES:
        pipe.__dict__.pop(name, None)
    delattr(pipe, _SESSION_ATTR)
    return pipe


@contextlib.contextmanager
def enabled(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> Iterator[Any]:
    """``with crossgate.enabled(pipe, gate_step=0.4): pipe(...)``: TGATE as configured inside the block.

    After the block the pipeline is as it was before: plain, or applied with its previous config.
    """
    session = _session(pipe)
    previous = session.config if session is not None else None
    apply(pipe, config, **overrides)
    try:
        yield pipe
    finally:
        if previous is None:
            remove(pipe)
        else:
            apply(pipe, previous)


def check(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> TGateConfig:
    """Validate ``config`` (with ``overrides``) against ``pipe`` without changing anything; return it.

    Raises the same :class:`~crossgate.ConfigError` / :class:`~crossgate.UnsupportedPipelineError`
    that :func:`apply` would, so a CLI or a service can refuse bad input before doing any work.
    """
    config = coerce_config(config, overrides)
    adapter = resolve_adapter(pipe)
    _check_joint(type(pipe).__name__, adapter, config)
    if adapter.cfg_layout == "sequential" and config.post_gate_inputs == "uncond":
        raise ConfigError(
            f"post_gate_inputs='uncond' does not apply to {type(pipe).__name__}: it runs CFG as one "
            "denoiser call per branch, and after the gate the cond call runs while the uncond call is "
            "skipped. Leave post_gate_inputs=None (or 'cond')."
        )
    if adapter.cfg_layout == "sequential" and config.compile_split_cfg:
        raise ConfigError(
            f"compile_split_cfg changes nothing for {type(pipe).__name__}: it already runs CFG as one "
            "denoiser call per branch; leave compile_split_cfg=False."
        )
    if adapter.cfg_layout == "sequential" and config.caches_self_attention:
        raise ConfigError(
            f"TGATE v2's self-attention caching is not supported for {type(pipe).__name__}, which runs "
            "CFG as two denoiser calls per step (its caches would mix the branches); leave "
            "self_attention_interval=None and self_attention_interval_after=1."
        )
    if adapter.per_pass_caches:
        _check_per_pass(type(pipe).__name__, config)
    _check_diffusers_caches(pipe, adapter)
    check_guiders(pipe, adapter)
    return config


def _check_joint_processors(denoiser: torch.nn.Module) -> None:
    """Refuse joint blocks whose attention processor crossgate does not know (before anything runs)."""
    for name, block, kind in joint_blocks(denoiser):
        reason = kind.check(block)
        if reason is not None:
            raise UnsupportedPipelineError(f"crossgate: {name}: {reason}")


def _check_joint(name: str, adapter: ModelAdapter, config: TGateConfig) -> None:
    """Options that exist for joint-attention families only, and what those do not support yet."""
    if not adapter.joint:
        if config.sets_joint_options:
            raise ConfigError(
                f"text_stream and keep_cfg apply to joint-attention pipelines (SD3, FLUX, Qwen-Image, HunyuanVideo); {name} gates "
                "cross-attention. Leave text_stream='frozen' and keep_cfg=False."
            )
        return
    if config.compile_split_cfg:
        raise ConfigError(
            f"compile_split_cfg is not available for {name} (joint attention): it splits the passes of "
            "cross-attention pipelines with batched CFG (UNet, PixArt); leave compile_split_cfg=False."
        )
    if config.gate_step == "auto":
        raise ConfigError(
            f"gate_step='auto' is calibrated on cross-attention and not available for {name} (joint "
            "attention); give a step or a fraction, e.g. gate_step=0.4."
        )
    if config.caches_self_attention:
        raise ConfigError(
            f"TGATE v2's self-attention caching is not available for {name} (joint attention: text and "
            "image share one attention); leave self_attention_interval=None."
        )
    if config.text_stream == "frozen_mean" and not adapter.branch_texts_aligned:
        raise ConfigError(
            f"text_stream='frozen_mean' averages the two CFG branches' text streams token by token, but "
            f"{name} encodes the prompt and the negative prompt separately, to lengths of their own; "
            "use text_stream='frozen' (the prompt's) or keep_cfg=True (each branch its own)."
        )
    if config.guidance_after_gate > 0 and adapter.sample_lists:
        raise ConfigError(
            f"guidance_after_gate is not available for {name}: its transformer returns one tensor per "
            "sample (a list), which the kept guidance does not follow; leave guidance_after_gate=0."
        )


# diffusers caches (their HookRegistry hook names) that keep tensors shaped by the denoiser's batch
# from one step to the next: after the gate a batched-CFG pipeline's batch halves, and what they kept
# no longer fits (PAB raises a shape error, MagCache silently drops its residual). Per-branch CFG
# (Wan) keeps the batch, so they compose there; TextKVCache keeps nothing of the batch's shape
# that the gated passes read (cross-attention is replayed) and composes everywhere.
_BATCH_STATEFUL_CACHES = (
    ("fbc_", "FirstBlockCache"),
    ("mag_cache_", "MagCache"),
    ("pyramid_attention_broadcast", "PyramidAttentionBroadcast"),
    ("faster_cache_", "FasterCache"),
    ("sea_cache_", "SeaCache"),
    ("taylorseer_cache", "TaylorSeerCache"),
)


def _check_diffusers_caches(pipe: Any, adapter: ModelAdapter) -> None:
    """Refuse a diffusers cache whose kept state cannot follow the batch halving at the gate, and,
    on joint-attention families, any block cache (diffusers' or cache-dit's)."""
    if adapter.joint:
        _check_joint_caches(pipe, adapter)
    if adapter.cfg_layout == "sequential":
        return
    for part in _parts(adapter, pipe):
        cache = _block_cache(part.module)
        if cache is not None:
            raise UnsupportedPipelineError(
                f"crossgate cannot gate {type(pipe).__name__} with diffusers' {cache} on its "
                f"{part.path}: {type(pipe).__name__} runs CFG as one batch, which halves after "
                f"the gate, and {cache} keeps tensors of the full batch from step to step (they "
                "would no longer fit). Disable the cache, or use a per-branch CFG pipeline (Wan) "
                "where both compose."
            )


def _block_cache(model: torch.nn.Module) -> str | None:
    """The diffusers cache (of ``_BATCH_STATEFUL_CACHES``) registered on ``model`` or its modules, if any."""
    for module in model.modules():
        registry = module.__dict__.get("_diffusers_hook")
        for hook_name in getattr(registry, "hooks", {}):
            for prefix, cache in _BATCH_STATEFUL_CACHES:
                if hook_name.startswith(prefix):
                    return cache
    return None


def _check_joint_caches(pipe: Any, adapter: ModelAdapter) -> None:
    """Joint families freeze each block's text stream from the step before the gate, which needs every
    joint block to run its own forward at that step. Block caches decide per step whether blocks (or
    their attention) run, so they would leave the capture incomplete mid-call: refused up front."""
    name = type(pipe).__name__
    why = (
        f"crossgate freezes each joint block's text stream from the step before the gate, so every block "
        f"of {name}'s transformer must run at that step; {{cache}} skips blocks (or their attention) on "
        "steps it decides at run time. Disable {cache} to use crossgate on this pipeline, or remove "
        "crossgate to use {cache}."
    )
    denoiser = adapter.denoiser(pipe)
    if getattr(denoiser, "_is_cached", False):  # cache-dit's mark on a transformer it patched
        raise UnsupportedPipelineError(why.format(cache="cache-dit (cache_dit.enable_cache)"))
    cache = _block_cache(denoiser)
    if cache is not None:
        raise UnsupportedPipelineError(why.format(cache=f"diffusers' {cache}"))


def _check_per_pass(name: str, config: TGateConfig) -> None:
    """What a pipeline running several denoiser passes per step (Panorama's windows) cannot use."""
    why = f"{name} runs one denoiser pass per view window in every step"
    if config.caches_self_attention:
        raise ConfigError(
            f"TGATE v2's self-attention caching is not supported for {name}: {why}, and a cache per layer "
            "would hand one window's self-attention to the others; leave self_attention_interval=None and "
            "self_attention_interval_after=1."
        )
    if config.is_auto:
        raise ConfigError(
            f'gate_step="auto" is not supported for {name}: {why}, and the auto rule\'s tolerance is '
            "calibrated on one pass per step; give gate_step as steps or as a fraction."
        )
    if config.guidance_after_gate > 0:
        raise ConfigError(
            f"guidance_after_gate is not supported for {name}: {why}, and the guidance kept at the gate is "
            "one pass's; leave guidance_after_gate=0."
        )


def last_call(pipe: Any) -> CallStats | None:
    """What the last gated call of ``pipe`` did (gate, steps, batches, per-layer counts), or None."""
    session = _session(pipe)
    return session.last_call if session is not None else None


def is_applied(pipe: Any) -> bool:
    return _session(pipe) is not None


def get_session(pipe: Any) -> Any:
    """Deprecated: use :func:`crossgate.last_call` (stats) or :func:`crossgate.is_applied`."""
    warnings.warn(
        "crossgate.get_session is deprecated and will be removed; use crossgate.last_call(pipe) for "
        "the last call's stats and crossgate.is_applied(pipe) to test for TGATE.",
        DeprecationWarning,
        stacklevel=2,
    )
    return _session(pipe)


def configuration(pipe: Any) -> TGateConfig | None:
    """The configuration TGATE runs ``pipe`` with, or None when it is not applied."""
    session = _session(pipe)
    return session.config if session is not None else None


def _branch_context_for(denoiser: torch.nn.Module):
    """An instance-level ``cache_context`` that tells the running call which CFG branch is next.

    Sequential-CFG pipelines name each denoiser call (``with denoiser.cache_context("uncond"):``);
    the name is observed and the denoiser's own ``cache_context`` (diffusers' caches) still runs.
    """
    own = getattr(type(denoiser), "cache_context", None)  # CacheMixin's; Lumina2's model has none
    original = own.__get__(denoiser) if own is not None else (lambda name, **kwargs: contextlib.nullcontext())

    @contextlib.contextmanager
    def cache_context(name: str, **kwargs: Any) -> Iterator[None]:
        call = current_call()
        mine = call is not None and any(d is denoiser for d in call.denoisers)
        previous = call.branch if call is not None and mine else None
        if call is not None and mine:
            call.branch = name
        try:
            with original(name, **kwargs):
                yield
        finally:
            if call is not None and mine:
                call.branch = previous

    return cache_context


def _session(pipe: Any) -> _Session | None:
    return pipe.__dict__.get(_SESSION_ATTR) if hasattr(pipe, "__dict__") else None


def _progress_bar_for(pipe: Any, session: _Session):
    """An instance-level ``progress_bar`` that reports the loop's start, steps and end to ``session``."""
    make_bar = type(pipe).progress_bar.__get__(pipe)

    def progress_bar(iterable: Any = None, total: int | None = None) -> _LoopTracker:
        bar = make_bar(iterable=iterable, total=total)
        steps = total if total is not None else len(iterable)
        return _LoopTracker(bar, pipe, session, steps)

    return progress_bar


# Modular pipelines: the loop block ticks its own progress bar (docs/modular-diffusers.md). Its shadow
# lives on the block instance while some gated pipeline runs that block; these are its users.
_LOOP_USERS_ATTR = "_crossgate_loop_users"


def _loop_blocks(pipe: Any) -> list[Any]:
    """Every denoise-loop block of a modular pipeline, each alternative of its auto blocks included."""
    from diffusers.modular_pipelines import LoopSequentialPipelineBlocks

    found, todo = [], [pipe._blocks]
    while todo:
        block = todo.pop()
        if isinstance(block, LoopSequentialPipelineBlocks):
            found.append(block)
        todo += list(getattr(block, "sub_blocks", {}).values())
    return found


def _follow_loop_blocks(pipe: Any, session: _Session) -> None:
    """Shadow ``progress_bar`` on ``pipe``'s loop blocks: the running pipeline's session follows it.

    Blocks can be shared by pipelines (``ModularPipeline(blocks=b)`` twice), so the shadow dispatches on
    the pipeline running it (the innermost one on the stack) and stays while any of its users does.
    """
    for block in _loop_blocks(pipe):
        users: list[_Session] = block.__dict__.setdefault(_LOOP_USERS_ATTR, [])
        if "progress_bar" not in block.__dict__:
            block.__dict__["progress_bar"] = _loop_progress_bar_for(block)
        users.append(session)


def _unfollow_loop_blocks(pipe: Any, session: _Session) -> None:
    if not session.adapter.modular:
        return
    for block in _loop_blocks(pipe):
        users = block.__dict__.get(_LOOP_USERS_ATTR, [])
        if session in users:
            users.remove(session)
        if not users:
            block.__dict__.pop(_LOOP_USERS_ATTR, None)
            block.__dict__.pop("progress_bar", None)


def _loop_progress_bar_for(block: Any):
    """A loop block's ``progress_bar`` that reports to the session of the gated pipeline running it."""
    make_bar = type(block).progress_bar.__get__(block)

    def progress_bar(iterable: Any = None, total: int | None = None) -> Any:
        bar = make_bar(iterable=iterable, total=total)
        pipe = calling_pipeline()
        session = _session(pipe) if pipe is not None else None
        if session is None or session not in block.__dict__.get(_LOOP_USERS_ATTR, ()):
            return bar  # a pipeline without TGATE runs this block
        steps = total if total is not None else len(iterable)
        return _LoopTracker(bar, pipe, session, steps)

    return progress_bar


def _encode_prompt_for(pipe: Any, session: _Session):
    """An instance-level ``encode_prompt`` that notes whether the call asked for CFG embeddings.

    Pipelines without a ``do_classifier_free_guidance`` property (PixArt) still pass that decision
    to ``encode_prompt``; the arguments are only observed, never changed.
    """
    original = type(pipe).encode_prompt.__get__(pipe)
    signature = inspect.signature(original)

    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            flag = bound.arguments.get("do_classifier_free_guidance")
        except TypeError:
            flag = None
        session.prompt_cfg = None if flag is None else bool(flag)
        return original(*args, **kwargs)

    return encode_prompt


class _LoopTracker:
    """Wraps the pipeline's tqdm bar: entering it starts a gated call, ``update`` completes a step."""

    def __init__(self, bar: Any, pipe: Any, session: _Session, num_steps: int) -> None:
        self._bar = bar
        self._pipe = pipe
        self._session = session
        self._num_steps = num_steps
        self._call: CallState | None = None
        self._token: Any = None

    def _begin(self) -> None:
        self._call = self._session.begin_loop(self._pipe, self._num_steps)
        self._token = enter_call(self._call)

    def _end(self) -> None:
        if self._call is None:
            return
        call, self._call = self._call, None
        leave_call(self._token)
        self._session.end_loop(call)  # the call's caches go with ``call``; its stats stay

    def __enter__(self) -> _LoopTracker:
        self._bar.__enter__()
        try:
            self._begin()
        except BaseException as error:
            self._bar.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, *exc: Any) -> Any:
        self._end()
        return self._bar.__exit__(*exc)

    def update(self, n: int = 1) -> Any:
        if self._call is not None:
            self._session.end_step(self._call, n)
        return self._bar.update(n)

    def __iter__(self) -> Iterator[Any]:
        self._begin()
        try:
            for item in self._bar:
                yield item
                if self._call is not None:
                    self._session.end_step(self._call)
        finally:
            self._end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
