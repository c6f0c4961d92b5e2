"""Tensor primitives the engine and the tools share: one definition of each.

* :func:`latent_batch`: the batch size of a denoiser call (its latent input's leading dimension);
* :func:`map_batch`: apply a function to every batch-shaped tensor in nested inputs or outputs;
* :func:`zip_batch`: join two such outputs tensor by tensor (the halves of a split pass);
* :func:`cfg_mean`: the mean of the ``[uncond; cond]`` halves, what TGATE caches at the gate;
* (how each CFG layout is sliced and handed back after the gate: :mod:`crossgate.layouts`);
* :func:`relative_change`: the convergence statistic of ``gate_step="auto"`` and of the analysis tools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def latent_batch(args: tuple, kwargs: dict) -> int:
    """The batch size of a denoiser call: the leading dimension of its latent input.

    Diffusers denoisers take the latents first, positionally or as ``sample`` (UNets) or
    ``hidden_states`` (transformers).
    """
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    if isinstance(sample, list) and sample and all(isinstance(s, torch.Tensor) for s in sample):
        return len(sample)  # one tensor per sample (Z-Image)
    if not isinstance(sample, torch.Tensor):
        raise RuntimeError("crossgate: could not find the denoiser's latent input to read the batch size.")
    return sample.shape[0]


def map_batch(tree: Any, batch: int, fn: Callable[[torch.Tensor], Any], samples: bool = False) -> Any:
    """Apply ``fn`` to every tensor in ``tree`` whose leading dimension is ``batch``.

    Walks tensors, dicts (and ``BaseOutput``-style mappings), lists, tuples and named tuples; every
    other value (and every tensor of another batch, e.g. a shared timestep) is returned unchanged.
    With ``samples``, a list of ``batch`` tensors is one tensor per sample (Z-Image's inputs and
    output): ``fn`` must then pick rows (a CFG half, the half twice), and picks list items.
    """
    if isinstance(tree, torch.Tensor):
        return fn(tree) if tree.dim() > 0 and tree.shape[0] == batch else tree
    if (
        samples
        and type(tree) is list
        and len(tree) == batch
        and all(isinstance(t, torch.Tensor) for t in tree)
    ):
        return [tree[i] for i in fn(torch.arange(batch)).tolist()]
    if isinstance(tree, dict):
        mapped = {key: map_batch(value, batch, fn, samples) for key, value in tree.items()}
        return mapped if type(tree) is dict else type(tree)(**mapped)
    if isinstance(tree, (list, tuple)):
        items = [map_batch(value, batch, fn, samples) for value in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def zip_batch(first: Any, second: Any, fn: Callable[[torch.Tensor, torch.Tensor], Any]) -> Any:
    """``fn(a, b)`` for each pair of tensors at the same place in two outputs of one structure.

    Joins the outputs of two passes over the halves of one batch (tensors, dicts and
    ``BaseOutput``-style mappings, lists, tuples, named tuples); any other value is taken from
    ``first``.
    """
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return fn(first, second) if first.dim() > 0 else first
    if isinstance(first, dict) and isinstance(second, dict):
        mapped = {key: zip_batch(value, second[key], fn) for key, value in first.items()}
        return mapped if type(first) is dict else type(first)(**mapped)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)) and len(first) == len(second):
        items = [zip_batch(a, b, fn) for a, b in zip(first, second, strict=True)]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    return first


def cfg_mean(output: torch.Tensor) -> torch.Tensor:
    """The mean of the ``[uncond; cond]`` halves: what one pass at batch B replays after the gate.

    Other CFG layouts (cond first, interleaved) have theirs in :mod:`crossgate.layouts`.
    """
    uncond, cond = output.chunk(2, dim=0)
    return (uncond + cond) / 2


def relative_change(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``||current - previous|| / ||previous||`` per image (Frobenius), averaged over images."""
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    ratio = (current - previous).norm(dim=1) / previous.norm(dim=1).clamp_min(1e-12)
    return float(ratio.mean())
