"""Component configs of the embedded model: a miniature Stable Diffusion (VAE, CLIP text, UNet, DDIM).

Everything is a stock diffusers / transformers class with a small config, so the saved folder loads
with ``StableDiffusionPipeline.from_pretrained`` and every SD tool (TGATE included) applies unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from crossgate.embedded.scenes import COLOURS, RELATIONS, SHAPES

TOKEN_LENGTH = 16  # 9-10 words + BOS + EOS; the trailing pad positions see the whole caption
WORDS: tuple[str, ...] = ("a", *COLOURS, *SHAPES, *sorted({w for r in RELATIONS for w in r.split()}))
_CHARS = "abcdefghijklmnopqrstuvwxyz"

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 32,
}

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": TOKEN_LENGTH,
    "projection_dim": 128,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    # more attention at the 4x4 level, where the layout of two objects is decided
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [4, 8],
    "cross_attention_dim": 128,
    "norm_num_groups": 32,
}

# v-prediction with a zero-terminal-SNR schedule and trailing timesteps: at the first sampling step the
# latent is pure noise, so the layout must come from the caption rather than from leaked low-frequency
# signal in the initial noise (the failure seen in the first trial).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,  # unused by trailing spacing; 1 keeps the SD pipeline quiet
}


def write_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write a word-level CLIP BPE tokenizer (one token per caption word) and load it back offline.

    Merges build each word right to left (``e d</w>`` -> ``ed</w>``, ``r ed</w>`` -> ``red</w>``), so
    caption words become single tokens and any other lowercase word still encodes, as characters.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>", *_CHARS, *(c + "</w>" for c in _CHARS)]
    merges: list[str] = []
    for word in WORDS:
        suffix = word[-1] + "</w>"
        for ch in reversed(word[:-1]):
            merges.append(f"{ch} {suffix}")
            suffix = ch + suffix
            if suffix not in tokens:
                tokens.append(suffix)
    merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": TOKEN_LENGTH,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_vae(**overrides: Any) -> AutoencoderKL:
    return AutoencoderKL(**{**VAE_CONFIG, **overrides})


def build_text_encoder(tokenizer: CLIPTokenizer, **overrides: Any) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TEXT_CONFIG, **overrides},
    )
    return CLIPTextModel(config)


def build_unet(**overrides: Any) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)


def assemble_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
