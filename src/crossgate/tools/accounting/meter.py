"""Measuring a real call: the linear/conv MACs that ran, and the architecture counted at its shapes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossgate.adapters import UnsupportedPipelineError, denoiser_of
from crossgate.tensors import latent_batch, map_batch
from crossgate.tools.accounting.counting import AccountingError, CallMacs, LinearConvCounter, count_call
from crossgate.tools.accounting.models import build_meta_denoiser


class CallMeter:
    """Measures one real pipeline call: live linear/conv MACs and the denoiser's per-sample counts.

    ``with CallMeter(pipe) as meter: pipe(...)``; then ``meter.executed`` is what the linear/conv
    layers actually ran (an independent check of :func:`~.schedules.executed_macs`) and
    ``meter.call_macs()`` counts the same architecture on meta at the call's own input shapes, batch 1.
    """

    def __init__(self, pipe: Any) -> None:
        try:
            self.denoiser: nn.Module = denoiser_of(pipe)
        except UnsupportedPipelineError:
            raise AccountingError(
                f"{type(pipe).__name__} has neither a unet nor a transformer to measure."
            ) from None
        self._counter = LinearConvCounter(self.denoiser)
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
        # One sample of every batch-shaped input, on meta (only shapes are read). Other tensors (a
        # 0-d timestep) pass as they are: the denoiser moves them to its sample's device itself.
        meta_args, meta_kwargs = map_batch((args, kwargs), latent_batch(args, kwargs), _one_sample_on_meta)
        meta = build_meta_denoiser(dict(self.denoiser.config), type(self.denoiser))
        return count_call(meta, meta_args, meta_kwargs, model=type(self.denoiser).__name__)


def _one_sample_on_meta(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty((1, *tensor.shape[1:]), dtype=tensor.dtype, device="meta")
