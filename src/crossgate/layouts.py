"""CFG layouts: how a pipeline lays out its two guidance branches, and how the gate runs one of them.

Each layout is one small strategy object. After the gate, under CFG, it owns the three things that
depend on the layout and nothing else:

* :meth:`CfgLayout.half`: the rows of a ``2B`` batch that feed the pass (``post_gate_inputs``);
* :meth:`CfgLayout.double`: a ``B``-row output handed back for both branches, so the pipeline's own
  guidance arithmetic returns it unchanged;
* :meth:`CfgLayout.mean` / :meth:`CfgLayout.split` / :meth:`CfgLayout.join`: the CFG mean TGATE caches
  at the gate, and the branches in the pipeline's order (for ``guidance_after_gate``).

:class:`Contiguous` is ``[uncond; cond]`` (or ``[cond; uncond]``, Lumina-Next), :class:`Interleaved`
is ``[u0, c0, u1, c1, ...]`` (Panorama), :class:`Sequential` is one denoiser call per branch named with
``cache_context("cond" | "uncond")`` (Wan and its family): it has no batch to slice; the gate skips
the uncond call instead (see :mod:`crossgate.hooks`). :func:`layout_for` picks one from an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossgate.adapters import ModelAdapter


@dataclass(frozen=True)
class CfgLayout:
    """A CFG layout; ``feeds_cond``: the cond branch (not the uncond one) feeds the passes after the gate."""

    feeds_cond: bool = False
    sequential = False  # one denoiser call per branch instead of one batch

    def half(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def double(self, half: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uncond, cond)``."""
        raise NotImplementedError

    def join(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, batch: torch.Tensor) -> torch.Tensor:
        """The CFG mean of a batch holding both branches: what TGATE replays after the gate."""
        uncond, cond = self.split(batch)
        return (uncond + cond) / 2

    def cond(self, batch: torch.Tensor) -> torch.Tensor:
        return self.split(batch)[1]


@dataclass(frozen=True)
class Contiguous(CfgLayout):
    """``[uncond; cond]``, or ``[cond; uncond]`` when ``cond_first`` (Lumina-Next)."""

    cond_first: bool = False

    @property
    def _second(self) -> bool:
        return self.feeds_cond != self.cond_first

    def half(self, batch: torch.Tensor) -> torch.Tensor:
        rows = batch.shape[0] // 2
        return batch[rows:] if self._second else batch[:rows]

    def double(self, half: torch.Tensor) -> torch.Tensor:
        return torch.cat([half, half], dim=0)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = batch.chunk(2, dim=0)
        return (second, first) if self.cond_first else (first, second)

    def join(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.cat([cond, uncond] if self.cond_first else [uncond, cond], dim=0)


@dataclass(frozen=True)
class Interleaved(CfgLayout):
    """Each sample's branches side by side, ``[u0, c0, u1, c1, ...]`` (Panorama's ``repeat_interleave``)."""

    def half(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[int(self.feeds_cond) :: 2]

    def double(self, half: torch.Tensor) -> torch.Tensor:
        return half.repeat_interleave(2, dim=0)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[0::2], batch[1::2]

    def join(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.stack([uncond, cond], dim=1).flatten(0, 1)


@dataclass(frozen=True)
class Sequential(CfgLayout):
    """One denoiser call per branch (``cache_context("cond")`` then ``("uncond")``): nothing to slice."""

    sequential = True

    def half(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def double(self, half: torch.Tensor) -> torch.Tensor:
        return half

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError("a sequential-CFG pass holds one branch")

    def join(self, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise TypeError("a sequential-CFG pass holds one branch")


def layout_for(adapter: ModelAdapter, post_gate_inputs: str) -> CfgLayout:
    """The layout ``adapter``'s pipeline uses, feeding ``post_gate_inputs`` after the gate."""
    feeds_cond = post_gate_inputs == "cond"
    if adapter.cfg_layout == "sequential":
        return Sequential(feeds_cond=True)  # the cond call runs; the uncond one is skipped
    if adapter.cfg_interleaved:
        return Interleaved(feeds_cond)
    return Contiguous(feeds_cond, cond_first=adapter.cond_first)
