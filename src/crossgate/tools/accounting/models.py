"""Architectures to count: bundled configs and model folders, built on ``torch.device("meta")``.

Users pick an accelerator by numbers, so the numbers must be reproducible without weights or a GPU:
the real architecture is built from its config on the meta device (no memory, no weights) and fed
meta inputs of one sample at the resolution and prompt length the model really runs at.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossgate.loading import bundled_config
from crossgate.tools.accounting.counting import AccountingError, CallMacs, CfgLayout, count_call

DEFAULT_TEXT_LEN = 77  # CLIP's context: what SD/SDXL pipelines pad every prompt to
PIXART_TEXT_LEN = 120  # PixArt pipelines pad to ``max_sequence_length``, not to the tokenizer's length
# WanPipeline's defaults: umT5 prompts padded to 512 tokens, 480x832 pixels, 81 frames; its VAE
# compresses 4x in time (the first frame alone) and 8x in space.
WAN_TEXT_LEN = 512
WAN_SIZE = (480, 832)
WAN_FRAMES = 81
WAN_TEMPORAL_SCALE = 4
VIDEO_DENOISERS = ("WanTransformer3DModel", "HunyuanVideoTransformer3DModel")
# Joint-attention (MMDiT) transformers. StableDiffusion3Pipeline joins 77 CLIP tokens and its T5
# prompt padded to max_sequence_length (256): 333 text tokens; FluxPipeline feeds its T5 prompt alone,
# padded to 512. FLUX packs 2x2 latent patches into one token, so its pixels come in steps of 16.
JOINT_DENOISERS = (
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
    "QwenImageTransformer2DModel",
    "HunyuanVideoTransformer3DModel",
)
SD3_TEXT_LEN = 77 + 256
FLUX_TEXT_LEN = 512
FLUX_SIZE = 1024  # FluxPipeline's default_sample_size (128) times its VAE's scale (8)
# QwenImagePipeline wraps the prompt in its chat template, drops the template's first 34 tokens and
# pads no single prompt: the text is as long as the prompt (plus the template's tail), cut at the call's
# max_sequence_length, whose default (512) it is counted at: the longest text it feeds by default. Its
# latents (16 channels, VAE 8x) are packed 2x2 into 64-channel tokens; default 1024x1024.
QWEN_TEXT_LEN = 512
QWEN_SIZE = 1024  # QwenImagePipeline's default_sample_size (128) times its VAE's scale (8)
# HunyuanVideoPipeline: its Llama prompt padded to max_sequence_length (256) once the template's 95
# tokens are cropped, refined by the transformer's token refiner; 720x1280, 129 frames by default (VAE
# 8x in space, 4x in time with the first frame alone: 33 x 90 x 160 latents, patched 1x2x2).
HUNYUAN_TEXT_LEN = 256
HUNYUAN_SIZE = (720, 1280)
HUNYUAN_FRAMES = 129

Resolution = int | tuple[int, int]  # a square side, or (height, width)


@dataclass(frozen=True)
class PipelineDefaults:
    """What a pipeline folder's own pipeline runs its transformer at when a call gives nothing."""

    size: tuple[int, int]
    text_len: int
    cfg_layout: CfgLayout
    cfg: bool = True  # whether it runs CFG by default
    frames: int | None = None  # video: pixel frames


# Denoisers whose pipelines fix their size and prompt length (the others read theirs from the folder).
PIPELINE_DEFAULTS: dict[str, PipelineDefaults] = {
    "WanTransformer3DModel": PipelineDefaults(WAN_SIZE, WAN_TEXT_LEN, "sequential", frames=WAN_FRAMES),
    # FLUX.1 and HunyuanVideo pipelines run CFG only when a call asks for true_cfg_scale
    "FluxTransformer2DModel": PipelineDefaults(
        (FLUX_SIZE, FLUX_SIZE), FLUX_TEXT_LEN, "sequential", cfg=False
    ),
    "QwenImageTransformer2DModel": PipelineDefaults((QWEN_SIZE, QWEN_SIZE), QWEN_TEXT_LEN, "sequential"),
    "HunyuanVideoTransformer3DModel": PipelineDefaults(
        HUNYUAN_SIZE, HUNYUAN_TEXT_LEN, "sequential", cfg=False, frames=HUNYUAN_FRAMES
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """A bundled architecture with the resolution and prompt length it is counted at.

    Image models: ``resolution`` is the square side. Video models also give ``width`` (``resolution``
    is then the height) and ``frames`` (pixel frames; the VAE compresses them ``temporal_scale``x,
    keeping the first frame alone). ``cfg_layout`` is how its pipeline runs classifier-free guidance
    and ``cfg`` whether it does by default (FLUX.1-dev is guidance-distilled: no CFG unless a call
    asks for ``true_cfg_scale``, which runs it as two named calls per step).
    """

    key: str
    label: str
    config: str
    resolution: int
    text_len: int
    width: int | None = None
    frames: int | None = None
    cfg_layout: CfgLayout = "batched"
    temporal_scale: int = WAN_TEMPORAL_SCALE
    cfg: bool = True

    @property
    def size(self) -> tuple[int, int]:
        return self.resolution, self.width or self.resolution


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec("sd15", "SD-1.5 UNet", "sd15_unet.json", 512, 77),
        ModelSpec("sd21", "SD-2.1 UNet", "sd21_unet.json", 768, 77),
        ModelSpec("sdxl", "SDXL UNet", "sdxl_unet.json", 1024, 77),
        ModelSpec("pixart-alpha", "PixArt-Alpha", "pixart_alpha_1024.json", 1024, 120),
        ModelSpec("pixart-sigma", "PixArt-Sigma", "pixart_sigma_1024.json", 1024, 300),
        # Wan 2.1 text-to-video (published transformer configs; CFG as two named calls per step)
        ModelSpec("wan13b-480p", "Wan2.1-T2V-1.3B", "wan21_t2v_1.3b.json", 480, 512, 832, 81, "sequential"),
        ModelSpec("wan13b-720p", "Wan2.1-T2V-1.3B", "wan21_t2v_1.3b.json", 720, 512, 1280, 81, "sequential"),
        ModelSpec("wan14b-480p", "Wan2.1-T2V-14B", "wan21_t2v_14b.json", 480, 512, 832, 81, "sequential"),
        ModelSpec("wan14b-720p", "Wan2.1-T2V-14B", "wan21_t2v_14b.json", 720, 512, 1280, 81, "sequential"),
        # joint attention (published transformer configs): SD3 batches CFG; FLUX.1-dev runs none by
        # default, and true CFG as two named calls per step
        ModelSpec("sd3-medium", "SD3-medium", "sd3_medium_transformer.json", 1024, SD3_TEXT_LEN),
        ModelSpec("sd3.5-large", "SD3.5-large", "sd35_large_transformer.json", 1024, SD3_TEXT_LEN),
        ModelSpec(
            "flux1-dev",
            "FLUX.1-dev",
            "flux1_dev_transformer.json",
            FLUX_SIZE,
            FLUX_TEXT_LEN,
            cfg_layout="sequential",
            cfg=False,
        ),
        # Qwen-Image (QwenImageTransformer2DModel: 60 double-stream blocks, 24 heads x 128, Qwen2.5-VL
        # text 3584 wide, 64 channels in, 16 out, rotary axes 16/56/56) runs true CFG as two named calls
        # per step; HunyuanVideo (HunyuanVideoTransformer3DModel: 20 double- and 40 single-stream
        # blocks, 24 heads x 128, 2 token-refiner layers, Llama text 4096 wide, CLIP pooled 768) is
        # guidance-distilled: no CFG unless a call asks for true_cfg_scale. Both configs are the
        # published transformer/config.json values (Qwen/Qwen-Image; the diffusers-format
        # hunyuanvideo-community/HunyuanVideo), equal to the diffusers classes' defaults.
        ModelSpec(
            "qwen-image",
            "Qwen-Image",
            "qwen_image_transformer.json",
            QWEN_SIZE,
            QWEN_TEXT_LEN,
            cfg_layout="sequential",
        ),
        ModelSpec(
            "hunyuan-video",
            "HunyuanVideo",
            "hunyuan_video_transformer.json",
            HUNYUAN_SIZE[0],
            HUNYUAN_TEXT_LEN,
            HUNYUAN_SIZE[1],
            HUNYUAN_FRAMES,
            "sequential",
            cfg=False,
        ),
    )
}


def latent_frames(frames: int, temporal_scale: int = WAN_TEMPORAL_SCALE) -> int:
    """Latent frames of a ``frames``-frame clip: the first frame alone, then ``temporal_scale`` per latent."""
    if frames < 1 or (frames - 1) % temporal_scale:
        raise AccountingError(
            f"{frames} frames do not encode: a clip needs 1 + {temporal_scale} k frames (e.g. 1, 17, 81)."
        )
    return (frames - 1) // temporal_scale + 1


def build_meta_denoiser(config: Mapping[str, Any], cls: type | None = None) -> nn.Module:
    """The architecture ``config`` describes, on the meta device (no memory, no weights)."""
    import diffusers

    class_name = config.get("_class_name")
    cls = cls or getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise AccountingError(
            f"config names class {class_name!r}, which is not a diffusers model; point at the "
            "denoiser's config.json (a UNet2DConditionModel, PixArtTransformer2DModel, "
            "WanTransformer3DModel, SD3Transformer2DModel, FluxTransformer2DModel, "
            "QwenImageTransformer2DModel or HunyuanVideoTransformer3DModel)."
        )
    with torch.device("meta"):
        return cls.from_config(dict(config))


def example_inputs(
    denoiser: nn.Module,
    height: int,
    width: int,
    text_len: int,
    vae_scale: int = 8,
    batch: int = 1,
    frames: int = 1,
    temporal_scale: int = WAN_TEMPORAL_SCALE,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Meta inputs for one call of ``denoiser`` at ``height`` x ``width`` pixels (video denoisers:
    a clip of ``frames`` pixel frames)."""
    if height % vae_scale or width % vae_scale:
        raise AccountingError(f"resolution {height}x{width} must be a multiple of {vae_scale}.")
    cfg = denoiser.config
    meta = torch.device("meta")
    name = type(denoiser).__name__
    timestep = torch.empty(batch, device=meta)
    if name == "WanTransformer3DModel":
        _, p_h, p_w = cfg.patch_size
        if (height // vae_scale) % p_h or (width // vae_scale) % p_w:
            raise AccountingError(
                f"resolution {height}x{width} must be a multiple of {vae_scale * p_h}x{vae_scale * p_w} "
                "(VAE scale times patch size)."
            )
        shape = (batch, cfg.in_channels, latent_frames(frames, temporal_scale), height // vae_scale)
        video = torch.empty(*shape, width // vae_scale, device=meta)
        return (video,), {
            "timestep": timestep,
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.text_dim, device=meta),
        }
    if name == "FluxTransformer2DModel":
        return (), _flux_inputs(cfg, height // vae_scale, width // vae_scale, text_len, batch)
    if name == "QwenImageTransformer2DModel":
        return (), _qwen_inputs(cfg, height // vae_scale, width // vae_scale, text_len, batch)
    if name == "HunyuanVideoTransformer3DModel":
        latent = (latent_frames(frames, temporal_scale), height // vae_scale, width // vae_scale)
        return (), _hunyuan_inputs(cfg, latent, text_len, batch)
    latents = torch.empty(batch, cfg.in_channels, height // vae_scale, width // vae_scale, device=meta)
    if name == "UNet2DConditionModel":
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.cross_attention_dim, device=meta)
        }
        if cfg.addition_embed_type == "text_time":
            time_ids = 6
            pooled = cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(batch, pooled, device=meta),
                "time_ids": torch.empty(batch, time_ids, device=meta),
            }
        elif cfg.addition_embed_type is not None:
            raise AccountingError(f"UNet addition_embed_type {cfg.addition_embed_type!r} is not supported.")
        return (latents, timestep), kwargs
    if name == "SD3Transformer2DModel":
        if (height // vae_scale) % cfg.patch_size or (width // vae_scale) % cfg.patch_size:
            raise AccountingError(
                f"resolution {height}x{width} must be a multiple of {vae_scale * cfg.patch_size} "
                "(VAE scale times patch size)."
            )
        return (), {
            "hidden_states": latents,
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.joint_attention_dim, device=meta),
            "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim, device=meta),
            "timestep": timestep,
        }
    if name == "PixArtTransformer2DModel":
        return (latents,), {
            "encoder_hidden_states": torch.empty(batch, text_len, cfg.caption_channels, device=meta),
            "timestep": timestep,
            "added_cond_kwargs": {
                "resolution": torch.empty(batch, 2, device=meta),
                "aspect_ratio": torch.empty(batch, 1, device=meta),
            },
        }
    raise AccountingError(
        f"no input recipe for {name}; supported: UNet2DConditionModel, PixArtTransformer2DModel, "
        "WanTransformer3DModel, SD3Transformer2DModel, FluxTransformer2DModel."
    )


def _flux_inputs(cfg: Any, latent_h: int, latent_w: int, text_len: int, batch: int) -> dict[str, Any]:
    """FluxPipeline's transformer inputs: latents packed 2x2 into tokens, with their position ids."""
    if latent_h % 2 or latent_w % 2:
        raise AccountingError(
            f"FLUX packs 2x2 latent patches: the latent size {latent_h}x{latent_w} must be even "
            "(pixels a multiple of twice the VAE's scale)."
        )
    meta = torch.device("meta")
    tokens = (latent_h // 2) * (latent_w // 2)
    kwargs: dict[str, Any] = {
        "hidden_states": torch.empty(batch, tokens, cfg.in_channels, device=meta),
        "encoder_hidden_states": torch.empty(batch, text_len, cfg.joint_attention_dim, device=meta),
        "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim, device=meta),
        "timestep": torch.empty(batch, device=meta),
        "img_ids": torch.empty(tokens, 3, device=meta),
        "txt_ids": torch.empty(text_len, 3, device=meta),
    }
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.empty(batch, device=meta)
    return kwargs


def _qwen_inputs(cfg: Any, latent_h: int, latent_w: int, text_len: int, batch: int) -> dict[str, Any]:
    """QwenImagePipeline's transformer inputs: latents packed into tokens, the image shape for its rotary
    positions; no text mask (a single prompt is not padded: the pipeline passes ``None``)."""
    p = cfg.patch_size
    if latent_h % p or latent_w % p:
        raise AccountingError(
            f"Qwen-Image packs {p}x{p} latent patches: the latent size {latent_h}x{latent_w} must be a "
            f"multiple of {p} (pixels a multiple of {p} times the VAE's scale)."
        )
    meta = torch.device("meta")
    rows, cols = latent_h // p, latent_w // p
    return {
        "hidden_states": torch.empty(batch, rows * cols, cfg.in_channels, device=meta),
        "encoder_hidden_states": torch.empty(batch, text_len, cfg.joint_attention_dim, device=meta),
        "timestep": torch.empty(batch, device=meta),
        "img_shapes": [[(1, rows, cols)]] * batch,
    }


def _hunyuan_inputs(cfg: Any, latent: tuple[int, int, int], text_len: int, batch: int) -> dict[str, Any]:
    """HunyuanVideoPipeline's transformer inputs: the latent video, the Llama prompt with its mask, the
    CLIP pooled prompt and the distilled guidance."""
    frames, latent_h, latent_w = latent
    p, p_t = cfg.patch_size, cfg.patch_size_t
    if latent_h % p or latent_w % p or frames % p_t:
        raise AccountingError(
            f"HunyuanVideo patches {p_t}x{p}x{p}: the latent video {frames}x{latent_h}x{latent_w} must "
            "divide into it."
        )
    meta = torch.device("meta")
    kwargs: dict[str, Any] = {
        "hidden_states": torch.empty(batch, cfg.in_channels, frames, latent_h, latent_w, device=meta),
        "timestep": torch.empty(batch, device=meta),
        "encoder_hidden_states": torch.empty(batch, text_len, cfg.text_embed_dim, device=meta),
        "encoder_attention_mask": torch.empty(batch, text_len, dtype=torch.long, device=meta),
        "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim, device=meta),
    }
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.empty(batch, device=meta)
    return kwargs


@functools.lru_cache(maxsize=32)
def call_macs(
    model: str, resolution: Resolution | None = None, text_len: int | None = None, frames: int | None = None
) -> CallMacs:
    """Per-sample MACs of one call of a bundled model (``MODELS`` key) or a model folder.

    ``resolution`` is a square side or ``(height, width)``; ``frames`` (video models only) the clip's
    pixel frames. A folder may be a diffusers pipeline (``model_index.json`` with ``unet/`` or
    ``transformer/``) or a denoiser folder with its ``config.json``. A pipeline folder's defaults are
    the ones its own pipeline runs at: the denoiser's ``sample_size`` times the VAE's scale, and the
    prompt length its tokenizer pads to (Wan: 480x832, 81 frames, 512 tokens). Cached: counting
    SDXL takes a few seconds.
    """
    target = resolve_target(model, resolution, text_len, frames)
    args, kwargs = target.inputs()
    return count_call(target.denoiser, args, kwargs, model=target.label, cfg_layout=target.cfg_layout)


@functools.lru_cache(maxsize=32)
def controlnet_macs(
    model: str, resolution: Resolution | None = None, text_len: int | None = None
) -> CallMacs:
    """Per-sample MACs of one call of a ControlNet for a UNet model (``MODELS`` key or folder).

    The ControlNet is ``ControlNetModel.from_unet(unet)`` on the meta device (the architecture of the
    full-size published ControlNets for SD-1.5, SD-2.1 and SDXL; distilled small ones cost less), fed
    the UNet's inputs plus a 3-channel conditioning image at pixel size. Its cross-attention share is
    what a gated ControlNet replays after the gate. Other denoisers (transformers, Wan) are refused.
    """
    from diffusers import ControlNetModel

    target = resolve_target(model, resolution, text_len, None)
    unet = target.denoiser
    if type(unet).__name__ != "UNet2DConditionModel":
        raise AccountingError(
            f"{target.label} is a {type(unet).__name__}; ControlNet counting covers UNet models "
            "(ControlNetModel.from_unet), e.g. sd15, sd21, sdxl."
        )
    with torch.device("meta"):
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    height, width = target.size
    args, kwargs = example_inputs(unet, height, width, target.text_len, target.vae_scale)
    channels = controlnet.config.conditioning_channels
    kwargs["controlnet_cond"] = torch.empty(1, channels, height, width, device="meta")
    label = (
        target.label.replace("UNet", "ControlNet")
        if "UNet" in target.label
        else f"ControlNet for {target.label}"
    )
    return count_call(controlnet, args, kwargs, model=label)


@dataclass(frozen=True)
class Target:
    """A model to count, resolved: its meta denoiser and the inputs its pipeline feeds it."""

    denoiser: nn.Module
    label: str  # with the size, e.g. "SD-1.5 UNet @512"
    size: tuple[int, int]
    text_len: int
    vae_scale: int
    frames: int | None
    cfg_layout: CfgLayout
    cfg: bool = True  # whether its pipeline runs CFG by default

    def inputs(self, batch: int = 1) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Meta inputs of one call at ``batch`` samples, as its pipeline feeds them."""
        return example_inputs(
            self.denoiser, *self.size, self.text_len, self.vae_scale, batch=batch, frames=self.frames or 1
        )


def resolve_target(
    model: str, resolution: Resolution | None = None, text_len: int | None = None, frames: int | None = None
) -> Target:
    """A bundled model (``MODELS`` key) or a model folder, built on meta with its pipeline's defaults."""
    cfg = True
    if model in MODELS:
        spec = MODELS[model]
        config = bundled_config(spec.config)
        label, vae_scale, layout, cfg = spec.label, 8, spec.cfg_layout, spec.cfg
        size = _size(resolution) if resolution is not None else spec.size
        text_len = text_len or spec.text_len
        frames = frames or spec.frames
    else:
        folder = Path(model).expanduser()
        config, vae_scale = _folder_config(folder)
        label = folder.name
        known = PIPELINE_DEFAULTS.get(str(config.get("_class_name")))
        layout = known.cfg_layout if known else "batched"
        cfg = known.cfg if known else True
        if resolution is None:
            size = known.size if known else _size(int(config.get("sample_size", 64)) * vae_scale)
        else:
            size = _size(resolution)
        if text_len is None:
            text_len = folder_text_len(folder, config)
        if known and known.frames:
            frames = frames or known.frames
    denoiser = build_meta_denoiser(config)
    video = type(denoiser).__name__ in VIDEO_DENOISERS
    if frames is not None and not video:
        raise AccountingError(f"{label} is an image model; frames apply to video models only.")
    height, width = size
    where = f"{height}" if height == width and not video else f"{height}x{width}"
    if video:
        where += f", {frames} frame{'s' if frames != 1 else ''}"
    return Target(denoiser, f"{label} @{where}", size, text_len, vae_scale, frames, layout, cfg)


def _size(resolution: Resolution) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


def folder_text_len(folder: Path, denoiser_config: Mapping[str, Any]) -> int:
    """The prompt length a pipeline folder's denoiser sees: what its tokenizer pads to.

    SD/SDXL pipelines pad every prompt to ``tokenizer.model_max_length`` (read from
    ``tokenizer/tokenizer_config.json``; 77, CLIP's context, when the folder has none). PixArt pads to
    its call's ``max_sequence_length`` instead, whose default is 120. SD3 joins its CLIP prompt (the
    tokenizer's length) and its T5 prompt (``max_sequence_length``, 256); FLUX feeds T5 alone (512),
    Wan its umT5 prompt (512), HunyuanVideo its Llama prompt (256) and Qwen-Image its templated prompt
    unpadded, counted at its cap (512): see :data:`PIPELINE_DEFAULTS`.
    """
    name = denoiser_config.get("_class_name")
    if name == "PixArtTransformer2DModel":
        return PIXART_TEXT_LEN
    if name in PIPELINE_DEFAULTS:  # Wan, FLUX, Qwen-Image, HunyuanVideo: their call's max_sequence_length
        return PIPELINE_DEFAULTS[str(name)].text_len
    path = folder / "tokenizer" / "tokenizer_config.json"
    try:
        length = json.loads(path.read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        length = None
    # transformers writes a huge sentinel (int(1e30)) when a tokenizer has no length of its own
    clip = length if isinstance(length, int) and 0 < length <= 100_000 else DEFAULT_TEXT_LEN
    return clip + SD3_TEXT_LEN - DEFAULT_TEXT_LEN if name == "SD3Transformer2DModel" else clip


def _folder_config(folder: Path) -> tuple[dict[str, Any], int]:
    if not folder.is_dir():
        raise AccountingError(
            f"{str(folder)!r} is neither a bundled model ({', '.join(MODELS)}) nor a folder; pass a "
            "diffusers pipeline folder or a denoiser folder with config.json."
        )
    vae_scale = 8
    vae_config = folder / "vae" / "config.json"
    if vae_config.is_file():
        vae = json.loads(vae_config.read_text())
        if "temperal_downsample" in vae:  # AutoencoderKLWan: one 2x spatial step per entry
            vae_scale = 2 ** len(vae["temperal_downsample"])
        else:
            vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    for sub in ("unet", "transformer", "."):
        path = folder / sub / "config.json"
        if path.is_file():
            return json.loads(path.read_text()), vae_scale
    raise AccountingError(
        f"no denoiser config in {str(folder)!r}: expected unet/config.json, transformer/config.json or "
        "config.json."
    )
