"""Measuring a real call: the linear/conv MACs that ran (denoiser and ControlNets), and the
denoiser's architecture counted at its shapes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossgate.adapters import UnsupportedPipelineError, denoiser_of, resolve_adapter
from crossgate.tensors import latent_batch, map_batch
from crossgate.tools.accounting.counting import (
    AccountingError,
    CallMacs,
    CfgLayout,
    LinearConvCounter,
    check_cfg_layout,
    count_call,
)
from crossgate.tools.accounting.joint import JointMacs, count_joint
from crossgate.tools.accounting.models import build_meta_denoiser


class CallMeter:
    """Measures one real pipeline call: live linear/conv MACs and the denoiser's per-sample counts.

    ``with CallMeter(pipe) as meter: pipe(...)``; then ``meter.executed`` is what the linear/conv
    layers actually ran and ``meter.call_macs()`` counts the denoiser's architecture on meta at the
    call's own input shapes, batch 1. A ControlNet pipeline's ``pipe.controlnet`` (a
    ``MultiControlNetModel`` holds its nets as submodules) is counted too: ``executed`` is the
    denoiser's ``denoiser_executed`` (an independent check of :func:`~.schedules.executed_macs`, which
    counts the denoiser only) plus the ControlNets' ``controlnet_executed``.

    Every denoiser call is seen: ``meter.calls`` counts them (a sequential-CFG pipeline such as Wan
    makes two per step, cond then uncond, and crossgate's skipped uncond calls after the gate are
    calls too). The per-sample input shapes of all calls must agree, or :meth:`call_macs` refuses
    (one architecture count would not describe them all).
    """

    def __init__(self, pipe: Any) -> None:
        try:
            self.denoiser: nn.Module = denoiser_of(pipe)
        except UnsupportedPipelineError:
            raise AccountingError(
                f"{type(pipe).__name__} has neither a unet nor a transformer to measure."
            ) from None
        try:
            layout = resolve_adapter(pipe).cfg_layout
        except UnsupportedPipelineError:  # not gateable: measured all the same, as a batched pipeline
            layout = "batched"
        self.cfg_layout: CfgLayout = check_cfg_layout(layout)
        control = getattr(pipe, "controlnet", None)
        self.controlnet: nn.Module | None = control if isinstance(control, nn.Module) else None
        try:  # each ControlNet crossgate gates, by its path (a MultiControlNetModel's nets one by one)
            self._nets = dict(resolve_adapter(pipe).controls(pipe))
        except UnsupportedPipelineError:
            self._nets = {}
        self._net_inputs: dict[str, tuple[tuple, dict]] = {}
        self.calls = 0
        self._counter = LinearConvCounter(self.denoiser)
        self._control_counter = LinearConvCounter(self.controlnet) if self.controlnet is not None else None
        self._first: tuple[tuple, dict] | None = None
        self._signatures: set[tuple] = set()
        self._handle: Any = None

    def __enter__(self) -> CallMeter:
        self._counter.reset()
        if self._control_counter is not None:
            self._control_counter.reset()
        self._first = None
        self._signatures.clear()
        self.calls = 0

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.calls += 1
            self._signatures.add(_per_sample_signature(args, kwargs))
            if self._first is None:
                self._first = (args, kwargs)

        self._handle = self.denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
        self._net_inputs.clear()
        self._net_handles = [
            net.register_forward_pre_hook(self._keep_first(path), with_kwargs=True, prepend=True)
            for path, net in self._nets.items()
        ]
        self._counter.__enter__()
        if self._control_counter is not None:
            self._control_counter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._control_counter is not None:
            self._control_counter.__exit__(*exc)
        self._counter.__exit__(*exc)
        self._handle.remove()
        for handle in self._net_handles:
            handle.remove()

    def _keep_first(self, path: str):
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._net_inputs.setdefault(path, (args, kwargs))

        return pre_hook

    @property
    def executed(self) -> int:
        """Linear/conv MACs the denoiser and the pipeline's ControlNet(s) executed during the block."""
        return self.denoiser_executed + self.controlnet_executed

    @property
    def denoiser_executed(self) -> int:
        """Linear/conv MACs the denoiser alone executed during the block."""
        return self._counter.total

    @property
    def controlnet_executed(self) -> int:
        """Linear/conv MACs ``pipe.controlnet`` executed during the block (0 without one)."""
        return self._control_counter.total if self._control_counter is not None else 0

    def call_macs(self) -> CallMacs:
        """Per-sample counts of this denoiser at the shapes of the calls it received."""
        if self._first is None:
            raise AccountingError("the denoiser was never called inside the CallMeter block.")
        if len(self._signatures) > 1:
            raise AccountingError(
                f"the denoiser's {self.calls} calls had {len(self._signatures)} different per-sample input "
                "shapes (e.g. prompts of different lengths per CFG branch); one count cannot describe them."
            )
        args, kwargs = self._first
        return _count_one_sample(self.denoiser, args, kwargs, self.cfg_layout)

    def joint_macs(self, cfg: bool = True) -> JointMacs:
        """A joint-attention denoiser (SD3, FLUX.1, Qwen-Image, HunyuanVideo) counted on meta at the
        shapes of its calls, in every form TGATE runs it (:class:`~.joint.JointMacs`); ``cfg``: whether
        the counted calls ran CFG."""
        args, kwargs = self._sample_inputs()
        meta = build_meta_denoiser(dict(self.denoiser.config), type(self.denoiser))
        return count_joint(meta, args, kwargs, type(self.denoiser).__name__, self.cfg_layout, cfg)

    def _sample_inputs(self) -> tuple[tuple, dict]:
        """The first call's inputs, one sample on meta (every tensor: shared ones such as position ids too)."""
        if self._first is None:
            raise AccountingError("the denoiser was never called inside the CallMeter block.")
        if len(self._signatures) > 1:
            raise AccountingError(
                f"the denoiser's {self.calls} calls had {len(self._signatures)} different per-sample input "
                "shapes (e.g. prompts of different lengths per CFG branch); one count cannot describe them."
            )
        args, kwargs = self._first
        from torch.utils._pytree import tree_map_only

        one = map_batch((args, kwargs), latent_batch(args, kwargs), _one_sample_on_meta)
        return tree_map_only(torch.Tensor, _on_meta, one)

    def control_call_macs(self) -> dict[str, CallMacs]:
        """Per-sample counts of each ControlNet crossgate gates, by path, at its first call's shapes.

        With :func:`~.schedules.executed_macs` (``controls=``) they predict :attr:`controlnet_executed`.
        """
        return {
            path: _count_one_sample(self._nets[path], *inputs, "batched")
            for path, inputs in self._net_inputs.items()
        }


def _count_one_sample(model: nn.Module, args: tuple, kwargs: dict, cfg_layout: CfgLayout) -> CallMacs:
    """``model``'s call counted on meta with one sample of every batch-shaped input.

    Only shapes are read. Other tensors (a 0-d timestep) pass as they are: the model moves them to
    its sample's device itself.
    """
    meta_args, meta_kwargs = map_batch((args, kwargs), latent_batch(args, kwargs), _one_sample_on_meta)
    meta = build_meta_denoiser(dict(model.config), type(model))
    return count_call(meta, meta_args, meta_kwargs, model=type(model).__name__, cfg_layout=cfg_layout)


def _one_sample_on_meta(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty((1, *tensor.shape[1:]), dtype=tensor.dtype, device="meta")


def _on_meta(tensor: torch.Tensor) -> torch.Tensor:
    return (
        tensor
        if tensor.device.type == "meta"
        else torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    )


def _per_sample_signature(args: tuple, kwargs: dict) -> tuple:
    """The shapes of a call's tensors with the batch dimension dropped (batch-shaped ones only)."""
    batch = latent_batch(args, kwargs)
    shapes: list[tuple] = []

    def visit(tree: Any, key: str) -> None:
        if isinstance(tree, torch.Tensor):
            if tree.dim() > 0 and tree.shape[0] == batch:
                shapes.append((key, tuple(tree.shape[1:])))
        elif isinstance(tree, dict):
            for name, value in tree.items():
                visit(value, f"{key}.{name}")
        elif isinstance(tree, (list, tuple)):
            for index, value in enumerate(tree):
                visit(value, f"{key}[{index}]")

    visit(args, "args")
    visit(kwargs, "kwargs")
    return tuple(shapes)
