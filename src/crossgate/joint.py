"""TGATE for joint-attention transformers: after the gate, freeze the text stream.

In MMDiT models (SD3, FLUX, Qwen-Image, HunyuanVideo) text and image tokens share one attention; there is no cross-attention
output to cache. The counterpart of TGATE's cache is the **text stream**: what the text tokens
contribute to every block (their keys and values) and what each block hands on for them. It converges
in the first steps like cross-attention does, so after the gate crossgate stops computing it.

Semantics, with ``TGateConfig(gate_step=m)`` on a joint-attention family (``text_stream="frozen"``,
the default, and the family's ``post_gate_inputs="cond"``):

* steps ``0 .. m-1`` run exactly as the plain pipeline (bit for bit);
* from step ``m`` on, under CFG, only the fed branch runs (the same CFG drop as every family:
  batched ``[uncond; cond]`` pipelines run the cond half and hand its prediction back for both
  halves; sequential ones, FLUX with ``true_cfg_scale > 1``, skip the uncond call);
* in every joint block the text stream is frozen at its values from step ``m-1`` of the fed branch:
  the text keys and values the image queries attend to are the ones that block used at step ``m-1``
  (after its norms, qk-norm and rotary embedding), and the text output the block hands on is the one
  it handed on at step ``m-1``. No text-side module runs: in double-stream blocks no ``norm1_context``,
  ``add_q/k/v_proj``, ``to_add_out``, ``ff_context`` and no text query rows; in single-stream blocks
  (FLUX's ``single_transformer_blocks``, shared weights over ``[text; image]``) the projections run on
  the image rows only (Qwen-Image: no ``txt_mod``/``txt_norm*``/``txt_mlp``). Image tokens attend over
  their fresh keys/values and the frozen text ones, in the block's own token order (SD3 and
  HunyuanVideo ``[image; text]``, FLUX and Qwen-Image ``[text; image]``) under the block's own mask;
* without CFG (FLUX.1-dev's distilled guidance, HunyuanVideo's default) only the text freeze applies.

Named variants (``TGateConfig.text_stream``): ``"frozen_mean"`` freezes the CFG mean of the two
branches' step ``m-1`` text keys, values and outputs (TGATE's mean, applied to the text stream);
``"live"`` keeps computing the text stream (the CFG drop alone). ``keep_cfg=True`` keeps both CFG
branches after the gate, each with its own frozen text stream (the text freeze alone).

Memory: each joint block holds its frozen keys and values (and text output) from step ``m-1`` until
the call ends: ``blocks x 3 x rows x text_tokens x hidden`` elements (single-stream blocks 2, no text
output kept separately from the rows they hand on: 3 as well). See docs/joint-attention.md.

This module holds the model knowledge: per block class a :class:`JointKind` knows how to recompute
the text keys/values exactly as the block's processor did and how to run the block's image side
alone. Supported processors are the stock ones; anything else is refused at ``apply()``. The hook
that uses it, ``crossgate.hooks.JointBlockHook`` (one per block), reads only its lane's mode and
``lane.capture`` (set at the last step before the gate); the model's gate moves what a block kept
into the call's records and hands the frozen values back in. Imports nothing of crossgate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F


@dataclass
class TextStream:
    """One block's frozen text side: keys, values (as its attention uses them) and its text output."""

    key: torch.Tensor
    value: torch.Tensor
    output: torch.Tensor | None  # None: the block hands no text on (SD3's last, ``context_pre_only``)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextStream:
        return TextStream(fn(self.key), fn(self.value), None if self.output is None else fn(self.output))

    def mean_with(self, other: TextStream) -> TextStream:
        out = None if self.output is None or other.output is None else (self.output + other.output) / 2
        return TextStream((self.key + other.key) / 2, (self.value + other.value) / 2, out)

    def difference(self, other: TextStream) -> float:
        """Relative change of the keys, values and output from ``other`` (convergence curves)."""
        parts = [(self.key, other.key), (self.value, other.value)]
        if self.output is not None and other.output is not None:
            parts.append((self.output, other.output))
        num = sum(float((a.float() - b.float()).norm()) ** 2 for a, b in parts)
        den = sum(float(b.float().norm()) ** 2 for _, b in parts)
        return (num / den) ** 0.5 if den > 0 else 0.0


class JointKind:
    """How one joint block class exposes its text side (subclass per block class)."""

    block_types: tuple[str, ...] = ()
    processors: tuple[str, ...] = ()
    # the block's forward parameters in order: a positional call (HunyuanVideo's, checkpointing) is
    # read by name; positional arguments past these are ones the block ignores (``*args``)
    arg_names: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "temb")
    text_output: int = 0  # where the block's output tuple has the text stream (the image one: the other)
    attn_name: str = "attn"  # the block's joint attention module
    # the block takes one [text; image] sequence and returns one tensor (Chroma's single-stream
    # blocks); its hook adds ``text_tokens`` (where the text ends) to the arguments it hands over
    concatenated: bool = False
    # what the block's sequence holds: "joint" (text and image), or one stream alone where a model
    # refines each before joining them (Lumina2's ``context_refiner`` "text", ``noise_refiner`` "image")
    stream: str = "joint"
    # the ``ModuleList`` the block sits in, where one block class plays several parts (Lumina2); "" any
    parent: str = ""
    # a concatenated block's token order: ``[text; image]``, or ``[image; text]`` (Z-Image)
    text_first: bool = True

    def claims(self, name: str) -> bool:
        """Whether the block at ``name`` (its path in the denoiser) is this kind's."""
        return not self.parent or name.rsplit(".", 2)[-2:-1] == [self.parent]

    def attention(self, block: Any) -> Any:
        return getattr(block, self.attn_name)

    def bind(self, args: tuple, kwargs: dict) -> dict:
        """The block's arguments by name."""
        return {**dict(zip(self.arg_names, args)), **kwargs} if args else kwargs

    def pair(self, text: Any, image: Any) -> tuple[Any, Any]:
        """The block's output tuple of a text and an image stream, in the block's order."""
        return (text, image) if self.text_output == 0 else (image, text)

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        raise NotImplementedError

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        raise NotImplementedError

    def passthrough(self, kwargs: dict) -> Any:
        """A skipped block (sequential CFG's uncond call): both streams handed through."""
        return self.pair(kwargs["encoder_hidden_states"], kwargs["hidden_states"])

    def check(self, block: Any) -> str | None:
        """Why this block cannot be gated (a processor crossgate does not know), or None."""
        processor = type(self.attention(block).processor).__name__
        if processor not in self.processors:
            return (
                f"{type(block).__name__}.{self.attn_name} uses {processor}; crossgate freezes the text stream only "
                f"with the stock processor ({', '.join(self.processors)}). Remove the custom processor "
                "(e.g. an IP-Adapter) or leave this pipeline ungated."
            )
        return None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)


class SD3Joint(JointKind):
    """``JointTransformerBlock`` (SD3, SD3.5, AuraFlow's MMDiT blocks): tokens ``[image; text]``."""

    block_types = ("JointTransformerBlock",)
    processors = ("JointAttnProcessor2_0",)

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn = block.attn
        text, temb = kwargs["encoder_hidden_states"], kwargs["temb"]
        if block.context_pre_only:
            normed = block.norm1_context(text, temb)
        else:
            normed = block.norm1_context(text, emb=temb)[0]
        key, value = _heads(attn.add_k_proj(normed), attn.heads), _heads(attn.add_v_proj(normed), attn.heads)
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        return TextStream(key, value, output[0])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden, temb = kwargs["hidden_states"], kwargs["temb"]
        extra = kwargs.get("joint_attention_kwargs") or {}
        if block.use_dual_attention:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp, normed2, gate_msa2 = block.norm1(
                hidden, emb=temb
            )
        else:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)
        attn = block.attn
        query, key, value = (_heads(p(normed), attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        key = torch.cat([key, frozen.key], dim=2)
        value = torch.cat([value, frozen.value], dim=2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(hidden.shape[0], -1, attn.heads * out.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        hidden = hidden + gate_msa.unsqueeze(1) * out
        if block.use_dual_attention:
            hidden = hidden + gate_msa2.unsqueeze(1) * block.attn2(hidden_states=normed2, **extra)
        normed = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(normed)
        return frozen.output, hidden


def _flux_qkv(attn: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if attn.fused_projections:
        parts = attn.to_qkv(x).chunk(3, dim=-1)
    else:
        parts = (attn.to_q(x), attn.to_k(x), attn.to_v(x))
    return tuple(p.unflatten(-1, (-1, attn.head_dim)) for p in parts)


def _rope(x: torch.Tensor, rotary: Any) -> torch.Tensor:
    """FLUX's rotary embedding on ``(batch, tokens, heads, dim)`` (positions along dim 1)."""
    from diffusers.models.embeddings import apply_rotary_emb

    return cast(torch.Tensor, apply_rotary_emb(x, rotary, sequence_dim=1))


def _with_rotary(x: torch.Tensor, kwargs: dict, start: int, stop: int | None) -> torch.Tensor:
    """``x`` with FLUX's rotary embedding of token rows ``start:stop`` (the block's table), if it has one."""
    table = kwargs.get("image_rotary_emb")
    return x if table is None else _rope(x, tuple(t[start:stop] for t in table))


def _attend(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any = None) -> Any:
    """Attention over ``(batch, tokens, heads, dim)`` with the processor's backend, heads merged."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=0.0,
        is_causal=False,
        backend=attn.processor._attention_backend,
        parallel_config=attn.processor._parallel_config,
    )
    return out.flatten(2, 3).to(query.dtype)


def _flux_image_attention(
    attn: Any, normed: torch.Tensor, frozen: TextStream, kwargs: dict, mask: Any = None
) -> torch.Tensor:
    """The image rows' attention output (before any output projection) against the frozen text.

    Image queries/keys/values from ``normed`` (qk-norm, rotary of the image rows), keys and values in
    FLUX's ``[text; image]`` order, dispatched with the processor's attention backend.
    """
    query, key, value = _flux_qkv(attn, normed)
    text_len = frozen.key.shape[1]
    query = _with_rotary(attn.norm_q(query), kwargs, text_len, None)
    key = _with_rotary(attn.norm_k(key), kwargs, text_len, None)
    return _attend(
        attn, query, torch.cat([frozen.key, key], dim=1), torch.cat([frozen.value, value], dim=1), mask
    )


class FluxDouble(JointKind):
    """``FluxTransformerBlock`` (FLUX.1 and its pipelines): tokens ``[text; image]``, rotary on both.

    Chroma's block is this one with other modulation inputs and a mask: the three small methods below
    are what it overrides."""

    block_types = ("FluxTransformerBlock",)
    processors = ("FluxAttnProcessor",)

    def _text_emb(self, kwargs: dict) -> torch.Tensor:
        return cast(torch.Tensor, kwargs["temb"])

    def _image_emb(self, kwargs: dict) -> torch.Tensor:
        return cast(torch.Tensor, kwargs["temb"])

    def _mask(self, kwargs: dict, text_tokens: int) -> Any:
        return None

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn, text = block.attn, kwargs["encoder_hidden_states"]
        normed = block.norm1_context(text, emb=self._text_emb(kwargs))[0]
        if attn.fused_projections:
            _, key, value = attn.to_added_qkv(normed).chunk(3, dim=-1)
        else:
            key, value = attn.add_k_proj(normed), attn.add_v_proj(normed)
        key, value = key.unflatten(-1, (-1, attn.head_dim)), value.unflatten(-1, (-1, attn.head_dim))
        key = _with_rotary(attn.norm_added_k(key), kwargs, 0, text.shape[1])
        return TextStream(key, value, output[0])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden, attn = kwargs["hidden_states"], block.attn
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=self._image_emb(kwargs))
        out = _flux_image_attention(attn, normed, frozen, kwargs, self._mask(kwargs, frozen.key.shape[1]))
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        hidden = hidden + gate_msa.unsqueeze(1) * out
        normed = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(normed)
        return frozen.output, hidden


class FluxSingle(JointKind):
    """``FluxSingleTransformerBlock``: shared weights over ``[text; image]``; only image rows run."""

    block_types = ("FluxSingleTransformerBlock",)
    processors = ("FluxAttnProcessor",)

    @staticmethod
    def _text_rows(block: Any, kwargs: dict, text: torch.Tensor, output: torch.Tensor) -> TextStream:
        """The text rows' keys and values (``text``: the rows the block's norm takes) and their output."""
        attn = block.attn
        normed, _ = block.norm(text, emb=kwargs["temb"])  # per token: the text rows of the joint norm
        if attn.fused_projections:  # one fused projection: the query columns come with it
            _, key, value = _flux_qkv(attn, normed)
        else:  # keys and values only: no text query rows
            key, value = (p(normed).unflatten(-1, (-1, attn.head_dim)) for p in (attn.to_k, attn.to_v))
        key = _with_rotary(attn.norm_k(key), kwargs, 0, text.shape[1])
        return TextStream(key, value, output)

    @staticmethod
    def _image_rows(
        block: Any, frozen: TextStream, hidden: torch.Tensor, kwargs: dict, mask: Any = None
    ) -> Any:
        """The block's output for the image rows ``hidden`` against the frozen text."""
        attn = block.attn
        normed, gate = block.norm(hidden, emb=kwargs["temb"])
        mlp = block.act_mlp(block.proj_mlp(normed))
        out = _flux_image_attention(attn, normed, frozen, kwargs, mask)
        hidden = hidden + gate.unsqueeze(1) * block.proj_out(torch.cat([out, mlp], dim=2))
        if hidden.dtype == torch.float16:
            hidden = hidden.clip(-65504, 65504)
        return hidden

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        return self._text_rows(block, kwargs, kwargs["encoder_hidden_states"], output[0])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        return frozen.output, self._image_rows(block, frozen, kwargs["hidden_states"], kwargs)


def _chroma_image_rows_mask(kwargs: dict, text_tokens: int) -> Any:
    """Chroma's pairwise mask (``m[:, None, None, :] * m[:, None, :, None]``), the image query rows."""
    mask = kwargs.get("attention_mask")
    if mask is None:
        return None
    return mask[:, None, None, :] * mask[:, None, text_tokens:, None]


class ChromaDouble(FluxDouble):
    """``ChromaTransformerBlock``: FLUX's double-stream block with pruned modulation (``temb`` holds the
    image's 6 vectors, then the text's) and a text padding mask."""

    block_types = ("ChromaTransformerBlock",)
    arg_names = (
        "hidden_states",
        "encoder_hidden_states",
        "temb",
        "image_rotary_emb",
        "attention_mask",
        "joint_attention_kwargs",
    )

    def _text_emb(self, kwargs: dict) -> torch.Tensor:
        return cast(torch.Tensor, kwargs["temb"][:, 6:])

    def _image_emb(self, kwargs: dict) -> torch.Tensor:
        return cast(torch.Tensor, kwargs["temb"][:, :6])

    def _mask(self, kwargs: dict, text_tokens: int) -> Any:
        return _chroma_image_rows_mask(kwargs, text_tokens)


class ChromaSingle(FluxSingle):
    """``ChromaSingleTransformerBlock``: FLUX's single-stream computation on one ``[text; image]``
    sequence in and out; only the image rows run, the text rows handed on are the frozen ones."""

    block_types = ("ChromaSingleTransformerBlock",)
    arg_names = ("hidden_states", "temb", "image_rotary_emb", "attention_mask", "joint_attention_kwargs")
    concatenated = True

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs["hidden_states"]

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        tokens = kwargs["text_tokens"]
        return self._text_rows(block, kwargs, kwargs["hidden_states"][:, :tokens], output[:, :tokens])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        tokens = frozen.key.shape[1]
        mask = _chroma_image_rows_mask(kwargs, tokens)
        hidden = self._image_rows(block, frozen, kwargs["hidden_states"][:, tokens:], kwargs, mask)
        assert frozen.output is not None  # a single-stream block always hands its text rows on
        return torch.cat([frozen.output, hidden], dim=1)


def _aura_heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads)


def _aura_image_attention(attn: Any, normed: torch.Tensor, frozen: TextStream) -> torch.Tensor:
    """AuraFlow's processor for the image queries: keys and values ``[text; image]``, its own scale."""
    query, key, value = (_aura_heads(attn, p(normed)) for p in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    key, value = torch.cat([frozen.key, key], dim=1), torch.cat([frozen.value, value], dim=1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=0.0, scale=attn.scale
    )
    out = out.transpose(1, 2).reshape(normed.shape[0], -1, attn.heads * out.shape[-1]).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _aura_rest(block: Any, hidden: torch.Tensor, out: torch.Tensor, modulation: tuple) -> torch.Tensor:
    """The block after its attention, image rows: fp32 norm, modulation, feed-forward, residuals."""
    gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
    normed = block.norm2(hidden + gate_msa.unsqueeze(1) * out)
    normed = normed * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return hidden + gate_mlp.unsqueeze(1) * block.ff(normed)


class AuraFlowDouble(JointKind):
    """``AuraFlowJointTransformerBlock`` (MMDiT, ``[text; image]``, qk-norm, fp32 norms)."""

    block_types = ("AuraFlowJointTransformerBlock",)
    processors = ("AuraFlowAttnProcessor2_0",)
    arg_names = ("hidden_states", "encoder_hidden_states", "temb", "attention_kwargs")

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn = block.attn
        normed = block.norm1_context(kwargs["encoder_hidden_states"], emb=kwargs["temb"])[0]
        key, value = _aura_heads(attn, attn.add_k_proj(normed)), _aura_heads(attn, attn.add_v_proj(normed))
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        return TextStream(key, value, output[0])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden = kwargs["hidden_states"]
        normed, *modulation = block.norm1(hidden, emb=kwargs["temb"])
        out = _aura_image_attention(block.attn, normed, frozen)
        return frozen.output, _aura_rest(block, hidden, out, tuple(modulation))


class AuraFlowSingle(JointKind):
    """``AuraFlowSingleTransformerBlock``: one ``[text; image]`` sequence (the text rows after the
    model's register tokens), shared weights; only the image rows run."""

    block_types = ("AuraFlowSingleTransformerBlock",)
    processors = ("AuraFlowAttnProcessor2_0",)
    arg_names = ("hidden_states", "temb", "attention_kwargs")
    concatenated = True

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs["hidden_states"]

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn, tokens = block.attn, kwargs["text_tokens"]
        normed = block.norm1(kwargs["hidden_states"][:, :tokens], emb=kwargs["temb"])[0]  # per token
        key, value = _aura_heads(attn, attn.to_k(normed)), _aura_heads(attn, attn.to_v(normed))
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return TextStream(key, value, output[:, :tokens])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        tokens = frozen.key.shape[1]
        hidden = kwargs["hidden_states"][:, tokens:]
        normed, *modulation = block.norm1(hidden, emb=kwargs["temb"])
        out = _aura_image_attention(block.attn, normed, frozen)
        assert frozen.output is not None  # a single-stream block always hands its text rows on
        return torch.cat([frozen.output, _aura_rest(block, hidden, out, tuple(modulation))], dim=1)


def prepended_text_tokens(model: Any) -> int:
    """Tokens a transformer puts before the text it is given (AuraFlow's register tokens): they ride in
    its text stream, so a concatenated block's text length is the prompt's plus these."""
    registers = getattr(model, "register_tokens", None)
    return int(registers.shape[1]) if isinstance(registers, torch.Tensor) else 0


def text_tokens(model: Any, args: tuple, kwargs: dict) -> int:
    """How many text rows a concatenated block's sequence has in one denoiser call (the gate writes it
    into the lane). Lumina2 drops each prompt's padding before joining text and image: the text
    rows are the longest prompt's unpadded length (``encoder_attention_mask``). Z-Image takes one
    caption per sample (``cap_feats``, a list) and pads each to a multiple of 32 before appending it
    to the image: the longest padded caption."""
    if type(model).__name__ == "HiDreamImageTransformer2DModel":  # its single blocks: T5, LLaMA, LLaMA
        t5, llama = kwargs["encoder_hidden_states_t5"], kwargs["encoder_hidden_states_llama3"]
        return int(t5.shape[1]) + 2 * int(llama.shape[2])
    if type(model).__name__ == "ZImageTransformer2DModel":
        from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

        captions = args[2] if len(args) > 2 else kwargs.get("cap_feats")
        return max((len(c) + (-len(c)) % SEQ_MULTI_OF for c in captions or ()), default=0)
    text = kwargs.get("encoder_hidden_states")
    if not (isinstance(text, torch.Tensor) and text.ndim == 3):
        return 0
    mask = kwargs.get("encoder_attention_mask")
    if isinstance(mask, torch.Tensor) and type(model).__name__ == "Lumina2Transformer2DModel":
        return int(mask.sum(dim=1).max())
    return int(text.shape[1]) + prepended_text_tokens(model)


def _lumina2_rows(kwargs: dict, text: int) -> tuple[Any, Any]:
    """The image rows of a Lumina2 unified sequence ``[text_i; image; padding]`` (``text``: the
    longest prompt's rows): ``(index, key mask)``. Prompts of one length (the model passes no mask) are
    a plain slice; otherwise each sample's image starts after its own prompt, and the text keys past
    that prompt are masked as the model masks them."""
    hidden, mask = kwargs["hidden_states"], kwargs.get("attention_mask")
    if mask is None:
        return (slice(None), slice(text, None)), None
    image = hidden.shape[1] - text
    lengths = mask.sum(dim=1) - image  # each sample's prompt rows
    index = lengths[:, None] + torch.arange(image, device=hidden.device)
    text_mask = torch.arange(text, device=hidden.device) < lengths[:, None]
    keys = torch.cat([text_mask, text_mask.new_ones(hidden.shape[0], image)], dim=1)
    return (torch.arange(hidden.shape[0], device=hidden.device)[:, None], index), keys[:, None, None, :]


def _lumina2_kv(attn: Any, normed: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Lumina2's keys (qk-norm, rotary) and values, ``kv_heads`` of them (grouped-query attention)."""
    from diffusers.models.embeddings import apply_rotary_emb

    key, value = attn.to_k(normed), attn.to_v(normed)
    head_dim = attn.inner_dim // attn.heads
    key, value = (t.view(normed.shape[0], -1, t.shape[-1] // head_dim, head_dim) for t in (key, value))
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rotary is not None:
        key = apply_rotary_emb(key, rotary, use_real=False)
    return key.to(normed.dtype), value


class Lumina2Joint(JointKind):
    """``Lumina2TransformerBlock`` in ``layers``: shared weights over one ``[text; image]`` sequence
    per sample (each prompt unpadded, the batch padded at the end), rotary on both, grouped-query
    attention; only the image rows run."""

    block_types = ("Lumina2TransformerBlock",)
    processors = ("Lumina2AttnProcessor2_0",)
    arg_names = ("hidden_states", "attention_mask", "image_rotary_emb", "temb")
    concatenated = True
    parent = "layers"

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs["hidden_states"]

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        tokens, rotary = kwargs["text_tokens"], kwargs["image_rotary_emb"]
        normed = block.norm1(kwargs["hidden_states"][:, :tokens], kwargs["temb"])[0]  # per token
        key, value = _lumina2_kv(block.attn, normed, None if rotary is None else rotary[:, :tokens])
        return TextStream(key, value, output[:, :tokens])

    @staticmethod
    def _image_rows(
        block: Any, frozen: TextStream | None, hidden: torch.Tensor, rotary: Any, temb: Any, mask: Any = None
    ) -> torch.Tensor:
        """The stock block on the image rows ``hidden``, attending over ``[frozen text; image]`` (over
        the image alone without ``frozen``)."""
        from diffusers.models.embeddings import apply_rotary_emb

        attn = block.attn
        normed, gate_msa, scale_mlp, gate_mlp = block.norm1(hidden, temb)
        head_dim = attn.inner_dim // attn.heads
        query = attn.to_q(normed).view(hidden.shape[0], -1, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if rotary is not None:
            query = apply_rotary_emb(query, rotary, use_real=False)
        key, value = _lumina2_kv(attn, normed, rotary)
        if frozen is not None:
            key, value = torch.cat([frozen.key, key], dim=1), torch.cat([frozen.value, value], dim=1)
        repeat = attn.heads // key.shape[2]
        key, value = (t.repeat_interleave(repeat, dim=2) for t in (key, value))
        out = F.scaled_dot_product_attention(
            query.to(normed.dtype).transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=mask,
            scale=attn.scale,
        )
        out = out.transpose(1, 2).reshape(hidden.shape[0], -1, attn.heads * head_dim).type_as(query)
        out = attn.to_out[1](attn.to_out[0](out))
        hidden = hidden + gate_msa.unsqueeze(1).tanh() * block.norm2(out)
        mlp = block.feed_forward(block.ffn_norm1(hidden) * (1 + scale_mlp.unsqueeze(1)))
        return hidden + gate_mlp.unsqueeze(1).tanh() * block.ffn_norm2(mlp)

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden, rotary, tokens = kwargs["hidden_states"], kwargs["image_rotary_emb"], frozen.key.shape[1]
        rows, mask = _lumina2_rows(kwargs, tokens)
        image = self._image_rows(
            block, frozen, hidden[rows], None if rotary is None else rotary[rows], kwargs["temb"], mask
        )
        assert frozen.output is not None  # a unified block always hands its text rows on
        if mask is None:
            return torch.cat([frozen.output, image], dim=1)
        # each sample's image rows after its own prompt; rows past them are padding nothing reads
        return torch.cat([frozen.output, torch.zeros_like(image)], dim=1).index_put(rows, image)


class Lumina2Context(JointKind):
    """``Lumina2TransformerBlock`` in ``context_refiner`` (the prompt alone, before the unified
    layers). After the gate those layers take their text rows from the frozen stream, so nothing reads
    this block's output: it runs nothing and hands its input on."""

    block_types = Lumina2Joint.block_types
    processors = Lumina2Joint.processors
    arg_names: tuple[str, ...] = Lumina2Joint.arg_names
    stream = "text"
    parent = "context_refiner"

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs[self.arg_names[0]]

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        empty = kwargs[self.arg_names[0]][:, :0]
        return TextStream(empty, empty, None)  # nothing to keep

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        return kwargs[self.arg_names[0]]


class Lumina2Noise(Lumina2Context):
    """``Lumina2TransformerBlock`` in ``noise_refiner`` (the image alone): runs as written, through
    crossgate only so that the uncond call sequential CFG skips after the gate skips it too."""

    stream = "image"
    parent = "noise_refiner"

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        return Lumina2Joint._image_rows(
            block, None, kwargs["hidden_states"], kwargs["image_rotary_emb"], kwargs["temb"]
        )


def _zimage_rope(x: torch.Tensor, freqs: Any) -> torch.Tensor:
    """Z-Image's processor's own rotary embedding (complex, per sample and token)."""
    if freqs is None:
        return x
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs.unsqueeze(2)
    return torch.view_as_real(rotated).flatten(3).type_as(x)


def _zimage_kv(attn: Any, normed: torch.Tensor, freqs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    key, value = (p(normed).unflatten(-1, (attn.heads, -1)) for p in (attn.to_k, attn.to_v))
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return _zimage_rope(key, freqs), value


class ZImageJoint(JointKind):
    """``ZImageTransformerBlock`` in ``layers``: shared weights over one ``[image; text]`` sequence per
    sample (each caption padded to a multiple of 32, the batch padded at the end under a mask), one
    modulation for all tokens; only the image rows run. The image rows come first and have one length
    in a batch, so the text rows are the last ``text_tokens`` of the sequence."""

    block_types = ("ZImageTransformerBlock",)
    processors = ("ZSingleStreamAttnProcessor",)
    arg_names = ("x", "attn_mask", "freqs_cis", "adaln_input", "noise_mask", "adaln_noisy", "adaln_clean")
    attn_name = "attention"
    concatenated = True
    parent = "layers"
    text_first = False

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs["x"]

    @staticmethod
    def _modulation(block: Any, kwargs: dict) -> tuple[torch.Tensor, ...]:
        scale_msa, gate_msa, scale_mlp, gate_mlp = (
            block.adaLN_modulation(kwargs["adaln_input"]).unsqueeze(1).chunk(4, dim=2)
        )
        return 1.0 + scale_msa, gate_msa.tanh(), 1.0 + scale_mlp, gate_mlp.tanh()

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        hidden, freqs = kwargs["x"], kwargs.get("freqs_cis")
        image = hidden.shape[1] - kwargs["text_tokens"]
        normed = block.attention_norm1(hidden[:, image:]) * self._modulation(block, kwargs)[0]
        key, value = _zimage_kv(block.attention, normed, None if freqs is None else freqs[:, image:])
        return TextStream(key, value, output[:, image:])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden, freqs, attn = kwargs["x"], kwargs.get("freqs_cis"), block.attention
        text = kwargs["text_tokens"]  # this pass's; the frozen rows past it are padding here
        image = hidden.shape[1] - text
        rows, freqs = hidden[:, :image], None if freqs is None else freqs[:, :image]
        scale_msa, gate_msa, scale_mlp, gate_mlp = self._modulation(block, kwargs)
        normed = block.attention_norm1(rows) * scale_msa
        query = attn.to_q(normed).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        key, value = _zimage_kv(attn, normed, freqs)
        key = torch.cat([key, frozen.key[:, :text]], dim=1)
        value = torch.cat([value, frozen.value[:, :text]], dim=1)
        mask = kwargs.get("attn_mask")
        mask = mask[:, None, None, :] if mask is not None and mask.ndim == 2 else mask
        out = attn.to_out[0](_attend(attn, _zimage_rope(query, freqs), key, value, mask))
        if len(attn.to_out) > 1:
            out = attn.to_out[1](out)
        rows = rows + gate_msa * block.attention_norm2(out)
        rows = rows + gate_mlp * block.ffn_norm2(block.feed_forward(block.ffn_norm1(rows) * scale_mlp))
        assert frozen.output is not None  # a unified block always hands its text rows on
        return torch.cat([rows, frozen.output[:, :text]], dim=1)


class ZImageContext(Lumina2Context):
    """``ZImageTransformerBlock`` in ``context_refiner``: as Lumina2's, nothing reads it after the gate."""

    block_types = ZImageJoint.block_types
    processors = ZImageJoint.processors
    arg_names = ZImageJoint.arg_names
    attn_name = "attention"


def _hidream_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """HiDream's ``apply_rope`` on one tensor (the whole head, or its first half as the processor does)."""
    if x.shape[-1] != freqs.shape[-3] * 2:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([_hidream_rope(first, freqs), second], dim=-1)
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(*x.shape).type_as(x)


def _hidream_kv(
    attn: Any, normed: torch.Tensor, freqs: Any, mask: Any, text: bool
) -> tuple[torch.Tensor, ...]:
    """Keys (rms-norm, the image key mask, rotary) and values of HiDream's processor, heads split."""
    to_k, to_v, norm = (
        (attn.to_k_t, attn.to_v_t, attn.k_rms_norm_t) if text else (attn.to_k, attn.to_v, attn.k_rms_norm)
    )
    batch, head_dim = normed.shape[0], attn.inner_dim // attn.heads
    key = norm(to_k(normed)).to(dtype=normed.dtype).view(batch, -1, attn.heads, head_dim)
    value = to_v(normed).view(batch, -1, attn.heads, head_dim)
    if mask is not None:
        key = key * mask.view(batch, -1, 1, 1)
    return _hidream_rope(key, freqs), value


class HiDreamDouble(JointKind):
    """``HiDreamBlock`` around a ``HiDreamImageTransformerBlock`` (``double_stream_blocks``): tokens
    ``[image; text]`` with the text ``[T5 and the last LLaMA layer (carried from block to block); this
    block's own LLaMA layer]``, rotary on both, a mixture-of-experts feed-forward for the image. The
    text stream frozen is the whole text side of the block at step ``m-1``, the LLaMA rows the model
    feeds in included (their keys and values depend on the step's modulation)."""

    block_types = ("HiDreamBlock",)
    processors = ("HiDreamAttnProcessor",)
    arg_names = ("hidden_states", "hidden_states_masks", "encoder_hidden_states", "temb", "image_rotary_emb")
    text_output = 1
    parent = "double_stream_blocks"

    def attention(self, block: Any) -> Any:
        return block.block.attn1

    @staticmethod
    def _modulation(block: Any, kwargs: dict, parts: int) -> tuple[torch.Tensor, ...]:
        return tuple(block.adaLN_modulation(kwargs["temb"])[:, None].chunk(parts, dim=-1))

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        inner, text, hidden = block.block, kwargs["encoder_hidden_states"], kwargs["hidden_states"]
        shift, scale = self._modulation(inner, kwargs, 12)[6:8]
        normed = inner.norm1_t(text).to(dtype=hidden.dtype) * (1 + scale) + shift
        freqs = kwargs["image_rotary_emb"][:, hidden.shape[1] :]
        key, value = _hidream_kv(inner.attn1, normed, freqs, None, text=True)
        return TextStream(key, value, output[1])

    @staticmethod
    def _image(inner: Any, frozen: TextStream, hidden: torch.Tensor, kwargs: dict, modulation: tuple) -> Any:
        """The block's image rows ``hidden`` (the first rows of its sequence) against the frozen text."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        attn, rows = inner.attn1, hidden.shape[1]
        normed = inner.norm1_i(hidden).to(dtype=hidden.dtype) * (1 + scale_msa) + shift_msa
        freqs, mask = kwargs["image_rotary_emb"][:, :rows], kwargs.get("hidden_states_masks")
        head_dim = attn.inner_dim // attn.heads
        query = (
            attn.q_rms_norm(attn.to_q(normed))
            .to(dtype=normed.dtype)
            .view(hidden.shape[0], -1, attn.heads, head_dim)
        )
        key, value = _hidream_kv(attn, normed, freqs, None if mask is None else mask[:, :rows], text=False)
        key, value = torch.cat([key, frozen.key], dim=1), torch.cat([value, frozen.value], dim=1)
        out = F.scaled_dot_product_attention(
            _hidream_rope(query, freqs).transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        )
        out = attn.to_out(
            out.transpose(1, 2).reshape(hidden.shape[0], -1, attn.heads * head_dim).to(query.dtype)
        )
        hidden = gate_msa * out + hidden
        normed = inner.norm3_i(hidden).to(dtype=hidden.dtype) * (1 + scale_mlp) + shift_mlp
        return gate_mlp * inner.ff_i(normed) + hidden

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        modulation = self._modulation(block.block, kwargs, 12)[:6]
        return self._image(block.block, frozen, kwargs["hidden_states"], kwargs, modulation), frozen.output


class HiDreamSingle(HiDreamDouble):
    """``HiDreamBlock`` around a ``HiDreamImageSingleTransformerBlock`` (``single_stream_blocks``): one
    ``[image; text]`` sequence (the text: T5, the last LLaMA layer, this block's LLaMA layer), shared
    weights; only the image rows run and the text rows handed on are the frozen ones."""

    text_output = 0
    concatenated = True
    text_first = False
    parent = "single_stream_blocks"

    def passthrough(self, kwargs: dict) -> Any:
        return kwargs["hidden_states"]

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        inner, hidden = block.block, kwargs["hidden_states"]
        image = hidden.shape[1] - kwargs["text_tokens"]
        shift, scale = self._modulation(inner, kwargs, 6)[:2]
        normed = inner.norm1_i(hidden[:, image:]).to(dtype=hidden.dtype) * (1 + scale) + shift
        mask = kwargs.get("hidden_states_masks")
        freqs = kwargs["image_rotary_emb"][:, image:]
        key, value = _hidream_kv(
            inner.attn1, normed, freqs, None if mask is None else mask[:, image:], text=False
        )
        return TextStream(key, value, output[:, image:])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        hidden = kwargs["hidden_states"]
        image = hidden.shape[1] - kwargs["text_tokens"]
        modulation = self._modulation(block.block, kwargs, 6)
        rows = self._image(block.block, frozen, hidden[:, :image], kwargs, modulation)
        assert frozen.output is not None  # a single-stream block always hands its text rows on
        return torch.cat([rows, frozen.output], dim=1)


class QwenDouble(JointKind):
    """``QwenImageTransformerBlock`` (Qwen-Image and its Edit pipelines): tokens ``[text; image]``.

    The text side is ``txt_mod``/``txt_norm1``/``txt_norm2``/``txt_mlp`` and the attention's ``add_*``
    projections; rotary positions come as ``(image table, text table)``; the text mask rides along.
    """

    block_types = ("QwenImageTransformerBlock",)
    processors = ("QwenDoubleStreamAttnProcessor2_0",)
    arg_names = (
        "hidden_states",
        "encoder_hidden_states",
        "encoder_hidden_states_mask",
        "temb",
        "image_rotary_emb",
        "joint_attention_kwargs",
        "modulate_index",
    )

    @staticmethod
    def _rope(x: torch.Tensor, kwargs: dict, index: int) -> torch.Tensor:
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        table = kwargs.get("image_rotary_emb")
        return (
            x if table is None else cast(torch.Tensor, apply_rotary_emb_qwen(x, table[index], use_real=False))
        )

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn, text, temb = block.attn, kwargs["encoder_hidden_states"], kwargs["temb"]
        if block.zero_cond_t:
            temb = torch.chunk(temb, 2, dim=0)[0]
        txt_mod1 = block.txt_mod(temb).chunk(2, dim=-1)[0]
        normed, _ = block._modulate(block.txt_norm1(text), txt_mod1)
        head_dim = attn.inner_dim // attn.heads
        key = attn.add_k_proj(normed).unflatten(-1, (-1, head_dim))
        value = attn.add_v_proj(normed).unflatten(-1, (-1, head_dim))
        if attn.norm_added_k is not None:
            key = attn.norm_added_k(key)
        return TextStream(self._rope(key, kwargs, 1), value, output[0])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        attn, hidden, index = block.attn, kwargs["hidden_states"], kwargs.get("modulate_index")
        img_mod1, img_mod2 = block.img_mod(kwargs["temb"]).chunk(2, dim=-1)
        normed, gate1 = block._modulate(block.img_norm1(hidden), img_mod1, index)
        head_dim = attn.inner_dim // attn.heads
        query, key, value = (
            p(normed).unflatten(-1, (-1, head_dim)) for p in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query, key = self._rope(query, kwargs, 0), self._rope(key, kwargs, 0)
        text_mask, mask = kwargs.get("encoder_hidden_states_mask"), None
        if text_mask is not None:  # the processor's joint mask: text mask, then every image token
            image_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            mask = torch.cat([text_mask, image_mask], dim=1)[:, None, None, :]
        out = _attend(attn, query, torch.cat([frozen.key, key], 1), torch.cat([frozen.value, value], 1), mask)
        out = attn.to_out[0](out.contiguous())
        if len(attn.to_out) > 1:
            out = attn.to_out[1](out)
        hidden = hidden + gate1 * out
        normed, gate2 = block._modulate(block.img_norm2(hidden), img_mod2, index)
        hidden = hidden + gate2 * block.img_mlp(normed)
        if hidden.dtype == torch.float16:
            hidden = hidden.clip(-65504, 65504)
        return frozen.output, hidden


def _hunyuan_qkv(attn: Any, x: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, ...]:
    """HunyuanVideo's image queries/keys/values: heads split, qk-norm, rotary (image rows only)."""
    query, key, value = (p(x).unflatten(2, (attn.heads, -1)) for p in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rotary is not None:
        query, key = _rope(query, rotary), _rope(key, rotary)
    return query, key, value


def _hunyuan_text_kv(attn: Any, normed: torch.Tensor, added: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """HunyuanVideo's text keys/values (no rotary on text): the ``add_*`` projections or the shared ones."""
    to_k, to_v = (attn.add_k_proj, attn.add_v_proj) if added else (attn.to_k, attn.to_v)
    key, value = to_k(normed).unflatten(2, (attn.heads, -1)), to_v(normed).unflatten(2, (attn.heads, -1))
    norm = attn.norm_added_k if added else attn.norm_k
    return (key if norm is None else norm(key)), value


class HunyuanDouble(JointKind):
    """``HunyuanVideoTransformerBlock``: tokens ``[image; text]``, rotary on image only, output (image, text)."""

    block_types = ("HunyuanVideoTransformerBlock",)
    processors = ("HunyuanVideoAttnProcessor2_0",)
    arg_names = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask", "freqs_cis")
    text_output = 1

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        normed = block.norm1_context(kwargs["encoder_hidden_states"], emb=kwargs["temb"])[0]
        key, value = _hunyuan_text_kv(block.attn, normed, added=True)
        return TextStream(key, value, output[1])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        attn, hidden = block.attn, kwargs["hidden_states"]
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=kwargs["temb"])
        query, key, value = _hunyuan_qkv(attn, normed, kwargs.get("freqs_cis"))
        key, value = torch.cat([key, frozen.key], 1), torch.cat([value, frozen.value], 1)
        out = attn.to_out[1](attn.to_out[0](_attend(attn, query, key, value, kwargs.get("attention_mask"))))
        hidden = hidden + out * gate_msa.unsqueeze(1)
        normed = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(normed)
        return hidden, frozen.output


class HunyuanSingle(JointKind):
    """``HunyuanVideoSingleTransformerBlock``: shared weights over ``[image; text]``; only image rows run."""

    block_types = ("HunyuanVideoSingleTransformerBlock",)
    processors = ("HunyuanVideoAttnProcessor2_0",)
    arg_names = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask", "image_rotary_emb")
    text_output = 1

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        normed, _ = block.norm(kwargs["encoder_hidden_states"], emb=kwargs["temb"])  # per token
        key, value = _hunyuan_text_kv(block.attn, normed, added=False)
        return TextStream(key, value, output[1])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        attn, hidden = block.attn, kwargs["hidden_states"]
        normed, gate = block.norm(hidden, emb=kwargs["temb"])
        mlp = block.act_mlp(block.proj_mlp(normed))
        query, key, value = _hunyuan_qkv(attn, normed, kwargs.get("image_rotary_emb"))
        key, value = torch.cat([key, frozen.key], 1), torch.cat([value, frozen.value], 1)
        out = _attend(attn, query, key, value, kwargs.get("attention_mask"))
        hidden = gate.unsqueeze(1) * block.proj_out(torch.cat([out, mlp], dim=2)) + hidden
        return hidden, frozen.output


class CogVideoXJoint(JointKind):
    """``CogVideoXBlock``: shared weights over ``[text; image]`` (``attn1``), per-stream modulation by
    ``CogVideoXLayerNormZero``, rotary on image rows; output ``(image, text)``. Only image rows run."""

    block_types = ("CogVideoXBlock",)
    processors = ("CogVideoXAttnProcessor2_0",)
    arg_names = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb", "attention_kwargs")
    text_output = 1
    attn_name = "attn1"

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn, text = block.attn1, kwargs["encoder_hidden_states"]
        normed = block.norm1(text[:, :0], text, kwargs["temb"])[1]  # the text rows' modulation only
        key, value = (_heads(p(normed), attn.heads) for p in (attn.to_k, attn.to_v))
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return TextStream(key, value, output[1])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        from diffusers.models.embeddings import apply_rotary_emb

        attn, hidden, temb = block.attn1, kwargs["hidden_states"], kwargs["temb"]
        normed, _, gate_msa, _ = block.norm1(hidden, hidden[:, :0], temb)
        query, key, value = (_heads(p(normed), attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rotary = kwargs.get("image_rotary_emb")
        if rotary is not None:
            query = cast(torch.Tensor, apply_rotary_emb(query, rotary))
            if not attn.is_cross_attention:
                key = cast(torch.Tensor, apply_rotary_emb(key, rotary))
        key, value = torch.cat([frozen.key, key], dim=2), torch.cat([frozen.value, value], dim=2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(hidden.shape[0], -1, attn.heads * out.shape[-1])
        hidden = hidden + gate_msa * attn.to_out[1](attn.to_out[0](out))
        normed, _, gate_ff, _ = block.norm2(hidden, hidden[:, :0], temb)
        hidden = hidden + gate_ff * block.ff(normed)
        return hidden, frozen.output


class CogView4Joint(JointKind):
    """``CogView4TransformerBlock``: shared weights over ``[text; image]`` (``attn1``, one ``ff``),
    per-stream modulation, rotary on image rows, an optional text mask; output ``(image, text)``."""

    block_types = ("CogView4TransformerBlock",)
    processors = ("CogView4AttnProcessor",)
    arg_names = (
        "hidden_states",
        "encoder_hidden_states",
        "temb",
        "image_rotary_emb",
        "attention_mask",
        "attention_kwargs",
    )
    text_output = 1
    attn_name = "attn1"

    def text_stream(self, block: Any, kwargs: dict, output: Any) -> TextStream:
        attn, text = block.attn1, kwargs["encoder_hidden_states"]
        normed = block.norm1(text[:, :0], text, kwargs["temb"])[5]  # the text rows' modulation only
        key, value = (
            p(normed).unflatten(2, (attn.heads, -1)).transpose(1, 2) for p in (attn.to_k, attn.to_v)
        )
        if attn.norm_k is not None:
            key = attn.norm_k(key).to(dtype=text.dtype)
        return TextStream(key, value, output[1])

    def image_only(self, block: Any, frozen: TextStream, kwargs: dict) -> Any:
        from diffusers.models.embeddings import apply_rotary_emb

        attn, hidden = block.attn1, kwargs["hidden_states"]
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, hidden[:, :0], kwargs["temb"])[
            :5
        ]
        query, key, value = (
            p(normed).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            for p in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query).to(dtype=hidden.dtype)
        if attn.norm_k is not None:
            key = attn.norm_k(key).to(dtype=hidden.dtype)
        rotary = kwargs.get("image_rotary_emb")
        if rotary is not None:
            query = cast(torch.Tensor, apply_rotary_emb(query, rotary, use_real_unbind_dim=-2))
            key = cast(torch.Tensor, apply_rotary_emb(key, rotary, use_real_unbind_dim=-2))
        text_mask, mask = kwargs.get("attention_mask"), None
        if text_mask is not None:  # the processor's mask, rows of the image queries: [text mask, ones]
            keys = torch.cat([text_mask.float(), torch.ones(hidden.shape[:2], device=hidden.device)], dim=1)
            mask = (torch.ones_like(hidden[..., :1]) @ keys.unsqueeze(1) > 0).unsqueeze(1).to(query.dtype)
        key, value = torch.cat([frozen.key, key], dim=2), torch.cat([frozen.value, value], dim=2)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden = hidden + attn.to_out[1](attn.to_out[0](out)) * gate_msa.unsqueeze(1)
        normed = block.norm2(hidden) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        hidden = hidden + block.ff(normed) * gate_mlp.unsqueeze(1)
        return hidden, frozen.output


KINDS: tuple[JointKind, ...] = (
    SD3Joint(),
    FluxDouble(),
    FluxSingle(),
    QwenDouble(),
    HunyuanDouble(),
    HunyuanSingle(),
    CogVideoXJoint(),
    CogView4Joint(),
    ChromaDouble(),
    ChromaSingle(),
    AuraFlowDouble(),
    AuraFlowSingle(),
    Lumina2Joint(),
    Lumina2Context(),
    Lumina2Noise(),
    ZImageJoint(),
    ZImageContext(),
    HiDreamDouble(),
    HiDreamSingle(),
)


def kind_of(block: Any, name: str = "") -> JointKind | None:
    """The :class:`JointKind` of ``block`` (by its class or a base's name, and where one class plays
    several parts, its place ``name`` in the denoiser), or None."""
    names = {cls.__name__ for cls in type(block).__mro__}
    return next((k for k in KINDS if names.intersection(k.block_types) and k.claims(name)), None)


def joint_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module, JointKind]]:
    """Every joint-attention block of ``denoiser`` crossgate knows, in order."""
    found = []
    for name, module in denoiser.named_modules():
        kind = kind_of(module, name)
        if kind is not None:
            found.append((name, module, kind))
    return found


def has_joint_attention(denoiser: torch.nn.Module) -> bool:
    return bool(joint_blocks(denoiser))
