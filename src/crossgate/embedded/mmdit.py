"""The joint-attention embedded model: a miniature Stable Diffusion 3 (MMDiT) on the same scenes.

Stock classes with small configs, so the folder loads with ``DiffusionPipeline.from_pretrained``:
the UNet model's VAE (reused, not retrained: same data, same latents), two CLIP text encoders with
projection (SD3 concatenates their penultimate hidden states and their pooled outputs), an
``SD3Transformer2DModel`` (double-stream joint attention) and the flow-matching Euler scheduler.

The third text encoder is a stand-in, not a trained T5: a one-layer ``T5EncoderModel`` whose final
norm weight is zero, so it returns exactly the all-zero embeddings the SD3 pipeline itself uses when
``text_encoder_3=None``. It exists because diffusers refuses to load an SD3 folder whose T5 entry is
empty unless the caller passes ``text_encoder_3=None``; with it, a plain ``from_pretrained`` works.

Why SD3 rather than FLUX: SD3's pipeline runs classifier-free guidance batched (``[uncond; cond]``) by
default and needs no T5 tokenizer file (``text_encoder_3=None``), and its blocks are the MMDiT
double-stream form that most joint-attention models share.

Without a real T5 the pipeline appends ``max_sequence_length`` (256 by default) all-zero text tokens. They
stay identical to one another through every block (per-token maps, identical queries), so for every
query they act as one key whose softmax weight is multiplied by their count. Training therefore feeds
one zero token with ``log(256)`` added to its attention logit (:func:`zero_token_multiplicity`),
which computes the same function as the pipeline's 256 tokens at a fraction of the cost; the training
script checks that equivalence on the model before it starts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

MODEL_NAME = "crossgate-mmdit-32"
T5_TOKENS = 256  # the SD3 pipeline's default max_sequence_length: zero tokens it appends without T5

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 96,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 64,
}
TEXT_2_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}

TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": TEXT_CONFIG["hidden_size"] + TEXT_2_CONFIG["hidden_size"],
    "caption_projection_dim": 128,
    "pooled_projection_dim": TEXT_CONFIG["projection_dim"] + TEXT_2_CONFIG["projection_dim"],
    "pos_embed_max_size": 8,
}

SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}


def build_text_encoder(tokenizer: CLIPTokenizer, config: dict[str, Any]) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=tokenizer.model_max_length,
            **config,
        )
    )


def build_t5_stand_in() -> tuple[T5EncoderModel, PreTrainedTokenizerFast]:
    """A word-level T5 tokenizer and a T5 encoder that outputs exact zeros (final norm weight 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from crossgate.embedded.model import WORDS

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    # the generic fast class: transformers 5 rebuilds a T5Tokenizer from a Unigram vocab on load
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.model_max_length = T5_TOKENS
    d_model = TEXT_CONFIG["hidden_size"] + TEXT_2_CONFIG["hidden_size"]
    config = T5Config(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=4,
        d_ff=8,
        num_layers=1,
        num_heads=1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    encoder = T5EncoderModel(config)
    with torch.no_grad():
        encoder.encoder.final_layer_norm.weight.zero_()
    return encoder, tokenizer


def build_transformer(**overrides: Any) -> SD3Transformer2DModel:
    return SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def prepare_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """The SD3 pipeline decodes ``latents / scaling_factor + shift_factor``: give it a zero shift."""
    if vae.config.get("shift_factor") is None:
        vae.register_to_config(shift_factor=0.0)
    return vae


def encode_text(
    encoders: tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection],
    input_ids: torch.Tensor,
    zero_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SD3 pipeline's prompt encoding without T5: (prompt_embeds, pooled_projections)."""
    hidden, pooled = [], []
    for encoder in encoders:
        out = encoder(input_ids, output_hidden_states=True)
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    clip = torch.cat(hidden, dim=-1)
    zeros = clip.new_zeros(clip.shape[0], zero_tokens, clip.shape[-1])
    return torch.cat([clip, zeros], dim=1), torch.cat(pooled, dim=-1)


@contextlib.contextmanager
def zero_token_multiplicity(count: int = T5_TOKENS) -> Iterator[None]:
    """Within: the last key of every attention counts ``count`` times (logit + log(count)).

    Wrap only the transformer's forward (encode the text outside: CLIP's attention is causal).

    SD3's joint attention orders tokens ``[image; text]``, so the last key is the last text token: the
    single zero token that stands for the pipeline's ``count`` identical ones.
    """
    original = F.scaled_dot_product_attention
    bias = math.log(count)

    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
        mask = key.new_zeros(1, key.shape[-2])
        mask[:, -1] = bias
        return original(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def flow_loss(
    transformer: SD3Transformer2DModel,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    generator: torch.Generator,
    high_fraction: float = 0.3,
) -> torch.Tensor:
    """Rectified-flow loss: x_t = (1 - t) x0 + t noise, predict noise - x0; extra draws at t >= 0.5."""
    n = len(latents)
    t = torch.rand(n, generator=generator)
    high = 0.5 + 0.5 * torch.rand(n, generator=generator)
    t = torch.where(torch.rand(n, generator=generator) < high_fraction, high, t)
    noise = torch.randn(latents.shape, generator=generator)
    s = t.view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    pred = transformer(
        hidden_states=noisy, timestep=t * 1000, encoder_hidden_states=prompt_embeds, pooled_projections=pooled
    ).sample
    return F.mse_loss(pred, noise - latents)
