"""Counting one denoiser call: linear/conv MACs by forward hooks, all ops by ``FlopCounterMode``.

Both counters only read shapes, so the same code counts a meta-device architecture (no weights) and
a real generation (a replayed cross-attention never runs its projections and is not counted).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn

from crossgate.adapters import ModelAdapter, cross_attention_modules, self_attention_modules

Convention = Literal["linear_conv", "all"]
CONVENTIONS: tuple[Convention, ...] = ("linear_conv", "all")
CfgLayout = Literal["batched", "sequential"]
CFG_LAYOUTS: tuple[CfgLayout, ...] = ("batched", "sequential")


class AccountingError(ValueError):
    """A model or schedule cannot be counted; the message says what to pass instead."""


def check_convention(convention: str) -> str:
    """``convention`` itself, or an :class:`AccountingError` naming the valid ones."""
    if convention not in CONVENTIONS:
        raise AccountingError(f"unknown convention {convention!r}; use one of {CONVENTIONS}.")
    return convention


def check_cfg_layout(layout: str) -> CfgLayout:
    """``layout`` itself, or an :class:`AccountingError` naming the valid ones."""
    if layout not in CFG_LAYOUTS:
        raise AccountingError(f"unknown cfg_layout {layout!r}; use one of {CFG_LAYOUTS}.")
    return cast(CfgLayout, layout)


def _linear_conv_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return 0


_COUNTED = (nn.Linear, nn.modules.conv._ConvNd)


class LinearConvCounter:
    """Counts the linear/conv MACs each submodule of ``root`` executes while active.

    ``with LinearConvCounter(pipe.unet) as counter: pipe(...)``; then ``counter.total``. Works on
    meta and on real tensors alike (it only reads shapes), so the same counter measures a real
    generation: a replayed cross-attention never runs its projections and is not counted.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.by_module: dict[str, int] = defaultdict(int)
        self._handles: list[Any] = []

    def __enter__(self) -> LinearConvCounter:
        for name, module in self.root.named_modules():
            if isinstance(module, _COUNTED):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            self.by_module[name] += _linear_conv_macs(module, inputs, output)

        return hook

    @property
    def total(self) -> int:
        return sum(self.by_module.values())

    def under(self, prefix: str) -> int:
        """MACs of ``prefix`` and everything below it."""
        dotted = prefix + "."
        return sum(v for k, v in self.by_module.items() if k == prefix or k.startswith(dotted))

    def reset(self) -> None:
        self.by_module.clear()


@dataclass(frozen=True)
class CallMacs:
    """Per-sample MACs of one denoiser call, split by where TGATE can save them.

    ``total`` maps convention -> MACs; ``cross_attention``/``self_attention`` map each attention
    module's name (as in ``denoiser.named_modules()``) to its MACs per convention. ``blocks`` maps
    convention -> MACs inside the denoiser's top-level blocks (``blocks``/``transformer_blocks``,
    what a skipped sequential-CFG pass leaves out; empty for UNets, which have none).
    ``cfg_layout`` is how the model's pipeline runs classifier-free guidance: ``"batched"`` (one
    ``[uncond; cond]`` call per step) or ``"sequential"`` (one call per branch, Wan's family).
    """

    model: str
    total: Mapping[str, int]
    cross_attention: Mapping[str, Mapping[str, int]]
    self_attention: Mapping[str, Mapping[str, int]]
    inputs: str = ""
    blocks: Mapping[str, int] = field(default_factory=dict)
    cfg_layout: CfgLayout = "batched"

    def full(self, convention: Convention = "linear_conv") -> int:
        return self.total[check_convention(convention)]

    def cross(self, convention: Convention = "linear_conv") -> int:
        return sum(m[check_convention(convention)] for m in self.cross_attention.values())

    def self_attn(self, convention: Convention = "linear_conv") -> int:
        return sum(m[check_convention(convention)] for m in self.self_attention.values())

    def outside_blocks(self, convention: Convention = "linear_conv") -> int:
        """What a pass with every top-level block skipped still computes (patch and condition
        embeddings, output head): crossgate's uncond call after the gate under sequential CFG."""
        return self.full(convention) - self.blocks.get(check_convention(convention), 0)

    def skipped(self, convention: Convention = "linear_conv") -> int:
        """A call with every cross-attention replayed from the cache."""
        return self.full(convention) - self.cross(convention)

    def step(self, convention: Convention, cross_attention: bool = True, self_attention: bool = True) -> int:
        """One sample's call with cross/self-attention computed (True) or served from a cache."""
        macs = self.full(convention)
        if not cross_attention:
            macs -= self.cross(convention)
        if not self_attention:
            macs -= self.self_attn(convention)
        return macs


def count_call(
    denoiser: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    model: str = "",
    cfg_layout: CfgLayout = "batched",
) -> CallMacs:
    """Run ``denoiser(*args, **kwargs)`` once (meta tensors recommended) and count it both ways.

    The inputs should hold one sample; a batch of B counts B samples. ``cfg_layout`` records how
    the model's pipeline runs CFG (it decides how schedules and :func:`~.schedules.executed_macs`
    read the counts).
    """
    from torch.utils.flop_counter import FlopCounterMode

    root = type(denoiser).__name__
    with torch.no_grad(), LinearConvCounter(denoiser) as lc, FlopCounterMode(display=False) as fc:
        denoiser(*args, **kwargs)
    flops = fc.get_flop_counts()

    def all_ops(name: str) -> int:
        return sum(flops.get(f"{root}.{name}", {}).values()) // 2

    def split(modules: list[tuple[str, nn.Module]]) -> dict[str, dict[str, int]]:
        return {name: {"linear_conv": lc.under(name), "all": all_ops(name)} for name, _ in modules}

    names = {id(module): name for name, module in denoiser.named_modules()}
    blocks = [names[id(block)] for block, _ in ModelAdapter.blocks(denoiser) if id(block) in names]
    return CallMacs(
        model=model or root,
        total={"linear_conv": lc.total, "all": fc.get_total_flops() // 2},
        cross_attention=split(cross_attention_modules(denoiser)),
        self_attention=split(self_attention_modules(denoiser)),
        inputs=_describe(args, kwargs),
        blocks={"linear_conv": sum(lc.under(b) for b in blocks), "all": sum(all_ops(b) for b in blocks)},
        cfg_layout=check_cfg_layout(cfg_layout),
    )


def _describe(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    parts = [f"{tuple(a.shape)}" for a in args if isinstance(a, torch.Tensor)]
    parts += [f"{k}={tuple(v.shape)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    return " ".join(parts)


def tera(macs: int | float, digits: int = 3) -> str:
    """MACs as the paper prints them (``16.938T``); small models (< 0.1T) in G so digits remain."""
    if abs(macs) < 1e11:
        return f"{macs / 1e9:.{digits}f}G"
    return f"{macs / 1e12:.{digits}f}T"
