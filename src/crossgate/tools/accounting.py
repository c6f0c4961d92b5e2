"""Compute accounting: how many multiply-accumulates (MACs) a denoiser spends per image.

Users pick an accelerator by numbers, so the numbers must be reproducible without weights or a GPU:
the real architectures are built from bundled config files on ``torch.device("meta")`` and one
denoiser call (one sample) is counted in two conventions:

* ``"linear_conv"``: linear and convolution layers only, the convention of the TGATE paper (calflops
  misses scaled-dot-product attention, so the attention matmuls are not in the paper's totals).
  Counted exactly with forward hooks on every ``nn.Linear``/``nn.ConvNd``.
* ``"all"``: every operation ``torch.utils.flop_counter.FlopCounterMode`` knows, attention matmuls
  included (on meta tensors SDPA is decomposed into counted matmuls). MACs = FLOPs / 2.

A per-image total is a :class:`Schedule` (which steps run CFG, cross-attention and self-attention)
applied to a :class:`CallMacs`. The same per-module counts turn a real call's
:class:`~crossgate.gate.CallStats` into the MACs that actually executed (:func:`executed_macs`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from crossgate.adapters.base import cross_attention_modules, self_attention_modules
from crossgate.gate import CallStats
from crossgate.schedule import Action, self_attention_plan

Convention = Literal["linear_conv", "all"]
CONVENTIONS: tuple[Convention, ...] = ("linear_conv", "all")


class AccountingError(ValueError):
    """A model or schedule cannot be counted; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSpec:
    """A bundled architecture with the resolution and prompt length the paper counts it at."""

    key: str
    label: str
    config: str
    resolution: int
    text_len: int


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec("sd15", "SD-1.5 UNet", "sd15_unet.json", 512, 77),
        ModelSpec("sd21", "SD-2.1 UNet", "sd21_unet.json", 768, 77),
        ModelSpec("sdxl", "SDXL UNet", "sdxl_unet.json", 1024, 77),
        ModelSpec("pixart-alpha", "PixArt-Alpha", "pixart_alpha_1024.json", 1024, 120),
        ModelSpec("pixart-sigma", "PixArt-Sigma", "pixart_sigma_1024.json", 1024, 300),
    )
}


def bundled_config(name: str) -> dict[str, Any]:
    """A config shipped in ``crossgate/configs`` (e.g. ``"sd15_unet.json"``)."""
    return json.loads(resources.files("crossgate").joinpath("configs", name).read_text())


# --------------------------------------------------------------------------------------------------
# Counting one call


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

    Works on meta and on real tensors alike (it only reads shapes), so the same counter measures a
    real generation: a replayed cross-attention never runs its projections and is not counted.
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
    module's name (as in ``denoiser.named_modules()``) to its MACs per convention.
    """

    model: str
    total: Mapping[str, int]
    cross_attention: Mapping[str, Mapping[str, int]]
    self_attention: Mapping[str, Mapping[str, int]]
    inputs: str = ""

    def full(self, convention: Convention = "linear_conv") -> int:
        return self.total[_check(convention)]

    def cross(self, convention: Convention = "linear_conv") -> int:
        return sum(m[_check(convention)] for m in self.cross_attention.values())

    def self_attn(self, convention: Convention = "linear_conv") -> int:
        return sum(m[_check(convention)] for m in self.self_attention.values())

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


def _check(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise AccountingError(f"unknown convention {convention!r}; use one of {CONVENTIONS}.")
    return convention


def count_call(
    denoiser: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], model: str = ""
) -> CallMacs:
    """Run ``denoiser(*args, **kwargs)`` once (meta tensors recommended) and count it both ways.

    The inputs should hold one sample; a batch of B counts B samples.
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

    return CallMacs(
        model=model or root,
        total={"linear_conv": lc.total, "all": fc.get_total_flops() // 2},
        cross_attention=split(cross_attention_modules(denoiser)),
        self_attention=split(self_attention_modules(denoiser)),
        inputs=_describe(args, kwargs),
    )


def _describe(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    parts = [f"{tuple(a.shape)}" for a in args if isinstance(a, torch.Tensor)]
    parts += [f"{k}={tuple(v.shape)}" for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Building architectures on meta


def build_meta_denoiser(config: Mapping[str, Any], cls: type | None = None) -> nn.Module:
    """The architecture ``config`` describes, on the meta device (no memory, no weights)."""
    import diffusers

    class_name = config.get("_class_name")
    cls = cls or getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise AccountingError(
            f"config names class {class_name!r}, which is not a diffusers model; point at the "
            "denoiser's config.json (a UNet2DConditionModel or PixArtTransformer2DModel)."
        )
    with torch.device("meta"):
        return cls.from_config(dict(config))


def example_inputs(
    denoiser: nn.Module, height: int, width: int, text_len: int, vae_scale: int = 8, batch: int = 1
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Meta inputs for one call of ``denoiser`` at ``height`` x ``width`` pixels."""
    if height % vae_scale or width % vae_scale:
        raise AccountingError(f"resolution {height}x{width} must be a multiple of {vae_scale}.")
    cfg = denoiser.config
    meta = torch.device("meta")
    latents = torch.empty(batch, cfg.in_channels, height // vae_scale, width // vae_scale, device=meta)
    timestep = torch.empty(batch, device=meta)
    name = type(denoiser).__name__
    if name == "UNet2DConditionModel":
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.cross_attention_dim, device=meta)
        }
        if cfg.addition_embed_type == "text_time":
            time_ids = 6
            pooled = cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(batch, pooled, device=meta),
                "time_ids": torch.empty(batch, time_ids, device=meta),
            }
        elif cfg.addition_embed_type is not None:
            raise AccountingError(f"UNet addition_embed_type {cfg.addition_embed_type!r} is not supported.")
        return (latents, timestep), kwargs
    if name == "PixArtTransformer2DModel":
        return (latents,), {
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.caption_channels, device=meta),
            "timestep": timestep,
            "added_cond_kwargs": {
                "resolution": torch.empty(batch, 2, device=meta),
                "aspect_ratio": torch.empty(batch, 1, device=meta),
            },
        }
    raise AccountingError(
        f"no input recipe for {name}; supported: UNet2DConditionModel, PixArtTransformer2DModel."
    )


@functools.lru_cache(maxsize=32)
def call_macs(model: str, resolution: int | None = None, text_len: int | None = None) -> CallMacs:
    """Per-sample MACs of one call of a bundled model (``MODELS`` key) or a model folder.

    A folder may be a diffusers pipeline (``model_index.json`` with ``unet/`` or ``transformer/``)
    or a denoiser folder with its ``config.json``. Cached: counting SDXL takes a few seconds.
    """
    if model in MODELS:
        spec = MODELS[model]
        config = bundled_config(spec.config)
        label, vae_scale = spec.label, 8
        resolution = resolution or spec.resolution
        text_len = text_len or spec.text_len
    else:
        config, vae_scale = _folder_config(Path(model).expanduser())
        label = Path(model).name
        if resolution is None:
            resolution = int(config.get("sample_size", 64)) * vae_scale
        if text_len is None:
            text_len = 120 if config.get("_class_name") == "PixArtTransformer2DModel" else 77
    denoiser = build_meta_denoiser(config)
    args, kwargs = example_inputs(denoiser, resolution, resolution, text_len, vae_scale)
    return count_call(denoiser, args, kwargs, model=f"{label} @{resolution}")


def _folder_config(folder: Path) -> tuple[dict[str, Any], int]:
    if not folder.is_dir():
        raise AccountingError(
            f"{str(folder)!r} is neither a bundled model ({', '.join(MODELS)}) nor a folder; pass a "
            "diffusers pipeline folder or a denoiser folder with config.json."
        )
    vae_scale = 8
    vae_config = folder / "vae" / "config.json"
    if vae_config.is_file():
        vae_scale = 2 ** (len(json.loads(vae_config.read_text())["block_out_channels"]) - 1)
    for sub in ("unet", "transformer", "."):
        path = folder / sub / "config.json"
        if path.is_file():
            return json.loads(path.read_text()), vae_scale
    raise AccountingError(
        f"no denoiser config in {str(folder)!r}: expected unet/config.json, transformer/config.json or "
        "config.json."
    )


# --------------------------------------------------------------------------------------------------
# Schedules and per-image totals


@dataclass(frozen=True)
class Schedule:
    """What each denoising step computes.

    Attributes:
        batch: samples per denoiser call at each step (2 with classifier-free guidance, else 1).
        cross_attention: per step, whether cross-attention is computed (False = replayed).
        self_attention: per step, whether self-attention is computed (False = served from a cache);
            the extension point for self-attention caching (TGATE v2) and similar schedules.
        calls_per_step: denoiser calls per step (2 for second-order schedulers such as Heun).
    """

    label: str
    batch: tuple[int, ...]
    cross_attention: tuple[bool, ...]
    self_attention: tuple[bool, ...] = field(default=())
    calls_per_step: int = 1

    def __post_init__(self) -> None:
        n = len(self.batch)
        if not self.self_attention:
            object.__setattr__(self, "self_attention", (True,) * n)
        if len(self.cross_attention) != n or len(self.self_attention) != n:
            raise AccountingError(
                f"schedule {self.label!r}: batch, cross_attention and self_attention need one entry per "
                f"step ({n}), got {len(self.cross_attention)} and {len(self.self_attention)}."
            )

    @property
    def num_steps(self) -> int:
        return len(self.batch)

    @classmethod
    def plain(cls, num_steps: int, cfg: bool = True) -> Schedule:
        _check_steps(num_steps)
        return cls("baseline", (2 if cfg else 1,) * num_steps, (True,) * num_steps)

    @classmethod
    def tgate(
        cls,
        num_steps: int,
        gate_step: int,
        cfg: bool = True,
        self_attention: Sequence[bool] | None = None,
        label: str | None = None,
    ) -> Schedule:
        """TGATE: ``gate_step`` steps with cross-attention (and CFG), then replay on one branch.

        ``self_attention`` (one bool per step) adds self-attention caching on top (TGATE v2).
        """
        _check_steps(num_steps)
        if gate_step < 1:
            raise AccountingError(f"gate_step must be >= 1, got {gate_step}.")
        m = min(gate_step, num_steps)
        batch = tuple((2 if cfg and i < m else 1) for i in range(num_steps))
        cross = tuple(i < m for i in range(num_steps))
        sa = tuple(bool(x) for x in self_attention) if self_attention is not None else ()
        return cls(label or f"TGATE m={gate_step}", batch, cross, sa)

    @classmethod
    def tgate_v2(
        cls, num_steps: int, gate_step: int, interval: int, warm_up: int = 2, cfg: bool = True
    ) -> Schedule:
        """TGATE v2 with the published schedule (:func:`v2_self_attention_steps`)."""
        sa = v2_self_attention_steps(num_steps, gate_step, interval, warm_up)
        return cls.tgate(num_steps, gate_step, cfg, sa, label=f"TGATE v2 m={gate_step},k={interval}")


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
    """Denoiser MACs for one image under ``schedule``."""
    per_step = (
        b * call.step(convention, ca, sa)
        for b, ca, sa in zip(schedule.batch, schedule.cross_attention, schedule.self_attention)
    )
    return schedule.calls_per_step * sum(per_step)


def executed_macs(call: CallMacs, stats: CallStats, convention: Convention = "linear_conv") -> int:
    """Denoiser MACs a real crossgate call executed, from its ``CallStats`` (all images of the call).

    Every denoiser pass runs the full model for its batch, minus each cross-attention module that
    was replayed in it. A module is replayed once per gated pass, and the gated passes are the last
    ones of the call, so module ``j``'s ``r`` replays fall in the last ``r`` passes. With
    self-attention caching, each self-attention module also saves its MACs at every step missing
    from its ``self_attention_computed_steps``.
    """
    passes = stats.denoiser_batches
    macs = sum(passes) * call.full(convention)
    for name, replays in stats.cross_attention_replays.items():
        if name not in call.cross_attention:
            raise AccountingError(
                f"cross-attention module {name!r} is not in the counted model {call.model}."
            )
        if replays:
            macs -= sum(passes[-replays:]) * call.cross_attention[name][_check(convention)]
    # Self-attention caching (TGATE v2): a module skipped at a step saves its MACs for that step's batch.
    computed_steps = getattr(stats, "self_attention_computed_steps", None) or {}
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
        macs -= skipped * call.self_attention[name][_check(convention)]
    return macs


# --------------------------------------------------------------------------------------------------
# Measuring a real call


class CallMeter:
    """Measures one real pipeline call: live linear/conv MACs and the denoiser's per-sample counts.

    ``with CallMeter(pipe) as meter: pipe(...)``; then ``meter.executed`` is what the linear/conv
    layers actually ran (an independent check of :func:`executed_macs`) and ``meter.call_macs()``
    counts the same architecture on meta at the call's own input shapes, batch 1.
    """

    def __init__(self, pipe: Any) -> None:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if denoiser is None:
            raise AccountingError(f"{type(pipe).__name__} has neither a unet nor a transformer to measure.")
        self.denoiser: nn.Module = denoiser
        self._counter = LinearConvCounter(denoiser)
        self._first: tuple[tuple, dict] | None = None
        self._handle: Any = None

    def __enter__(self) -> CallMeter:
        self._counter.reset()
        self._first = None

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._first is None:
                self._first = (args, kwargs)

        self._handle = self.denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
        self._counter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._counter.__exit__(*exc)
        self._handle.remove()

    @property
    def executed(self) -> int:
        """Linear/conv MACs the denoiser executed during the block."""
        return self._counter.total

    def call_macs(self) -> CallMacs:
        """Per-sample counts of this denoiser at the shapes of the first call it received."""
        if self._first is None:
            raise AccountingError("the denoiser was never called inside the CallMeter block.")
        args, kwargs = self._first
        batch = _leading(args, kwargs)
        meta_args, meta_kwargs = _to_meta((args, kwargs), batch)
        meta = build_meta_denoiser(dict(self.denoiser.config), type(self.denoiser))
        return count_call(meta, meta_args, meta_kwargs, model=type(self.denoiser).__name__)


def _leading(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return int(sample.shape[0])


def _to_meta(tree: Any, batch: int) -> Any:
    """Meta tensors of the same shapes, the batch dimension cut to one sample."""
    if isinstance(tree, torch.Tensor):
        shape = list(tree.shape)
        if shape and shape[0] == batch:
            shape[0] = 1
        return torch.empty(shape, dtype=tree.dtype, device="meta")
    if isinstance(tree, dict):
        return {k: _to_meta(v, batch) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_meta(v, batch) for v in tree)
    return tree


@contextlib.contextmanager
def counting(root: nn.Module) -> Iterator[LinearConvCounter]:
    """``with counting(pipe.unet) as c: ...``: live linear/conv MACs of ``root`` in the block."""
    with LinearConvCounter(root) as counter:
        yield counter


def tera(macs: int | float, digits: int = 3) -> str:
    """MACs as the paper prints them (``16.938T``); small models (< 0.1T) in G so digits remain."""
    if abs(macs) < 1e11:
        return f"{macs / 1e9:.{digits}f}G"
    return f"{macs / 1e12:.{digits}f}T"
