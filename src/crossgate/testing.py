"""Random-weight diffusers pipelines built offline, for tests, benchmarks and demos.

Nothing here touches the Hugging Face Hub: the tokenizer is a character-level CLIP BPE written to a
temporary folder, and every model is built from a config with random (seeded) weights. Two sizes:
``tiny_*`` pipelines (widths of a few channels, for tests) and :func:`random_pipeline` (the real
SD-1.5 / SD-2.1 / SDXL UNet, PixArt-Alpha and Wan 2.1 T2V 1.3B denoiser architectures from the
bundled configs, for benchmarks; their text encoders and VAEs are small, see each builder).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from crossgate.loading import bundled_config

# Real denoiser architectures :func:`random_pipeline` builds with random weights (bundled configs).
ARCHITECTURES: dict[str, str] = {
    "sd15": "sd15_unet.json",
    "sd21": "sd21_unet.json",
    "sdxl": "sdxl_unet.json",
}
TRANSFORMER_ARCHITECTURES: dict[str, str] = {
    "pixart-alpha": "pixart_alpha_1024.json",
    "wan13b": "wan21_t2v_1.3b.json",
    "sd3-medium": "sd3_medium_transformer.json",
    "flux1-dev": "flux1_dev_transformer.json",
}
TINY_MODELS: tuple[str, ...] = ("tiny", "tiny-sdxl", "tiny-pixart", "tiny-wan", "tiny-sd3", "tiny-flux")
RANDOM_MODELS: tuple[str, ...] = (*TINY_MODELS, *ARCHITECTURES, *TRANSFORMER_ARCHITECTURES)


def ready(pipe: Any) -> Any:
    """Inference mode for every model (built modules start in training mode, with dropout on)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def char_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is single characters (every lowercase text encodes)."""
    chars = string.ascii_lowercase + string.digits + ".,'-!?"
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    folder = Path(tempfile.mkdtemp(prefix="crossgate-tok-"))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def clip_text_config(
    tokenizer: CLIPTokenizer, hidden: int, projection: int | None = None, heads: int = 2
) -> CLIPTextConfig:
    """A two-layer CLIP text encoder config of width ``hidden`` over ``tokenizer``'s vocabulary."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1,
        projection_dim=projection or hidden,
    )


def ddim_scheduler() -> DDIMScheduler:
    """The DDIM scheduler of the Stable Diffusion releases (scaled-linear betas, steps offset 1)."""
    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )


# The tiny SD UNet's layout: two levels of 16 and 32 channels, 4-channel heads, 32-wide text (the tiny
# CLIP's width), 16x16 latents. The SD-derived families (video UNets, I2VGen-XL, motion adapters)
# build on it with their own block types: :func:`tiny_unet_kwargs`.
TINY_UNET: dict[str, Any] = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def tiny_unet_kwargs(**overrides: Any) -> dict[str, Any]:
    """:data:`TINY_UNET` with ``overrides`` (block types, channels, ...), for any UNet class."""
    return {**TINY_UNET, **overrides}


def tiny_clip_vision_encoder(
    hidden: int = 16, projection: int | None = None, image_size: int = 32, patch_size: int = 8
) -> Any:
    """A two-layer CLIP vision encoder with projection (image conditioning: SVD, I2VGen-XL, Wan I2V)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=hidden,
            projection_dim=projection or hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            intermediate_size=max(16, hidden + hidden // 2),
            patch_size=patch_size,
        )
    )


def tiny_sd_pipeline(seed: int = 0, **unet_overrides: Any) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline with SD-1.x layout, tiny widths and random weights (32x32 images)."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    unet_kwargs = tiny_unet_kwargs(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    unet_kwargs.update(unet_overrides)
    unet = UNet2DConditionModel(**unet_kwargs)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, 32))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return ready(pipe)


def tiny_sdxl_pipeline(seed: int = 0, **unet_overrides: Any) -> StableDiffusionXLPipeline:
    """An SDXL pipeline (two text encoders, pooled embeds and time ids) with tiny random weights."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    unet_kwargs: dict[str, Any] = dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 16,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    unet_kwargs.update(unet_overrides)
    unet = UNet2DConditionModel(**unet_kwargs)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(clip_text_config(tokenizer, 16)),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(tokenizer, 16, projection=16)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=ddim_scheduler(),
        force_zeros_for_empty_prompt=False,
    )
    return ready(pipe)


def char_fast_tokenizer(max_length: int = 32, eos: bool = True):
    """A fast character-level tokenizer (for T5/Gemma-style pipelines), built in memory."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<bos>"]
    chars = string.ascii_lowercase + string.digits + " .,'-!?:"
    vocab = {tok: i for i, tok in enumerate([*specials, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<bos>",
        model_max_length=max_length,
    )


def t5_encoder(
    tokenizer: Any,
    width: int,
    num_layers: int = 2,
    d_kv: int = 64,
    d_ff: int = 256,
    num_heads: int = 2,
    umt5: bool = False,
):
    """A random T5 (or umT5, Wan's) encoder of ``width`` over ``tokenizer``'s vocabulary."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return model_cls(config)


def tiny_t5_encoder(tokenizer: Any, width: int = 32):
    """A two-layer T5 encoder (PixArt, LTX, the tiny Wan) over ``tokenizer``'s vocabulary."""
    return t5_encoder(tokenizer, width, d_kv=8, d_ff=37, num_heads=4)


def tiny_gemma2_encoder(tokenizer: Any):
    """A one-layer Gemma-2 encoder of width 8 (Sana, Lumina-Next) over ``tokenizer``'s vocabulary."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=8,
            intermediate_size=64,
            max_position_embeddings=512,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            pad_token_id=0,
            bos_token_id=3,
            eos_token_id=1,
        )
    )


def tiny_pixart_pipeline(seed: int = 0, sigma: bool = False):
    """PixArt-Alpha (or -Sigma) with a tiny T5 encoder and transformer; latents 8x8 for 64x64 images."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    text_encoder = tiny_t5_encoder(tokenizer)
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    return ready(pipe)


def tiny_sana_pipeline(seed: int = 0):
    """Sana with a tiny Gemma2 encoder, DC-AE and linear-attention transformer."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=300, eos=False)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    text_encoder = tiny_gemma2_encoder(tokenizer)
    pipe = SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    return ready(pipe)


def random_pipeline(
    model: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    num_layers: int | None = None,
) -> Any:
    """A pipeline named in :data:`RANDOM_MODELS`, random weights, on ``device`` in ``dtype``.

    ``tiny*`` are the tiny test pipelines (:func:`tiny_sd_pipeline`, :func:`tiny_sdxl_pipeline`,
    :func:`tiny_pixart_pipeline`, :func:`tiny_wan_pipeline`, :func:`tiny_sd3_pipeline`,
    :func:`tiny_flux_pipeline`); ``sd15``/``sd21``/``sdxl`` are
    :func:`architecture_pipeline` of the bundled UNet config, ``pixart-alpha`` is
    :func:`pixart_architecture_pipeline` and ``wan13b`` :func:`wan_architecture_pipeline`.
    ``num_layers`` (transformer architectures only) keeps the real widths with fewer layers: for
    smoke runs of the same code path, whose timings and MACs are then not the real model's.
    """
    tiny = {
        "tiny": tiny_sd_pipeline,
        "tiny-sdxl": tiny_sdxl_pipeline,
        "tiny-pixart": tiny_pixart_pipeline,
        "tiny-wan": tiny_wan_pipeline,
        "tiny-sd3": tiny_sd3_pipeline,
        "tiny-flux": tiny_flux_pipeline,
    }
    if model in tiny:
        return tiny[model](seed).to(device, dtype)
    if num_layers is not None and model not in TRANSFORMER_ARCHITECTURES:
        raise ValueError(f"num_layers applies to {', '.join(TRANSFORMER_ARCHITECTURES)} only, not {model!r}.")
    if model in TRANSFORMER_ARCHITECTURES:
        config = bundled_config(TRANSFORMER_ARCHITECTURES[model])
        if num_layers is not None:
            config["num_layers"] = num_layers
        if num_layers is not None and model == "flux1-dev":
            config["num_single_layers"] = num_layers  # and as many double-stream blocks
        builders = {
            "pixart-alpha": pixart_architecture_pipeline,
            "wan13b": wan_architecture_pipeline,
            "sd3-medium": joint_architecture_pipeline,
            "flux1-dev": joint_architecture_pipeline,
        }
        return builders[model](config, device, dtype, seed)
    if model not in ARCHITECTURES:
        raise ValueError(f"unknown random-weight model {model!r}; use one of {', '.join(RANDOM_MODELS)}.")
    return architecture_pipeline(bundled_config(ARCHITECTURES[model]), device, dtype, seed)


def architecture_pipeline(
    unet_config: dict[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A full pipeline around the real UNet architecture ``unet_config`` describes, random weights.

    Benchmarks need the real denoiser's cost, not its weights. The text encoders are small random
    CLIP models of the hidden sizes the UNet expects (their cost is the same for every configuration
    a benchmark compares); the VAE is the SD VAE architecture (scale factor 8). An SDXL-style UNet
    (``addition_embed_type="text_time"``) gets an SDXL pipeline. Built directly on a CUDA device
    when one is asked for, so large UNets never materialise on the CPU.
    """
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    init_device = device if device.startswith("cuda") else "cpu"
    with torch.device(init_device):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(bundled_config("sd_vae.json"))
        if unet_config.get("addition_embed_type") == "text_time":
            pooled = (
                unet_config["projection_class_embeddings_input_dim"]
                - 6 * unet_config["addition_time_embed_dim"]
            )
            second = unet_config["cross_attention_dim"] - 768
            pipe: Any = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=CLIPTextModel(clip_text_config(tokenizer, 768, heads=12)),
                text_encoder_2=CLIPTextModelWithProjection(
                    clip_text_config(tokenizer, second, pooled, heads=second // 64)
                ),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=unet,
                scheduler=ddim_scheduler(),
                force_zeros_for_empty_prompt=False,
            )
        else:
            width = unet_config["cross_attention_dim"]
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=CLIPTextModel(clip_text_config(tokenizer, width, heads=width // 64)),
                tokenizer=tokenizer,
                unet=unet,
                scheduler=ddim_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    return ready(pipe).to(device, dtype)


def tiny_wan_transformer(seed: int = 0, cls: Any = None, **extra: Any):
    """A two-layer Wan 2.1 transformer (2 heads of 12, text width 32): the tests' sequential-CFG model.

    ``cls`` builds a relative with the same block (VACE's, SkyReels-V2's transformer); ``extra``
    adds or overrides its config (e.g. image-to-video's 36 input channels).
    """
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    config = {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
    }
    return (cls or WanTransformer3DModel)(**{**config, **extra})


def small_wan_vae(base_dim: int = 8):
    """An ``AutoencoderKLWan`` with Wan 2.1's latent layout (16 channels, 8x spatial and 4x temporal
    compression) and few channels: only a decode uses it, the denoiser's cost does not depend on it."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def tiny_wan_parts(seed: int = 0) -> dict[str, Any]:
    """Everything of a tiny Wan pipeline but its transformer: VAE, T5 encoder (16 tokens), scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    vae = small_wan_vae(base_dim=3)
    tokenizer = char_fast_tokenizer(max_length=16)
    torch.manual_seed(seed)
    return {
        "vae": vae,
        "tokenizer": tokenizer,
        "text_encoder": tiny_t5_encoder(tokenizer),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


def tiny_wan_pipeline(seed: int = 0):
    """Wan 2.1 T2V with a tiny transformer, T5 encoder and VAE (16x16 pixels, 5 frames, 16 tokens)."""
    from diffusers import WanPipeline

    return ready(WanPipeline(**tiny_wan_parts(seed), transformer=tiny_wan_transformer(seed)))


def wan_architecture_pipeline(
    transformer_config: dict[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """A WanPipeline around the real Wan 2.1 T2V transformer ``transformer_config`` describes (e.g.
    the bundled ``wan21_t2v_1.3b.json``), random weights: a benchmark of the denoiser's real cost.

    The rest is small, because the denoiser dominates a generation and costs the same for every
    configuration a benchmark compares: a one-layer random umT5 encoder of the transformer's
    ``text_dim`` (4096) under a character tokenizer that pads to 512 tokens (the pipeline's
    ``max_sequence_length``, so cross-attention sees the real prompt length), a few-channel
    ``AutoencoderKLWan`` with the real latent layout (:func:`small_wan_vae`; only ``--decode`` runs it),
    and flow-matching Euler with shift 3 (Wan's 480p setting). Built directly on a CUDA device when
    one is asked for.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=512)
    init_device = device if device.startswith("cuda") else "cpu"
    with torch.device(init_device):
        transformer = WanTransformer3DModel.from_config(transformer_config)
        text_encoder = t5_encoder(tokenizer, transformer_config["text_dim"], num_layers=1, umt5=True)
        vae = small_wan_vae()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    ready(pipe).to(device, dtype)
    keep_fp32(transformer)
    return pipe


def keep_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """Put back in float32 the submodules a diffusers model keeps there when loaded in half precision
    (``_keep_in_fp32_modules``, e.g. Wan's rotary embedding, time embedder and norms), as
    ``from_pretrained(torch_dtype=...)`` does, so a random-weight model runs as the released one."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if keep and next(model.parameters()).dtype != torch.float32:
        for name, module in model.named_modules():
            if keep.intersection(name.split(".")):
                module.to(torch.float32)
        if "scale_shift_table" in keep:
            for name, param in model.named_parameters():
                if "scale_shift_table" in name.split("."):
                    param.data = param.data.float()
    return model


def pixart_architecture_pipeline(
    transformer_config: dict[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """A PixArt-Alpha pipeline around the real transformer ``transformer_config`` describes (the
    bundled ``pixart_alpha_1024.json``), random weights.

    The T5 text encoder is a two-layer random one of the transformer's ``caption_channels`` (4096)
    under a character tokenizer (the pipeline pads prompts to its 120-token ``max_sequence_length``);
    the VAE is the SD VAE architecture. Call it with ``use_resolution_binning=False`` at sizes other
    than 1024-px aspect-ratio bins. Built directly on a CUDA device when one is asked for.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=120)
    init_device = device if device.startswith("cuda") else "cpu"
    with torch.device(init_device):
        transformer = PixArtTransformer2DModel.from_config(transformer_config)
        text_encoder = t5_encoder(tokenizer, transformer_config["caption_channels"])
        vae = AutoencoderKL.from_config(bundled_config("sd_vae.json"))
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    return ready(pipe).to(device, dtype)


def tiny_sd3_pipeline(seed: int = 0, num_layers: int = 2, dual_attention_layers: tuple[int, ...] = ()):
    """A Stable Diffusion 3 pipeline (MMDiT joint attention) with tiny widths and random weights.

    Two joint blocks by default: a full one and the last, whose text side is ``context_pre_only``.
    Three text encoders as SD3 has (two CLIP with projection, a T5), 32x32 images, 16x16 latents of
    16 channels (SD3's VAE width; its inpainting pipeline requires it).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    t5_tokenizer = char_fast_tokenizer(max_length=77)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=16,
        dual_attention_layers=dual_attention_layers,
        qk_norm="rms_norm" if dual_attention_layers else None,
    )
    vae = tiny_vae(latent_channels=16)
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip_text_config(tokenizer, 32)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(tokenizer, 32)),
        tokenizer_2=tokenizer,
        text_encoder_3=tiny_t5_encoder(t5_tokenizer, width=32),
        tokenizer_3=t5_tokenizer,
    )
    return ready(pipe)


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, cls: Any = None, in_channels: int = 16):
    """A FLUX.1 pipeline (double- and single-stream joint blocks) with tiny widths and random weights.

    Two double-stream and two single-stream blocks, rotary positions over (text, height, width),
    ``guidance_embeds`` as FLUX.1-dev (distilled guidance; ``true_cfg_scale`` adds real CFG), 32x32
    images from a one-level VAE with 4 latent channels (packed 2x2 into 16-channel tokens).
    ``in_channels``: 48 for Fill (latents, masked image, mask), 32 for Control (latents, control image).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    t5_tokenizer = char_fast_tokenizer(max_length=77)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return ready(
        (cls or FluxPipeline)(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=CLIPTextModel(clip_text_config(tokenizer, 32)),
            tokenizer=tokenizer,
            text_encoder_2=tiny_t5_encoder(t5_tokenizer, width=32),
            tokenizer_2=t5_tokenizer,
        )
    )


def tiny_chroma_pipeline(seed: int = 0, cls: Any = None):
    """A Chroma pipeline (FLUX-like double- and single-stream blocks, pruned modulation, a text padding
    mask) with tiny widths and random weights: a random T5 over a character tokenizer, the tiny VAE,
    32x32 images; CFG as two unnamed calls per step (cond first)."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=77)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(2, 2, 4),
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return ready(
        (cls or ChromaPipeline)(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=tiny_t5_encoder(tokenizer, width=32),
            tokenizer=tokenizer,
        )
    )


def tiny_auraflow_pipeline(seed: int = 0):
    """An AuraFlow pipeline (MMDiT and single-stream blocks over ``[registers + text; image]``) with tiny
    widths and random weights: a random umT5 over a character tokenizer, the tiny VAE, 32x32 images,
    CFG batched ``[uncond; cond]``."""
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=256)
    transformer = AuraFlowTransformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=2,
        num_single_dit_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        out_channels=4,
        pos_embed_max_size=256,
    )
    return ready(
        AuraFlowPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(),
            text_encoder=t5_encoder(tokenizer, 32, d_kv=8, d_ff=37, num_heads=4, umt5=True),
            tokenizer=tokenizer,
        )
    )


def tiny_lumina2_pipeline(seed: int = 0):
    """A Lumina2 pipeline (text and noise refiners, then unified layers over ``[text; image]`` with
    grouped-query attention) with tiny widths and random weights: a one-layer Gemma-2 over a character
    tokenizer, the tiny VAE, 32x32 images; CFG as two unnamed calls, the cond one first."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=256)
    transformer = Lumina2Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 2, 2),
        cap_feat_dim=8,
    )
    return ready(
        Lumina2Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(),
            text_encoder=tiny_gemma2_encoder(tokenizer),
            tokenizer=tokenizer,
        )
    )


def tiny_z_image_pipeline(seed: int = 0, cls: Any = None):
    """A Z-Image pipeline (text and noise refiners, then unified layers over ``[image; text]``) with
    tiny widths and random weights: a one-layer Qwen3 over a character tokenizer (its chat template
    the bare prompt), the tiny VAE, 32x32 images; CFG batched ``[cond; uncond]`` as lists."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=512)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0)  # Z-Image's img2img reads it
    return ready(
        (cls or ZImagePipeline)(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def tiny_hidream_pipeline(seed: int = 0):
    """A HiDream-I1 pipeline (double- and single-stream blocks with mixture-of-experts feed-forwards,
    each block fed one LLaMA layer) with tiny widths and random weights: two CLIPs with projection, a
    T5 and a three-layer LLaMA over character tokenizers, the tiny VAE; the pipeline scales every
    request to its default area, set to 16x16 latents."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )
    from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    clip_tokenizer = char_tokenizer()
    tokenizer = char_fast_tokenizer(max_length=128)
    clips = [CLIPTextModelWithProjection(clip_text_config(clip_tokenizer, 8, projection=8)) for _ in range(2)]
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=tokenizer.pad_token_id,
            attn_implementation="eager",  # the pipeline asks for attentions
        )
    )
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],
        text_emb_dim=16,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32),
        llama_layers=[0, 2],  # one per block
    )
    pipe = ready(
        HiDreamImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(),
            text_encoder=clips[0],
            tokenizer=clip_tokenizer,
            text_encoder_2=clips[1],
            tokenizer_2=clip_tokenizer,
            text_encoder_3=tiny_t5_encoder(tokenizer),
            tokenizer_3=tokenizer,
            text_encoder_4=llama,
            tokenizer_4=tokenizer,
            transformer=transformer,
        )
    )
    pipe.default_sample_size = 16  # the pipeline scales every request to this area (latents 16x16)
    return pipe


def tiny_qwen_image_pipeline(seed: int = 0, cls: Any = None):
    """A Qwen-Image pipeline (double-stream joint blocks, text first) with tiny widths and random weights.

    Two ``QwenImageTransformerBlock``s, a two-layer random Qwen2.5-VL text encoder under a character
    tokenizer (the prompt template's characters it lacks map to ``<unk>``), the Qwen-Image VAE at 4
    latent channels; 32x32 images. ``true_cfg_scale > 1`` with a negative prompt runs real CFG.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=1024)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    rope = {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": rope,
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        hidden_size=16,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    return ready(
        (cls or QwenImagePipeline)(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
    )


def tiny_qwen_image_edit_pipeline(seed: int = 0, cls: Any = None):
    """Qwen-Image Edit (``QwenImageEditPipeline`` or ``cls``): the tiny Qwen-Image pipeline's transformer and
    VAE, and a Qwen2.5-VL encoder that sees the condition image through a tiny vision tower.

    The processor is built in memory: the character tokenizer with Qwen's vision tokens added, and
    Qwen2-VL's image processor capped at 4 patches of 28 px (its video processor needs torchvision,
    and an image-editing call sends no video).
    """
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    base = tiny_qwen_image_pipeline(seed)
    tokenizer = char_fast_tokenizer(max_length=1024)
    vision = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": vision})
    ids = dict(zip(vision, tokenizer.convert_tokens_to_ids(vision)))
    torch.manual_seed(seed)
    config = base.text_encoder.config.to_dict()
    config["text_config"]["vocab_size"] = config["vocab_size"] = len(tokenizer)
    config.update(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config)).eval()
    processor = _image_only_qwen2vl_processor(
        Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=4 * 28 * 28), tokenizer
    )
    parts = {k: v for k, v in base.components.items() if k not in ("text_encoder", "tokenizer")}
    return ready(
        (cls or QwenImageEditPipeline)(
            **parts, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor
        )
    )


def _image_only_qwen2vl_processor(image_processor: Any, tokenizer: Any) -> Any:
    """A ``Qwen2VLProcessor`` without its video processor (which needs torchvision)."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer)

    return ImageOnlyQwen2VLProcessor(image_processor, tokenizer)


def tiny_hunyuan_video_pipeline(seed: int = 0):
    """A HunyuanVideo pipeline (double- and single-stream blocks, text last) with tiny widths, random weights.

    One double- and one single-stream block and one token-refiner layer; a two-layer random Llama
    and a CLIP text encoder under character tokenizers; the HunyuanVideo VAE at 8 channels. Guidance
    is distilled (an embedding); ``true_cfg_scale > 1`` with a negative prompt runs real CFG.
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    tokenizer = char_fast_tokenizer(max_length=256)
    llama = LlamaConfig(
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
    )
    clip_tokenizer = char_tokenizer()
    return ready(
        HunyuanVideoPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            vae=vae,
            text_encoder=LlamaModel(llama),
            tokenizer=tokenizer,
            text_encoder_2=CLIPTextModel(clip_text_config(clip_tokenizer, 8)),
            tokenizer_2=clip_tokenizer,
        )
    )


def tiny_cogvideox_pipeline(seed: int = 0, cls: Any = None):
    """A CogVideoX pipeline (one ``CogVideoXBlock``: shared weights over ``[text; image]``) with tiny
    widths, random weights and rotary positions (as CogVideoX-5B); 16x16 videos of 8 frames (3 latent
    frames), a random T5 over a character tokenizer, CFG batched ``[uncond; cond]``."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=16)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=2,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return ready(
        (cls or CogVideoXPipeline)(
            transformer=transformer,
            vae=vae,
            scheduler=CogVideoXDDIMScheduler(),
            text_encoder=tiny_t5_encoder(tokenizer, width=32),
            tokenizer=tokenizer,
        )
    )


def tiny_cogview4_pipeline(seed: int = 0):
    """A CogView4 pipeline (two ``CogView4TransformerBlock``s: shared weights over ``[text; image]``)
    with tiny widths and random weights: a two-layer random GLM under a character tokenizer, the tiny
    VAE, 32x32 images; CFG as two calls named cond/uncond."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    torch.manual_seed(seed)
    tokenizer = char_fast_tokenizer(max_length=1024)
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=4,
        out_channels=4,
        text_embed_dim=32,
        time_embed_dim=8,
        condition_dim=4,
    )
    glm = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=tokenizer.pad_token_id,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25,
        max_shift=0.75,
        base_image_seq_len=256,
        use_dynamic_shifting=True,
        time_shift_type="linear",
    )
    return ready(
        CogView4Pipeline(
            tokenizer=tokenizer,
            text_encoder=GlmModel(glm),
            vae=tiny_vae(),
            transformer=transformer,
            scheduler=scheduler,
        )
    )


def joint_architecture_pipeline(
    transformer_config: dict[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """An SD3 or FLUX.1 pipeline around the real transformer ``transformer_config`` describes (the
    bundled ``sd3_medium_transformer.json`` / ``flux1_dev_transformer.json``), random weights.

    The text encoders are two-layer random ones at the real widths the transformer reads (SD3: CLIP
    768 + 1280 wide, pooled 2048, T5 4096; FLUX: CLIP 768 pooled, T5 4096) under character
    tokenizers; the VAE is the SD VAE architecture with 16 latent channels. Built directly on a CUDA
    device when one is asked for.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    flux = transformer_config["_class_name"] == "FluxTransformer2DModel"
    tokenizer, t5_tokenizer = char_tokenizer(), char_fast_tokenizer(max_length=512 if flux else 256)
    init_device = device if device.startswith("cuda") else "cpu"
    config = dict(transformer_config)
    with torch.device(init_device):
        vae = AutoencoderKL.from_config({**bundled_config("sd_vae.json"), "latent_channels": 16})
        vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
        t5 = t5_encoder(t5_tokenizer, config["joint_attention_dim"])
        if flux:
            transformer = FluxTransformer2DModel.from_config(config)
            clip = CLIPTextModel(clip_text_config(tokenizer, config["pooled_projection_dim"], heads=12))
            pipe: Any = FluxPipeline(
                transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(),
                vae=vae,
                text_encoder=clip,
                tokenizer=tokenizer,
                text_encoder_2=t5,
                tokenizer_2=t5_tokenizer,
            )
        else:
            transformer = SD3Transformer2DModel.from_config(config)
            pipe = StableDiffusion3Pipeline(
                transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=vae,
                text_encoder=CLIPTextModelWithProjection(clip_text_config(tokenizer, 768, heads=12)),
                tokenizer=tokenizer,
                text_encoder_2=CLIPTextModelWithProjection(clip_text_config(tokenizer, 1280, heads=20)),
                tokenizer_2=tokenizer,
                text_encoder_3=t5,
                tokenizer_3=t5_tokenizer,
            )
    return ready(pipe).to(device, dtype)
