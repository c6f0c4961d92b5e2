"""Joint-attention TGATE (SD3, FLUX.1, Qwen-Image, HunyuanVideo): what a call spends, and what the CFG
drop and the text freeze save.

The semantics are :mod:`crossgate.joint`'s: steps ``0 .. m-1`` run plain; at step ``m-1`` every joint
block recomputes its text keys and values once more to keep them (the capture); from step ``m`` on,
under CFG, only the cond branch runs (the CFG drop) and every joint block runs its image side alone
against the frozen text stream (the text freeze). Outside the blocks the transformer runs as written
(patch and text embeddings, timestep and pooled conditioning, the output head): the text freeze saves
only inside the blocks (HunyuanVideo's token refiner, which refines the prompt before the first
block, runs in every pass too).

One transformer pass is counted on the meta device in four forms, each by running the modules the
engine runs (:class:`crossgate.joint.JointKind`, the code its hooks call):

* **plain**, at 1 and at 2 rows (batched CFG runs ``[uncond; cond]`` before the gate);
* **frozen**: every joint block's ``image_only`` against the text stream its ``text_stream`` returns,
  at 1 and at 2 rows (``keep_cfg`` keeps both branches);
* **capture**: each block's ``text_stream`` (the extra text key/value projections and norm at step
  ``m-1``), at 1 and at 2 rows;
* **idle**: a pass with every joint block handed through (sequential CFG's uncond call after the
  gate: FLUX, Qwen-Image, HunyuanVideo with ``true_cfg_scale``): what is left outside the blocks.

A block's inputs are read by name with its kind's :meth:`~crossgate.joint.JointKind.bind` (HunyuanVideo
calls its blocks positionally) and its text output with the kind's own ``text_stream``.

Both conventions of :mod:`.counting` (``linear_conv``, ``all``). :meth:`JointMacs.image_macs` turns
them into a call's total for each CFG layout and variant; :meth:`JointMacs.split` says which part of
the saving comes from the CFG drop, which from the text freeze, and what the capture costs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossgate.joint import joint_blocks
from crossgate.tensors import latent_batch, map_batch
from crossgate.tools.accounting.counting import (
    AccountingError,
    CfgLayout,
    Convention,
    LinearConvCounter,
    check_cfg_layout,
    check_convention,
)
from crossgate.tools.accounting.models import (
    JOINT_DENOISERS,
    MODELS,
    Resolution,
    bundled_config,
    resolve_target,
)

ROWS = (1, 2)
TEXT_STREAMS = ("frozen", "frozen_mean", "live")  # frozen_mean averages (no MACs): counted as frozen

Macs = Mapping[str, int]  # convention -> MACs


@dataclass(frozen=True)
class JointSplit:
    """Where one call's saving comes from: ``tgate == baseline - cfg_drop - text_freeze + capture``."""

    baseline: int
    tgate: int
    cfg_drop: int  # the passes the CFG drop leaves out (the uncond branch after the gate)
    text_freeze: int  # the text side the remaining passes after the gate no longer compute
    capture: int  # the text keys/values recomputed once more at step m-1


@dataclass(frozen=True)
class JointMacs:
    """One joint-attention transformer pass counted in the forms TGATE runs it (per row: 1 or 2).

    ``plain``, ``frozen`` and ``capture`` map rows -> convention -> MACs; ``idle`` is one row with
    every joint block handed through. ``kept`` maps rows -> the elements every block keeps of its text
    stream (keys, values and the text output it hands on) from step ``m-1`` to the call's end.
    ``cfg_layout`` is how the pipeline runs CFG (SD3 batched; FLUX, Qwen-Image and HunyuanVideo
    sequential, true CFG) and ``cfg`` whether it does by default (FLUX.1-dev and HunyuanVideo: no,
    guidance-distilled).
    """

    model: str
    blocks: int
    image_tokens: int
    text_tokens: int
    plain: Mapping[int, Macs]
    frozen: Mapping[int, Macs]
    capture: Mapping[int, Macs]
    idle: Macs
    kept: Mapping[int, int]
    cfg_layout: CfgLayout = "batched"
    cfg: bool = True

    def text_side(self, convention: Convention = "linear_conv") -> int:
        """What freezing the text stream removes from one pass of one row (plain - frozen)."""
        convention = check_convention(convention)
        return self.plain[1][convention] - self.frozen[1][convention]

    def text_share(self, convention: Convention = "linear_conv") -> float:
        """The text side's share of one plain pass."""
        return self.text_side(convention) / self.plain[1][check_convention(convention)]

    def kept_bytes(self, rows: int = 1, bytes_per_element: int = 2) -> int:
        """Memory the frozen text stream holds (bf16 by default) for ``rows`` captured rows."""
        return self.kept[rows] * bytes_per_element

    def image_macs(
        self,
        num_steps: int,
        gate_step: int | None,
        convention: Convention = "linear_conv",
        cfg: bool | None = None,
        text_stream: str = "frozen",
        keep_cfg: bool = False,
    ) -> int:
        """Transformer MACs for one image: plain (``gate_step=None``) or gated at ``gate_step``.

        ``cfg`` defaults to the pipeline's own (``self.cfg``). ``text_stream="live"`` is the CFG drop
        alone; ``keep_cfg=True`` the text freeze alone (both branches keep running after the gate).
        A gate at the last step still captures at step ``m-1``; a gate beyond the call is plain.
        """
        convention = check_convention(convention)
        if num_steps < 1:
            raise AccountingError(f"num_steps must be >= 1, got {num_steps}.")
        if text_stream not in TEXT_STREAMS:
            raise AccountingError(f"unknown text_stream {text_stream!r}; use one of {TEXT_STREAMS}.")
        cfg = self.cfg if cfg is None else cfg
        sequential = self.cfg_layout == "sequential"
        calls, rows = self._passes(cfg)

        def plain(r: int) -> int:
            return self.plain[r][convention]

        if gate_step is None:
            return num_steps * calls * plain(rows)
        if gate_step < 1:
            raise AccountingError(f"gate_step must be >= 1, got {gate_step}.")
        m = min(gate_step, num_steps)
        freeze = text_stream != "live"
        # the capture runs at step gate-1 when the call has that step, even if no step follows it
        captured = calls * self.capture[rows][convention] if freeze and gate_step <= num_steps else 0

        def after(r: int) -> int:  # one pass after the gate
            return self.frozen[r][convention] if freeze else plain(r)

        if not cfg:
            later = after(1)
        elif keep_cfg:
            later = calls * after(rows)
        elif sequential:
            later = after(1) + self.idle[convention]  # the uncond call still runs outside the blocks
        else:
            later = after(1)
        return m * calls * plain(rows) + captured + (num_steps - m) * later

    def _passes(self, cfg: bool | None) -> tuple[int, int]:
        """(passes, rows each) of a step before the gate: sequential CFG 2 x 1, batched 1 x 2."""
        cfg = self.cfg if cfg is None else cfg
        if not cfg:
            return 1, 1
        return (2, 1) if self.cfg_layout == "sequential" else (1, 2)

    def split(
        self, num_steps: int, gate_step: int, convention: Convention = "linear_conv", cfg: bool | None = None
    ) -> JointSplit:
        """The default TGATE (CFG drop and text freeze) against the baseline, part by part."""
        baseline = self.image_macs(num_steps, None, convention, cfg)
        tgate = self.image_macs(num_steps, gate_step, convention, cfg)
        live = self.image_macs(num_steps, gate_step, convention, cfg, text_stream="live")
        calls, rows = self._passes(cfg)
        capture = calls * self.capture[rows][convention] if gate_step <= num_steps else 0
        return JointSplit(baseline, tgate, baseline - live, live - tgate + capture, capture)


def count_joint(
    denoiser: nn.Module,
    args: tuple,
    kwargs: Mapping[str, Any],
    model: str = "",
    cfg_layout: CfgLayout = "batched",
    cfg: bool = True,
) -> JointMacs:
    """Count ``denoiser`` (meta recommended) at one sample's inputs ``args``/``kwargs``, in every form.

    The two-row inputs repeat every batch-shaped tensor; position ids and other shared inputs stay.
    """
    if not joint_blocks(denoiser):
        raise AccountingError(
            f"{type(denoiser).__name__} has no joint-attention block crossgate knows (SD3's "
            "JointTransformerBlock, FLUX.1's FluxTransformerBlock/FluxSingleTransformerBlock, Qwen-Image's "
            "QwenImageTransformerBlock, HunyuanVideo's HunyuanVideoTransformerBlock/"
            "HunyuanVideoSingleTransformerBlock)."
        )
    if latent_batch(tuple(args), dict(kwargs)) != 1:
        raise AccountingError("count_joint takes one sample's inputs (batch 1).")
    plain, frozen, capture, kept = {}, {}, {}, {}
    idle: Macs = {}
    tokens = (0, 0)
    for rows in ROWS:
        r_args, r_kwargs = map_batch((tuple(args), dict(kwargs)), 1, functools.partial(_rows, rows=rows))
        counted = _count_pass(denoiser, r_args, r_kwargs)
        plain[rows] = counted.total
        frozen[rows] = {
            c: counted.total[c] - counted.blocks[c] + counted.image_only[c] for c in counted.total
        }
        capture[rows] = counted.capture
        kept[rows] = counted.kept
        if rows == 1:
            idle = {c: counted.total[c] - counted.blocks[c] for c in counted.total}
            tokens = counted.tokens
    return JointMacs(
        model=model or type(denoiser).__name__,
        blocks=len(joint_blocks(denoiser)),
        image_tokens=tokens[0],
        text_tokens=tokens[1],
        plain=plain,
        frozen=frozen,
        capture=capture,
        idle=idle,
        kept=kept,
        cfg_layout=check_cfg_layout(cfg_layout),
        cfg=cfg,
    )


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype, device="meta")


@dataclass
class _Pass:
    total: dict[str, int]
    blocks: dict[str, int]  # the joint blocks' share of ``total``
    image_only: dict[str, int]  # every joint block's image side against a frozen text stream
    capture: dict[str, int]  # every joint block's text_stream
    kept: int  # elements of every block's text stream
    tokens: tuple[int, int]  # (image, text) tokens the first joint block sees


def _count_pass(denoiser: nn.Module, args: tuple, kwargs: dict) -> _Pass:
    """One plain pass, each joint block's inputs and output kept, then each block's gated forms."""
    from torch.utils.flop_counter import FlopCounterMode

    blocks = joint_blocks(denoiser)
    seen: dict[str, list[Any]] = {}
    handles = []
    for name, block, kind in blocks:

        def before(module: nn.Module, a: tuple, kw: dict, name: str = name, kind: Any = kind) -> None:
            seen[name] = [kind.bind(a, kw), None]

        def after(module: nn.Module, a: tuple, kw: dict, output: Any, name: str = name) -> None:
            seen[name][1] = output

        handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(block.register_forward_hook(after, with_kwargs=True))
    try:
        with torch.no_grad(), LinearConvCounter(denoiser) as lc, FlopCounterMode(display=False) as fc:
            denoiser(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    flops, root = fc.get_flop_counts(), type(denoiser).__name__
    missing = [name for name, _, _ in blocks if name not in seen]
    if missing:
        raise AccountingError(f"joint blocks {missing} did not run in the counted pass.")
    counted = _Pass(
        total={"linear_conv": lc.total, "all": fc.get_total_flops() // 2},
        blocks={
            "linear_conv": sum(lc.under(name) for name, _, _ in blocks),
            "all": sum(sum(flops.get(f"{root}.{name}", {}).values()) // 2 for name, _, _ in blocks),
        },
        image_only={"linear_conv": 0, "all": 0},
        capture={"linear_conv": 0, "all": 0},
        kept=0,
        tokens=(0, 0),
    )
    first = seen[blocks[0][0]][0]
    counted.tokens = (first["hidden_states"].shape[1], first["encoder_hidden_states"].shape[1])
    for name, block, kind in blocks:
        block_kwargs, output = seen[name]
        stream_macs, stream = _count(block, kind.text_stream, block, block_kwargs, output)
        image_macs, _ = _count(block, kind.image_only, block, stream, block_kwargs)
        for convention in counted.total:
            counted.capture[convention] += stream_macs[convention]
            counted.image_only[convention] += image_macs[convention]
        counted.kept += sum(t.numel() for t in (stream.key, stream.value, stream.output) if t is not None)
    return counted


def _count(block: nn.Module, fn: Callable[..., Any], *args: Any) -> tuple[dict[str, int], Any]:
    """MACs of ``fn(*args)`` (one of ``block``'s :class:`~crossgate.joint.JointKind` forms), both ways."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), LinearConvCounter(block) as lc, FlopCounterMode(display=False) as fc:
        result = fn(*args)
    return {"linear_conv": lc.total, "all": fc.get_total_flops() // 2}, result


def is_joint_model(model: str) -> bool:
    """Whether a bundled model (``MODELS`` key) or a model folder is a joint-attention transformer."""
    if model in MODELS:
        return bundled_config(MODELS[model].config).get("_class_name") in JOINT_DENOISERS
    return type(resolve_target(model).denoiser).__name__ in JOINT_DENOISERS


def joint_macs(
    model: str, resolution: Resolution | None = None, text_len: int | None = None, frames: int | None = None
) -> JointMacs:
    """:class:`JointMacs` of a bundled joint-attention model (``MODELS`` key) or a model folder, at its
    pipeline's resolution and prompt length (SD3: 77 CLIP + 256 T5 tokens; FLUX: 512 T5 tokens;
    Qwen-Image: 512, its cap; HunyuanVideo: 256 Llama tokens) and, for HunyuanVideo, its ``frames``
    (default 129). Cached: counting a full-size model takes a few seconds."""
    return _joint_macs(model, resolution, text_len, frames)


@functools.lru_cache(maxsize=16)
def _joint_macs(
    model: str, resolution: Resolution | None, text_len: int | None, frames: int | None
) -> JointMacs:
    target = resolve_target(model, resolution, text_len, frames)
    if type(target.denoiser).__name__ not in JOINT_DENOISERS:
        raise AccountingError(
            f"{target.label} is a {type(target.denoiser).__name__}, not a joint-attention transformer "
            f"({', '.join(JOINT_DENOISERS)})."
        )
    args, kwargs = target.inputs()
    return count_joint(target.denoiser, args, kwargs, target.label, target.cfg_layout, target.cfg)
