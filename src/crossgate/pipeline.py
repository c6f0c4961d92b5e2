"""Apply TGATE to a diffusers pipeline instance, and take it off again.

The pipeline's own ``__call__`` keeps running. crossgate learns where a call's denoising loop starts,
advances and ends from the pipeline's own progress bar (every diffusers pipeline wraps its loop in
``with self.progress_bar(total=...)`` and calls ``update()`` once per completed step, which already
counts a second-order scheduler's two denoiser calls as one step). The progress bar is replaced on
this instance only, never on its class.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from crossgate.adapters import ModelAdapter, resolve_adapter
from crossgate.config import TGateConfig
from crossgate.gate import CallStats, GateState
from crossgate.hooks import (
    CROSS_ATTENTION_HOOK,
    SELF_ATTENTION_HOOK,
    CrossAttentionGateHook,
    DenoiserGate,
    SelfAttentionCacheHook,
)
from crossgate.schedule import self_attention_action

_SESSION_ATTR = "_crossgate_session"
# Methods crossgate shadows on the pipeline instance (never on its class); remove() deletes them.
_INSTANCE_PATCHES = ("progress_bar", "encode_prompt")


@dataclass
class TGateSession:
    """Everything crossgate attached to one pipeline, so that ``remove`` can undo all of it."""

    config: TGateConfig
    adapter: ModelAdapter
    state: GateState
    denoiser: torch.nn.Module
    cross_attention: dict[str, CrossAttentionGateHook] = field(default_factory=dict)
    self_attention: dict[str, SelfAttentionCacheHook] = field(default_factory=dict)
    denoiser_gate: DenoiserGate | None = None
    hooked: list[tuple[torch.nn.Module, str]] = field(default_factory=list)
    last_call: CallStats | None = None
    prompt_cfg: bool | None = None

    def unhook(self) -> None:
        if self.denoiser_gate is not None:
            self.denoiser_gate.detach()
        for module, hook_name in reversed(self.hooked):
            module._diffusers_hook.remove_hook(hook_name, recurse=False)
        self.hooked.clear()

    def begin_loop(self, num_steps: int) -> None:
        self._reset_hooks()
        config = self.config
        self.state.begin(num_steps, config.resolve_gate(num_steps), watch_convergence=config.is_auto)

    def end_step(self) -> None:
        """Called at each completed step: where ``gate_step="auto"`` decides to close the gate."""
        state, config = self.state, self.config
        if not (state.active and config.is_auto):
            return
        step = state.step
        changes = {
            n: h.change[1] for n, h in self.cross_attention.items() if h.change and h.change[0] == step
        }
        if not changes:
            return
        state.convergence.append(sum(changes.values()) / len(changes))
        next_step = step + 1
        if next_step >= state.gate or next_step < config.resolve_min_gate(state.num_steps):
            return
        if state.convergence[-1] < config.auto_tolerance / config.convergence_scale(state.num_steps):
            state.gate = next_step

    def end_loop(self) -> None:
        if self.state.active:
            self.last_call = replace(
                self.state.snapshot(),
                cross_attention_computed_steps={
                    n: len(h.computed_steps) for n, h in self.cross_attention.items()
                },
                cross_attention_replays={n: h.replayed_calls for n, h in self.cross_attention.items()},
                self_attention_computed_steps={
                    n: sorted(h.computed_steps) for n, h in self.self_attention.items()
                },
            )
        self.state.reset()
        self._reset_hooks()  # drop the caches now, not at the next call (stats are in last_call)

    def _reset_hooks(self) -> None:
        for hook in (*self.cross_attention.values(), *self.self_attention.values()):
            hook.reset_state(None)


def apply(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> Any:
    """Enable TGATE on ``pipe`` in place and return it.

    ``config`` defaults to :class:`TGateConfig()`; keyword ``overrides`` replace its fields
    (``apply(pipe, gate_step=0.4)``). Applying again replaces the configuration (the same config
    twice is a no-op). Nothing is changed on the pipeline if validation fails.
    """
    config = TGateConfig() if config is None else config
    if not isinstance(config, TGateConfig):
        raise TypeError(f"config must be a crossgate.TGateConfig, got {type(config).__name__}.")
    if overrides:
        config = config.with_overrides(**overrides)
    session = get_session(pipe)
    if session is not None:
        if session.config == config:
            return pipe
        remove(pipe)
    adapter = resolve_adapter(pipe)
    state = GateState()
    session = TGateSession(config=config, adapter=adapter, state=state, denoiser=adapter.denoiser(pipe))
    registered = session.hooked
    try:
        for name, module in adapter.cross_attention(pipe):
            hook = CrossAttentionGateHook(state, name)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, CROSS_ATTENTION_HOOK)
            registered.append((module, CROSS_ATTENTION_HOOK))
            session.cross_attention[name] = hook
        if config.caches_self_attention:
            action = _self_attention_schedule(config)
            for name, module in adapter.self_attention(pipe):
                sa_hook = SelfAttentionCacheHook(state, name, action)
                HookRegistry.check_if_exists_or_initialize(module).register_hook(sa_hook, SELF_ATTENTION_HOOK)
                registered.append((module, SELF_ATTENTION_HOOK))
                session.self_attention[name] = sa_hook
        session.denoiser_gate = DenoiserGate(
            state,
            cfg_active=lambda: adapter.cfg_active(pipe, session.prompt_cfg),
            use_cond_half=config.post_gate_inputs == "cond",
        )
        session.denoiser_gate.attach(session.denoiser)
        pipe.progress_bar = _progress_bar_for(pipe, session)
        if callable(getattr(type(pipe), "encode_prompt", None)):
            pipe.encode_prompt = _encode_prompt_for(pipe, session)
        setattr(pipe, _SESSION_ATTR, session)
    except BaseException:
        session.unhook()
        for name in _INSTANCE_PATCHES:
            pipe.__dict__.pop(name, None)
        raise
    return pipe


def remove(pipe: Any) -> Any:
    """Take TGATE off ``pipe``; calling it on a pipeline without TGATE does nothing."""
    session = get_session(pipe)
    if session is None:
        return pipe
    session.unhook()
    session.end_loop()
    for name in _INSTANCE_PATCHES:
        pipe.__dict__.pop(name, None)
    delattr(pipe, _SESSION_ATTR)
    return pipe


@contextlib.contextmanager
def enabled(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> Iterator[Any]:
    """``with crossgate.enabled(pipe, gate_step=0.4): pipe(...)``: TGATE inside the block only."""
    apply(pipe, config, **overrides)
    try:
        yield pipe
    finally:
        remove(pipe)


def get_session(pipe: Any) -> TGateSession | None:
    """The TGATE session attached to ``pipe``, or None (useful for stats and tests)."""
    return pipe.__dict__.get(_SESSION_ATTR) if hasattr(pipe, "__dict__") else None


def is_applied(pipe: Any) -> bool:
    return get_session(pipe) is not None


def last_call(pipe: Any) -> CallStats | None:
    """What the last gated call of ``pipe`` did (gate, steps, batches, per-layer counts), or None."""
    session = get_session(pipe)
    return session.last_call if session is not None else None


def check(pipe: Any, config: TGateConfig | None = None, **overrides: Any) -> TGateConfig:
    """Validate ``config`` (with ``overrides``) against ``pipe`` without changing anything; return it.

    Raises the same :class:`ConfigError` / :class:`UnsupportedPipelineError` that ``apply`` would.
    """
    config = TGateConfig() if config is None else config
    if not isinstance(config, TGateConfig):
        raise TypeError(f"config must be a crossgate.TGateConfig, got {type(config).__name__}.")
    if overrides:
        config = config.with_overrides(**overrides)
    resolve_adapter(pipe)
    return config


def _self_attention_schedule(config: TGateConfig):
    def action(step: int, gate: int):
        return self_attention_action(
            step,
            gate,
            config.self_attention_interval,
            config.self_attention_interval_after,
            config.self_attention_warm_up,
        )

    return action


def _progress_bar_for(pipe: Any, session: TGateSession):
    """An instance-level ``progress_bar`` that reports the loop's start, steps and end to ``session``."""
    make_bar = type(pipe).progress_bar.__get__(pipe)

    def progress_bar(iterable: Any = None, total: int | None = None) -> _LoopTracker:
        bar = make_bar(iterable=iterable, total=total)
        steps = total if total is not None else len(iterable)
        return _LoopTracker(bar, session, steps)

    return progress_bar


def _encode_prompt_for(pipe: Any, session: TGateSession):
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
    """Wraps the pipeline's tqdm bar: entering it starts a gated loop, ``update`` counts a step."""

    def __init__(self, bar: Any, session: TGateSession, num_steps: int) -> None:
        self._bar = bar
        self._session = session
        self._num_steps = num_steps

    def __enter__(self) -> _LoopTracker:
        self._bar.__enter__()
        self._session.begin_loop(self._num_steps)
        return self

    def __exit__(self, *exc: Any) -> Any:
        self._session.end_loop()
        return self._bar.__exit__(*exc)

    def update(self, n: int = 1) -> Any:
        self._session.end_step()
        self._session.state.step += n
        return self._bar.update(n)

    def __iter__(self) -> Iterator[Any]:
        self._session.begin_loop(self._num_steps)
        try:
            for item in self._bar:
                yield item
                self._session.end_step()
                self._session.state.step += 1
        finally:
            self._session.end_loop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
