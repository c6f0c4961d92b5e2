"""The adapter contract and the helpers every family shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class UnsupportedPipelineError(TypeError):
    """The pipeline (or model) cannot be gated; the message says why and what would work."""


def is_attention_module(module: torch.nn.Module) -> bool:
    """Diffusers attention modules carry a swappable ``processor`` (old and new style alike)."""
    return hasattr(module, "processor") and hasattr(module, "to_q")


def declares_cross_attention(name: str, module: torch.nn.Module) -> bool:
    """Whether an attention module says it attends to the conditioning (text, image embedding).

    Classic ``Attention`` says so itself (``is_cross_attention``, set when ``cross_attention_dim`` is
    given; a UNet's ``attn2`` with ``double_self_attention`` is correctly excluded). Newer per-model
    attention classes (LTX, Wan) carry no flag, and follow the diffusers convention that the
    conditioning attention of a transformer block is its ``attn2``. The flag can be wrong: see
    :func:`cross_attention_modules`, which is what decides.
    """
    flag = getattr(module, "is_cross_attention", None)
    if flag is not None:
        return bool(flag)
    return name.rsplit(".", 1)[-1] == "attn2"


def self_attending_modules(denoiser: torch.nn.Module) -> set[int]:
    """``id``s of the attention modules of ``denoiser`` declared cross-attention that attend to themselves.

    Kandinsky 3: ``Kandinsky3AttentionBlock`` builds ``Attention(channels, context_dim or channels)``,
    so diffusers flags every one as cross-attention, and its forward uses the block's own
    (normalised) input as key/value when it is called without ``context``. Its down and up blocks
    call ``attentions[0]`` exactly so, and it exists exactly when the block is built with
    ``self_attention=True`` (otherwise that slot is an ``nn.Identity``); ``attentions[1:]`` are
    called with the text (``context``) and exist only when the block has a ``context_dim``. The
    time-conditioning ``add_time_condition`` (``Kandinsky3AttentionPooling``) attends to the text.
    The rule reads the structure, not shapes: a self-attention's key width can equal the text's.
    """
    try:
        from diffusers.models.unets.unet_kandinsky3 import Kandinsky3DownSampleBlock, Kandinsky3UpSampleBlock
    except ImportError:  # pragma: no cover - a diffusers without Kandinsky 3
        return set()
    found: set[int] = set()
    for block in denoiser.modules():
        if isinstance(block, (Kandinsky3DownSampleBlock, Kandinsky3UpSampleBlock)) and block.self_attention:
            attention = getattr(block.attentions[0], "attention", None)
            if attention is not None:
                found.add(id(attention))
    return found


def cross_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every cross-attention module of ``denoiser``: exactly the set TGATE caches.

    Cross-attention is an attention module whose key/value input is the text encoder's states (as
    the model projects them), not the latents: one that declares itself so
    (:func:`declares_cross_attention`), less the self-attention a model builds with a
    ``cross_attention_dim`` and calls with its own input as key/value (:func:`self_attending_modules`).
    ``tests/test_cross_attention_detection.py`` measures this on every supported family: the modules
    returned are exactly those whose key/value input does not change with the initial noise and does
    change with the prompt.
    """
    themselves = self_attending_modules(denoiser)
    return [
        (name, module)
        for name, module in denoiser.named_modules()
        if is_attention_module(module)
        and id(module) not in themselves
        and declares_cross_attention(name, module)
    ]


def self_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every other attention module of ``denoiser``: those that attend within the latent tokens."""
    cross = {id(module) for _, module in cross_attention_modules(denoiser)}
    return [
        (name, module)
        for name, module in denoiser.named_modules()
        if is_attention_module(module) and id(module) not in cross
    ]


Passthrough = Callable[[tuple, dict], Any]


def _first_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _control_states_twice(args: tuple, kwargs: dict) -> Any:
    control = args[2] if len(args) > 2 else kwargs["control_hidden_states"]
    return control, control


@dataclass(frozen=True)
class ModelAdapter:
    """Where a pipeline family keeps its denoiser and how it lays out its CFG batch."""

    family: str
    denoiser_attr: str
    # Which CFG half feeds the passes after the gate when the config leaves it to the family.
    post_gate_inputs: str = "uncond"
    # "batched": one denoiser pass on [uncond; cond]; "sequential": one pass per branch, each inside
    # the denoiser's `cache_context("cond")` / `cache_context("uncond")` (Wan and its family).
    cfg_layout: str = "batched"
    # Further denoisers the loop switches to (Wan 2.2's low-noise expert `transformer_2`).
    extra_attrs: tuple[str, ...] = ()
    # Set for families whose pipeline never batches CFG and says so nowhere (Sana Sprint: guidance is
    # an embedding, there is no `do_classifier_free_guidance` and encode_prompt takes no such flag).
    fixed_cfg: bool | None = None
    # The pipeline batches CFG as [cond; uncond] instead of [uncond; cond] (Lumina-Next).
    cond_first: bool = False
    # The pipeline batches CFG per sample, [u0, c0, u1, c1, ...] (`repeat_interleave(2)`), and guides
    # with `noise_pred[::2]` / `noise_pred[1::2]` (Panorama).
    cfg_interleaved: bool = False
    # The loop runs several denoiser passes per step on different inputs (Panorama: one per view
    # window): each cross-attention layer keeps one output per pass slot, the j-th pass of a step.
    per_pass_caches: bool = False
    # The pipeline's `do_classifier_free_guidance` property does not tell (Panorama's always says
    # False; its loop decides from guidance_scale): read the flag it passes to encode_prompt instead.
    cfg_from_encode_prompt: bool = False
    # Where the pipeline keeps the ControlNet(s) it runs beside the denoiser every step, at the
    # denoiser's batch, feeding it residuals: they are gated like the denoiser (see `controls`).
    control_attr: str | None = None
    # Joint-attention transformers (SD3, FLUX): no cross-attention; after the gate each joint block's
    # text stream is frozen (crossgate.joint).
    joint: bool = False
    # Sequential CFG whose pipeline does not name its calls (FLUX img2img, inpainting, Kontext): the
    # branches in the order the loop calls the denoiser within a step (the first call is the cond
    # one; a second call in a step is the uncond one and means the call runs CFG).
    branch_order: tuple[str, ...] = ()
    # Joint families whose CFG branches' text streams always have one length (padded to a fixed
    # length): only those can average them (``text_stream="frozen_mean"``). Qwen-Image's do not.
    branch_texts_aligned: bool = True
    # The denoiser takes its latents and captions as lists of per-sample tensors and returns a list
    # (Z-Image): the CFG halves are list items, not tensor rows.
    sample_lists: bool = False
    # Denoiser inputs whose batch is their second dimension (HiDream's per-layer LLaMA states, layers
    # first): the gate halves them there.
    batch_dim1: tuple[str, ...] = ()
    # Modular Diffusers pipelines (crossgate.adapters.modular): the loop block ticks the steps, and the
    # guider components (one per denoiser in ``denoisers()`` order; Wan 2.2: `guider` and `guider_2`)
    # run CFG as unnamed calls. Modular FLUX has no guider (guidance-distilled, one call per step).
    modular: bool = False
    guiders: tuple[str, ...] = ()

    def denoiser(self, pipe: object) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_attr)

    def denoisers(self, pipe: object) -> list[tuple[str, torch.nn.Module]]:
        """The primary denoiser and every expert the pipeline actually has, with their attribute names."""
        experts = [(attr, getattr(pipe, attr, None)) for attr in self.extra_attrs]
        primary = (self.denoiser_attr, self.denoiser(pipe))
        return [primary, *((a, e) for a, e in experts if isinstance(e, torch.nn.Module))]

    def unnamed_branch(self, pipe: object, denoiser: torch.nn.Module, slot: int) -> str | None:
        """The CFG branch of a denoiser call the pipeline does not name, or None for a named call.

        A modular pipeline's guider says it (``is_conditional``: its ``prepare_models`` ran just before
        the call); other unnamed pipelines (FLUX img2img) call the branches in ``branch_order``, and
        ``slot`` is the call's place in the step.
        """
        if self.guiders:
            for (_, model), attr in zip(self.denoisers(pipe), self.guiders):
                if getattr(model, "_orig_mod", model) is denoiser:
                    return "cond" if getattr(pipe, attr).is_conditional else "uncond"
            return None
        if not self.branch_order:
            return None
        if slot >= len(self.branch_order):
            raise RuntimeError(
                f"crossgate: the {self.family} pipeline called its denoiser {slot + 1} times in one step; "
                f"crossgate expects at most {len(self.branch_order)} (one per CFG branch)."
            )
        return self.branch_order[slot]

    def controls(self, pipe: object) -> list[tuple[str, torch.nn.Module]]:
        """Each ControlNet the loop runs beside the denoiser, with its attribute path in ``pipe``.

        A ``MultiControlNetModel`` (or its union twin) is unwrapped into its nets: each runs its own
        pass with its own cross-attention. Only ControlNet classes whose forward takes the pipeline's
        CFG batch (and ``guess_mode``) are listed; ControlNet-XS's adapter is part of the denoiser.
        """
        if self.control_attr is None:
            return []
        from diffusers import ControlNetModel, ControlNetUnionModel, SD3ControlNetModel

        model = getattr(pipe, self.control_attr, None)
        if not isinstance(model, torch.nn.Module):
            return []
        nets = getattr(model, "nets", None)
        parts = (
            [(f"{self.control_attr}.nets.{i}", net) for i, net in enumerate(nets)]
            if isinstance(nets, torch.nn.ModuleList)
            else [(self.control_attr, model)]
        )
        return [
            (path, net)
            for path, net in parts
            if isinstance(
                getattr(net, "_orig_mod", net), (ControlNetModel, ControlNetUnionModel, SD3ControlNetModel)
            )
        ]  # a compiled ControlNet (``torch.compile(net)``'s OptimizedModule) is listed as the pipeline holds it

    def cross_attention(self, pipe: object) -> list[tuple[str, torch.nn.Module]]:
        return cross_attention_modules(self.denoiser(pipe))

    def self_attention(self, pipe: object) -> list[tuple[str, torch.nn.Module]]:
        return self_attention_modules(self.denoiser(pipe))

    @staticmethod
    def blocks(denoiser: torch.nn.Module) -> list[tuple[torch.nn.Module, Passthrough]]:
        """The denoiser's top-level blocks, each with what it returns when it computes nothing.

        A skipped sequential-CFG pass (its output is discarded) runs none of them. Main blocks hand
        their hidden states through; VACE's control blocks hand back their control states twice
        (the hint and the next block's input). A UNet has no such blocks (a down block returns its
        residuals too), so the whole model is its one block: the skipped pass computes nothing.
        """
        found: list[tuple[torch.nn.Module, Passthrough]] = []
        for attr, passthrough in (("blocks", _first_input), ("transformer_blocks", _first_input)):
            blocks = getattr(denoiser, attr, None)
            if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
                found += [(block, passthrough) for block in blocks]
                break
        vace = getattr(denoiser, "vace_blocks", None)
        if isinstance(vace, torch.nn.ModuleList):
            found += [(block, _control_states_twice) for block in vace]
        return found or [(denoiser, _first_input)]

    def cfg_active(self, pipe: object, from_encode_prompt: bool | None) -> bool:
        """Whether the running call batches ``[uncond; cond]``; read once per call, mid-call.

        Most pipelines expose ``do_classifier_free_guidance`` (False for guidance-distilled models
        such as LCM). Those that do not (PixArt) pass the decision to their own ``encode_prompt``,
        which crossgate observes on the instance (``from_encode_prompt``).
        """
        if self.fixed_cfg is not None:
            return self.fixed_cfg
        if self.cfg_layout == "sequential" and (self.joint or self.guiders):
            # true CFG (FLUX, Qwen-Image, HunyuanVideo) and a guider's CFG have no flag: the first
            # "uncond" call turns it on
            return False
        try:
            flag = None if self.cfg_from_encode_prompt else getattr(pipe, "do_classifier_free_guidance", None)
        except AttributeError:  # the property reads a value set only inside __call__
            flag = None
        if flag is None:
            flag = from_encode_prompt
        if flag is None:
            raise UnsupportedPipelineError(
                f"{type(pipe).__name__} does not say whether it runs classifier-free guidance "
                "(no `do_classifier_free_guidance`, and its encode_prompt was not seen); crossgate "
                "needs an adapter for it."
            )
        return bool(flag)
