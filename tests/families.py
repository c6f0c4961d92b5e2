"""Tiny random-weight pipelines of every supported family, with the call that exercises each.

Each builder returns a :class:`Case`: the pipeline, the keyword arguments of a short call, the
denoiser's attribute name and whether that call runs CFG as one batch. The support matrix in the
README is rendered from :data:`CASES` (see test_support_matrix.py), so it cannot drift.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossgate import testing as rp


@dataclass
class Case:
    pipe: Any
    kwargs: dict[str, Any]
    denoiser_attr: str = "unet"
    cfg: bool = True
    steps: int = 6
    gate: int = 3
    actual_steps: int | None = None  # denoising steps the loop really runs (img2img strength)
    half: str = "uncond"  # the CFG half the family feeds after the gate
    cond_first: bool = False  # the pipeline batches CFG as [cond; uncond] (Lumina-Next)
    passes: int = 1  # denoiser passes per step (Panorama: one per batch of view windows)
    interleaved: bool = False  # CFG batched per sample, [u0, c0, u1, c1, ...] (Panorama)
    notes: str = ""
    extra_modules: dict[str, Any] = field(default_factory=dict)


def _image(size: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def sd() -> Case:
    return Case(
        rp.tiny_sd_pipeline(), {"prompt": ["a red circle", "a blue square"], "negative_prompt": ["", "x"]}
    )


def sdxl() -> Case:
    return Case(rp.tiny_sdxl_pipeline(), {"prompt": "a red circle", "num_images_per_prompt": 2})


def sd_no_cfg() -> Case:
    return Case(rp.tiny_sd_pipeline(), {"prompt": "a red circle", "guidance_scale": 1.0}, cfg=False)


# PixArt at 16x16 is outside its resolution-binning tables; captions need no cleaning (no bs4 here).
_PIXART_CALL = {
    "prompt": "a red circle",
    "height": 16,
    "width": 16,
    "use_resolution_binning": False,
    "clean_caption": False,
}


def pixart_alpha() -> Case:
    return Case(
        rp.tiny_pixart_pipeline(), {**_PIXART_CALL, "num_images_per_prompt": 2}, denoiser_attr="transformer"
    )


def pixart_sigma() -> Case:
    return Case(
        rp.tiny_pixart_pipeline(sigma=True),
        {**_PIXART_CALL, "max_sequence_length": 32},
        denoiser_attr="transformer",
    )


def sana() -> Case:
    return Case(
        rp.tiny_sana_pipeline(),
        {
            "prompt": "a red circle",
            "height": 32,
            "width": 32,
            "use_resolution_binning": False,
            "clean_caption": False,
            "max_sequence_length": 16,
            "complex_human_instruction": None,
        },
        denoiser_attr="transformer",
    )


def pixart_lcm() -> Case:
    from diffusers import LCMScheduler

    pipe = rp.tiny_pixart_pipeline()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return Case(
        pipe,
        {**_PIXART_CALL, "guidance_scale": 1.0},
        denoiser_attr="transformer",
        cfg=False,
        steps=4,
        gate=1,
    )


def _lcm_unet_pipe(xl: bool):
    from diffusers import LCMScheduler

    build = rp.tiny_sdxl_pipeline if xl else rp.tiny_sd_pipeline
    pipe = build(time_cond_proj_dim=8)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def lcm_sd() -> Case:
    from diffusers import LatentConsistencyModelPipeline

    base = _lcm_unet_pipe(xl=False)
    pipe = LatentConsistencyModelPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "guidance_scale": 6.0}, cfg=False, steps=4, gate=1)


def lcm_sdxl() -> Case:
    return Case(
        _lcm_unet_pipe(xl=True), {"prompt": "a red circle", "guidance_scale": 6.0}, cfg=False, steps=4, gate=1
    )


def sd_img2img() -> Case:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**rp.tiny_sd_pipeline().components)
    rp.ready(pipe)
    return Case(
        pipe, {"prompt": "a red circle", "image": _image(), "strength": 0.5}, steps=10, gate=2, actual_steps=5
    )


def sdxl_img2img() -> Case:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        **rp.tiny_sdxl_pipeline().components, requires_aesthetics_score=False
    )
    rp.ready(pipe)
    return Case(
        pipe, {"prompt": "a red circle", "image": _image(), "strength": 0.5}, steps=10, gate=2, actual_steps=5
    )


_INPAINT_CALL = {
    "prompt": "a red circle",
    "image": _image(),
    "mask_image": _image(seed=1),
    "height": 32,
    "width": 32,
}


def sd_inpaint() -> Case:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**rp.tiny_sd_pipeline(in_channels=9).components)
    rp.ready(pipe)
    return Case(pipe, {**_INPAINT_CALL, "strength": 1.0})


def sdxl_inpaint() -> Case:
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = StableDiffusionXLInpaintPipeline(
        **rp.tiny_sdxl_pipeline().components, requires_aesthetics_score=False
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            **_INPAINT_CALL,
            "strength": 0.8,
        },
        steps=10,
        gate=3,
        actual_steps=8,
    )


def sd_controlnet() -> Case:
    from diffusers import StableDiffusionControlNetPipeline

    base = rp.tiny_sd_pipeline()
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=_controlnet(base))
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image()})


def sdxl_controlnet() -> Case:
    from diffusers import StableDiffusionXLControlNetPipeline

    base = rp.tiny_sdxl_pipeline()
    pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=_controlnet(base))
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image()})


def _ip_adapter_state_dict(unet, image_embed_dim: int = 16) -> dict[str, dict[str, torch.Tensor]]:
    """Random IP-Adapter weights in the layout `load_ip_adapter` reads (text keys by processor index)."""
    from diffusers.models.embeddings import ImageProjection

    layers: dict[str, torch.Tensor] = {}
    cross_dim = unet.config.cross_attention_dim
    for index, name in enumerate(unet.attn_processors.keys()):
        if name.endswith("attn1.processor"):
            continue
        module = unet.get_submodule(name[: -len(".processor")])
        hidden = module.to_q.in_features if hasattr(module, "to_q") else module.inner_dim
        inner = module.to_k.out_features
        layers[f"{index}.to_k_ip.weight"] = torch.randn(inner, cross_dim) * 0.05
        layers[f"{index}.to_v_ip.weight"] = torch.randn(inner, cross_dim) * 0.05
        del hidden
    projection = ImageProjection(
        cross_attention_dim=cross_dim, image_embed_dim=image_embed_dim, num_image_text_embeds=4
    )
    state = projection.state_dict()
    image_proj = {
        "proj.weight": state["image_embeds.weight"],
        "proj.bias": state["image_embeds.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    return {"image_proj": image_proj, "ip_adapter": layers}


def _with_ip_adapter(pipe, batch: int) -> dict[str, Any]:
    torch.manual_seed(3)
    pipe.unet._load_ip_adapter_weights([_ip_adapter_state_dict(pipe.unet)])
    pipe.set_ip_adapter_scale(0.8)
    embeds = torch.randn(2 * batch, 1, 16)  # [negative; positive] image embeds, as CFG expects
    return {"ip_adapter_image_embeds": [embeds]}


def sd_ip_adapter() -> Case:
    pipe = rp.tiny_sd_pipeline()
    return Case(pipe, {"prompt": "a red circle", **_with_ip_adapter(pipe, 1)})


def sdxl_ip_adapter() -> Case:
    pipe = rp.tiny_sdxl_pipeline()
    return Case(pipe, {"prompt": "a red circle", **_with_ip_adapter(pipe, 1)})


def sd_lora() -> Case:
    from peft import LoraConfig

    pipe = rp.tiny_sd_pipeline()
    torch.manual_seed(4)
    pipe.unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    return Case(pipe, {"prompt": "a red circle"})


def sd_model_cpu_offload() -> Case:
    pipe = rp.tiny_sd_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    return Case(pipe, {"prompt": "a red circle"})


def svd() -> Case:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=16,
        num_attention_heads=4,
        projection_class_embeddings_input_dim=48,
        addition_time_embed_dim=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        latent_channels=4,
    )
    image_encoder = rp.tiny_clip_vision_encoder(16, image_size=224, patch_size=32)
    feature_extractor = CLIPImageProcessor()  # SVD resizes to 224 itself before this runs
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "image": _image(),
            "height": 32,
            "width": 32,
            "num_frames": 2,
            "decode_chunk_size": 2,
            "min_guidance_scale": 1.5,
            "max_guidance_scale": 3.0,
        },
        steps=4,
        gate=2,
        half="cond",
    )


def ltx_video() -> Case:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    tokenizer = rp.char_fast_tokenizer(max_length=16)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    text_encoder = rp.tiny_t5_encoder(tokenizer)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 16},
        denoiser_attr="transformer",
        steps=4,
        gate=2,
    )


def _sd_parts(seed: int = 0, **unet_overrides: Any) -> dict[str, Any]:
    """The tiny SD components without the safety checker (a base for the SD-derived families)."""
    parts = dict(rp.tiny_sd_pipeline(seed, **unet_overrides).components)
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        parts.pop(name, None)
    return parts


def _video(frames: int = 2, size: int = 32) -> list[Image.Image]:
    return [_image(size, seed=i) for i in range(frames)]


def _motion_adapter():
    from diffusers import MotionAdapter

    torch.manual_seed(5)
    return MotionAdapter(
        block_out_channels=rp.TINY_UNET["block_out_channels"],  # one motion module per UNet level
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=8,
        use_motion_mid_block=False,
    )


def animatediff() -> Case:
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(**_sd_parts(), motion_adapter=_motion_adapter())
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "num_frames": 2, "height": 32, "width": 32}, steps=4, gate=2)


def animatediff_v2v() -> Case:
    from diffusers import AnimateDiffVideoToVideoPipeline

    pipe = AnimateDiffVideoToVideoPipeline(**_sd_parts(), motion_adapter=_motion_adapter())
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "video": _video(), "strength": 0.5, "height": 32, "width": 32},
        steps=8,
        gate=2,
        actual_steps=4,
    )


# The tiny SD UNet's layout with 3D blocks (text-to-video UNets, I2VGen-XL).
_VIDEO_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
}


def _unet3d(**overrides: Any):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(**{**rp.tiny_unet_kwargs(**_VIDEO_BLOCKS), **overrides})


def text_to_video() -> Case:
    from diffusers import TextToVideoSDPipeline

    parts = _sd_parts()
    parts["unet"] = _unet3d()
    pipe = TextToVideoSDPipeline(**parts)
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "num_frames": 2, "height": 32, "width": 32}, steps=4, gate=2)


def video_to_video() -> Case:
    from diffusers import VideoToVideoSDPipeline

    parts = _sd_parts()
    parts["unet"] = _unet3d()
    pipe = VideoToVideoSDPipeline(**parts)
    rp.ready(pipe)
    return Case(
        pipe, {"prompt": "a red circle", "video": _video(), "strength": 0.5}, steps=8, gate=2, actual_steps=4
    )


def _t2i_adapter(channels: tuple[int, ...], xl: bool = False):
    from diffusers import T2IAdapter

    torch.manual_seed(6)
    # One entry per UNet down block, each residual at the resolution its block adds it: SD adds them
    # at each block's input (32 px -> 16, 8), so downscale 2 then the adapter's own halvings. SDXL's
    # UNet adds a plain DownBlock2D's residual after its downsampler (8x8 here) and the XL adapter
    # keeps its first two levels at one resolution, so downscale 4.
    return T2IAdapter(
        in_channels=3,
        channels=list(channels),
        num_res_blocks=1,
        downscale_factor=4 if xl else 2,
        adapter_type="full_adapter_xl" if xl else "full_adapter",
    )


def sd_t2i_adapter() -> Case:
    from diffusers import StableDiffusionAdapterPipeline

    pipe = StableDiffusionAdapterPipeline(
        **_sd_parts(),
        adapter=_t2i_adapter((16, 32)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image(), "height": 32, "width": 32})


def sdxl_t2i_adapter() -> Case:
    from diffusers import StableDiffusionXLAdapterPipeline

    base = rp.tiny_sdxl_pipeline()
    pipe = StableDiffusionXLAdapterPipeline(**base.components, adapter=_t2i_adapter((16, 32), xl=True))
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image(), "height": 32, "width": 32})


def _controlnet(base, seed: int = 2) -> Any:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():  # from_unet zero-initialises the outputs; make the control matter
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return controlnet


def sd_controlnet_img2img() -> Case:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    base = rp.tiny_sd_pipeline()
    pipe = StableDiffusionControlNetImg2ImgPipeline(**base.components, controlnet=_controlnet(base))
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "image": _image(), "control_image": _image(seed=2), "strength": 0.5},
        steps=10,
        gate=2,
        actual_steps=5,
    )


def sd_controlnet_inpaint() -> Case:
    from diffusers import StableDiffusionControlNetInpaintPipeline

    base = rp.tiny_sd_pipeline(in_channels=9)
    controlnet = _controlnet(rp.tiny_sd_pipeline())  # the ControlNet sees the 4 latent channels only
    pipe = StableDiffusionControlNetInpaintPipeline(**base.components, controlnet=controlnet)
    rp.ready(pipe)
    return Case(pipe, {**_INPAINT_CALL, "control_image": _image(seed=2), "strength": 1.0})


def lcm_img2img() -> Case:
    from diffusers import LatentConsistencyModelImg2ImgPipeline

    base = _lcm_unet_pipe(xl=False)
    pipe = LatentConsistencyModelImg2ImgPipeline(
        **{k: v for k, v in base.components.items() if k != "image_encoder"}
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "image": _image(), "strength": 0.5, "guidance_scale": 6.0},
        cfg=False,
        steps=4,
        gate=1,
    )


def gligen() -> Case:
    from diffusers import StableDiffusionGLIGENPipeline

    parts = _sd_parts(attention_type="gated")
    pipe = StableDiffusionGLIGENPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "prompt": "a red circle and a blue square",
            "gligen_phrases": ["a red circle", "a blue square"],
            "gligen_boxes": [[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]],
            "gligen_scheduled_sampling_beta": 1.0,
            "height": 32,
            "width": 32,
        },
    )


def sd_upscale() -> Case:
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    parts = _sd_parts(in_channels=7, num_class_embeds=1000)
    pipe = StableDiffusionUpscalePipeline(
        **parts,
        low_res_scheduler=DDPMScheduler(),
        max_noise_level=350,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
    )
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image(16), "noise_level": 20})


def sd_controlnet_xs() -> Case:
    from diffusers import ControlNetXSAdapter, StableDiffusionControlNetXSPipeline

    parts = _sd_parts(layers_per_block=2)  # ControlNet-XS mirrors two resnets per down block
    torch.manual_seed(7)
    adapter = ControlNetXSAdapter.from_unet(
        parts["unet"], size_ratio=0.5, learn_time_embedding=True, conditioning_embedding_out_channels=(4, 8)
    )
    pipe = StableDiffusionControlNetXSPipeline(
        **parts,
        controlnet=adapter,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image(), "height": 32, "width": 32})


def sdxl_controlnet_union() -> Case:
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    base = rp.tiny_sdxl_pipeline()
    torch.manual_seed(2)
    config = base.unet.config
    params = inspect.signature(ControlNetUnionModel.__init__).parameters
    controlnet = ControlNetUnionModel(
        **{k: v for k, v in config.items() if k in params and not k.startswith("_")},
        conditioning_embedding_out_channels=(8, 16),
        num_trans_channel=16,  # the first block's width (the union transformer runs on its features)
        num_trans_head=2,
        num_proj_channel=16,
    )
    pipe = StableDiffusionXLControlNetUnionPipeline(**base.components, controlnet=controlnet)
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "control_image": [_image()],
            "control_mode": [1],
            "height": 32,
            "width": 32,
        },
    )


def sdxl_controlnet_img2img() -> Case:
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    base = rp.tiny_sdxl_pipeline()
    pipe = StableDiffusionXLControlNetImg2ImgPipeline(
        **base.components, controlnet=_controlnet(base), requires_aesthetics_score=False
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "image": _image(), "control_image": _image(seed=2), "strength": 0.5},
        steps=8,
        gate=2,
        actual_steps=4,
    )


def sdxl_controlnet_inpaint() -> Case:
    from diffusers import StableDiffusionXLControlNetInpaintPipeline

    base = rp.tiny_sdxl_pipeline()
    pipe = StableDiffusionXLControlNetInpaintPipeline(
        **base.components, controlnet=_controlnet(base), requires_aesthetics_score=False
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {**_INPAINT_CALL, "control_image": _image(seed=2), "strength": 0.5},
        steps=8,
        gate=2,
        actual_steps=4,
    )


def _movq():
    from diffusers import VQModel

    torch.manual_seed(8)
    return VQModel(
        block_out_channels=(32, 64),  # SpatialNorm groups by 32
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )


def kandinsky3() -> Case:
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet

    torch.manual_seed(0)
    tokenizer = rp.char_fast_tokenizer(max_length=128)
    unet = Kandinsky3UNet(
        in_channels=4,
        time_embedding_dim=4,
        groups=2,
        attention_head_dim=4,
        layers_per_block=3,  # Kandinsky 3's blocks assume three
        block_out_channels=(16, 32),
        cross_attention_dim=4,
        encoder_hid_dim=32,
    )
    pipe = Kandinsky3Pipeline(
        tokenizer=tokenizer,
        text_encoder=rp.tiny_t5_encoder(tokenizer),
        unet=unet,
        scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, thresholding=False),
        movq=_movq(),
    )
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "height": 16, "width": 16}, steps=4, gate=2)


def i2vgen_xl() -> Case:
    from diffusers import I2VGenXLPipeline, I2VGenXLUNet
    from transformers import CLIPImageProcessor

    parts = _sd_parts()
    torch.manual_seed(0)
    unet = I2VGenXLUNet(**rp.tiny_unet_kwargs(**_VIDEO_BLOCKS, num_attention_heads=None))
    image_encoder = rp.tiny_clip_vision_encoder(16, projection=32)
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    pipe = I2VGenXLPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=parts["scheduler"],
    )
    rp.ready(pipe)
    return Case(
        pipe,
        # clip_skip=None: the default (1) reads CLIPTextModel.text_model, which transformers 5 removed
        {
            "prompt": "a red circle",
            "image": _image(),
            "height": 16,
            "width": 16,
            "num_frames": 2,
            "clip_skip": None,
        },
        steps=4,
        gate=2,
    )


def latte() -> Case:
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    torch.manual_seed(0)
    tokenizer = rp.char_fast_tokenizer()
    transformer = LatteTransformer3DModel(
        sample_size=8,
        num_layers=1,
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
        video_length=2,
    )
    pipe = LattePipeline(
        tokenizer=tokenizer,
        text_encoder=rp.tiny_t5_encoder(tokenizer),
        vae=rp.tiny_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "height": 16,
            "width": 16,
            "video_length": 2,
            "clean_caption": False,
            "mask_feature": False,
        },
        denoiser_attr="transformer",
        steps=4,
        gate=2,
    )


def _bert_tokenizer(max_length: int = 77):
    import string
    import tempfile
    from pathlib import Path

    from transformers import BertTokenizer

    folder = Path(tempfile.mkdtemp(prefix="crossgate-bert-"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), model_max_length=max_length)


def hunyuan_dit() -> Case:
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = _bert_tokenizer()
    text_encoder = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=80,
        )
    )
    tokenizer_2 = rp.char_fast_tokenizer(max_length=256)
    transformer = HunyuanDiT2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        in_channels=4,
        cross_attention_dim=32,
        cross_attention_dim_t5=32,
        pooled_projection_dim=16,
        hidden_size=24,
        activation_fn="gelu-approximate",
    )
    pipe = HunyuanDiTPipeline(
        vae=rp.tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=rp.tiny_t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "height": 16, "width": 16, "use_resolution_binning": False},
        denoiser_attr="transformer",
        steps=4,
        gate=2,
    )


def sana_sprint() -> Case:
    from diffusers import SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

    base = rp.tiny_sana_pipeline()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        **{k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
        | {"guidance_embeds": True}
    )
    pipe = SanaSprintPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        transformer=transformer,
        scheduler=SCMScheduler(),
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "height": 32,
            "width": 32,
            "use_resolution_binning": False,
            "max_sequence_length": 16,
            "complex_human_instruction": None,
            "intermediate_timesteps": None,
        },
        denoiser_attr="transformer",
        cfg=False,
        steps=4,
        gate=2,
    )


def animatediff_sdxl() -> Case:
    from diffusers import AnimateDiffSDXLPipeline

    base = rp.tiny_sdxl_pipeline()
    parts = {k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = AnimateDiffSDXLPipeline(**parts, motion_adapter=_motion_adapter())
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "num_frames": 2, "height": 32, "width": 32}, steps=4, gate=2)


def _chatglm_tokenizer(max_length: int = 32):
    """Kolors' ChatGLM tokenizer over a character-level SentencePiece model trained here, offline."""
    import tempfile
    from pathlib import Path

    import sentencepiece as spm
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    folder = Path(tempfile.mkdtemp(prefix="crossgate-chatglm-"))
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n".join(["abcdefghijklmnopqrstuvwxyz 0123456789", "a red circle", "a blue square"] * 8)
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=45,
        model_type="char",
        character_coverage=1.0,
        minloglevel=2,
    )
    return ChatGLMTokenizer(str(folder / "tokenizer.model"), model_max_length=max_length)


def _kolors_parts() -> dict[str, Any]:
    """Kolors' components: an SDXL-layout UNet (one text encoder, pooled 32) and a tiny ChatGLM."""
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    tokenizer = _chatglm_tokenizer()
    unet = rp.tiny_sdxl_pipeline(projection_class_embeddings_input_dim=6 * 8 + 32).unet  # pooled 32
    text_encoder = ChatGLMModel(
        ChatGLMConfig(
            num_layers=2,
            padded_vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            ffn_hidden_size=64,
            kv_channels=8,
            num_attention_heads=4,
            seq_length=64,
            multi_query_attention=True,
            multi_query_group_num=2,
            original_rope=True,
        ),
        empty_init=False,  # the default leaves every weight uninitialised (torch.empty)
    )
    with torch.no_grad():  # its RMSNorm weights start empty whatever empty_init says
        for name, param in text_encoder.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
    return {
        "vae": rp.tiny_vae(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": rp.ddim_scheduler(),
        "force_zeros_for_empty_prompt": False,
    }


_KOLORS_CALL = {"prompt": "a red circle", "height": 32, "width": 32, "max_sequence_length": 32}


def kolors() -> Case:
    from diffusers import KolorsPipeline

    pipe = KolorsPipeline(**_kolors_parts())
    rp.ready(pipe)
    return Case(pipe, dict(_KOLORS_CALL))


def kolors_img2img() -> Case:
    from diffusers import KolorsImg2ImgPipeline

    pipe = KolorsImg2ImgPipeline(**_kolors_parts())
    rp.ready(pipe)
    return Case(pipe, {**_KOLORS_CALL, "image": _image(), "strength": 0.5}, steps=10, gate=2, actual_steps=5)


def allegro() -> Case:
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    torch.manual_seed(0)
    tokenizer = rp.char_fast_tokenizer(max_length=16)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        cross_attention_dim=24,
        sample_width=8,
        sample_height=8,
        sample_frames=8,
        caption_channels=32,
    )
    vae = AutoencoderKLAllegro(
        in_channels=3,
        out_channels=3,
        down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    vae.enable_tiling()  # Allegro's VAE decodes only tiled
    pipe = AllegroPipeline(
        tokenizer=tokenizer,
        text_encoder=rp.tiny_t5_encoder(tokenizer),
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    rp.ready(pipe)
    # 8 frames -> 2 latent frames and 32 px -> a 2x2 patch grid: Allegro's rotary tables then have
    # exactly as many rows as the CFG batch (2), which must not be taken for batched inputs.
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "height": 32,
            "width": 32,
            "num_frames": 8,
            "max_sequence_length": 16,
            "clean_caption": False,
        },
        denoiser_attr="transformer",
        steps=4,
        gate=2,
    )


def lumina() -> Case:
    """Lumina-Next (LuminaPipeline) with a tiny Next-DiT, Gemma-2 encoder and VAE (32 px, 4x4 latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaNextDiT2DModel, LuminaPipeline

    torch.manual_seed(0)
    # the pipeline pads prompts to 256 tokens; the appended </s> keeps an empty negative prompt's mask
    # non-empty (an all-masked cross-attention row is NaN)
    tokenizer = rp.char_fast_tokenizer(max_length=256)
    transformer = LuminaNextDiT2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        learn_sigma=True,
        qk_norm=True,
        cross_attention_dim=8,
        scaling_factor=1.0,
    )
    text_encoder = rp.tiny_gemma2_encoder(tokenizer)
    pipe = LuminaPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=rp.tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "height": 32, "width": 32, "clean_caption": False},
        denoiser_attr="transformer",
        steps=4,
        gate=2,
        cond_first=True,
    )


def sana_video() -> Case:
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel

    base = rp.tiny_sana_pipeline()
    torch.manual_seed(0)
    transformer = SanaVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=12,
        cross_attention_dim=24,
        caption_channels=8,
        mlp_ratio=2.5,
        sample_size=8,
        patch_size=(1, 2, 2),
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = SanaVideoPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=rp.small_wan_vae(base_dim=3),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    rp.ready(pipe)
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "height": 32,
            "width": 32,
            "frames": 5,
            "max_sequence_length": 16,
            "complex_human_instruction": None,
            "use_resolution_binning": False,
        },
        denoiser_attr="transformer",
        steps=4,
        gate=2,
    )


def sdxl_controlnet_xs() -> Case:
    from diffusers import ControlNetXSAdapter, StableDiffusionXLControlNetXSPipeline

    base = rp.tiny_sdxl_pipeline(layers_per_block=2)  # ControlNet-XS mirrors two resnets per down block
    torch.manual_seed(7)
    adapter = ControlNetXSAdapter.from_unet(
        base.unet, size_ratio=0.5, learn_time_embedding=True, conditioning_embedding_out_channels=(4, 8)
    )
    parts = {k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}
    pipe = StableDiffusionXLControlNetXSPipeline(**parts, controlnet=adapter)
    rp.ready(pipe)
    return Case(pipe, {"prompt": "a red circle", "image": _image(), "height": 32, "width": 32})


def latent_upscale() -> Case:
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    parts = _sd_parts()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        act_fn="gelu",
        attention_head_dim=8,
        norm_num_groups=None,
        # the K-UNet's channel bookkeeping holds for this four-level layout (groups of 32 channels)
        block_out_channels=(32, 32, 64, 64),
        time_cond_proj_dim=128 + 32,  # the noise-level embedding and the pooled text embedding
        conv_in_kernel=1,
        conv_out_kernel=1,
        cross_attention_dim=32,
        down_block_types=("KDownBlock2D", *("KCrossAttnDownBlock2D",) * 3),
        up_block_types=(*("KCrossAttnUpBlock2D",) * 3, "KUpBlock2D"),
        in_channels=8,
        mid_block_type=None,
        only_cross_attention=False,
        out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier",
        timestep_post_act="gelu",
    )
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
    rp.ready(pipe)
    low_res = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    return Case(pipe, {"prompt": "a red circle", "image": low_res}, steps=4, gate=2)


def kandinsky3_img2img() -> Case:
    from diffusers import Kandinsky3Img2ImgPipeline

    pipe = Kandinsky3Img2ImgPipeline(**kandinsky3().pipe.components)
    rp.ready(pipe)
    return Case(
        pipe,
        {"prompt": "a red circle", "image": _image(16), "strength": 0.5, "height": 16, "width": 16},
        steps=8,
        gate=2,
        actual_steps=4,
    )


def _panorama(view_batch_size: int = 1, guidance_scale: float = 7.5) -> Case:
    """SD Panorama (MultiDiffusion) on the tiny SD components, 3 view windows per step.

    ``get_views`` works in latents of 1/8 the pixels with 64-latent windows at stride 8, so the VAE here
    downsamples by 8 (four blocks) and a 32x640 panorama is a 4x80 latent: windows at columns 0, 8, 16.
    """
    from diffusers import AutoencoderKL, StableDiffusionPanoramaPipeline

    base = rp.tiny_sd_pipeline()
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    pipe = StableDiffusionPanoramaPipeline(
        **{**base.components, "vae": vae, "safety_checker": None, "feature_extractor": None},
        requires_safety_checker=False,
    )
    rp.ready(pipe)
    views = len(pipe.get_views(32, 640))
    assert views == 3, views
    return Case(
        pipe,
        {
            "prompt": "a red circle",
            "negative_prompt": "x",
            "height": 32,
            "width": 640,
            "view_batch_size": view_batch_size,
            "guidance_scale": guidance_scale,
        },
        cfg=guidance_scale > 1,
        passes=-(-views // view_batch_size),
        interleaved=True,
    )


def sd_panorama() -> Case:
    return _panorama()


def sd_panorama_view_batches() -> Case:
    return _panorama(view_batch_size=2)


def sd_panorama_no_cfg() -> Case:
    return _panorama(guidance_scale=1.0)


# What each attention module really attends to, measured in plain calls (no crossgate involved).


class _EnoughSeen(Exception):
    """Raised once every watched model has made one forward pass: the rest of the call is not needed."""


def attention_key_projections(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every attention module of ``model`` by name, found by its key projection ``to_k``.

    Independent of crossgate's own finder on purpose: nothing here reads ``is_cross_attention`` or a
    module's name; the key projection is what turns an attention's key/value input into keys.
    """
    return {
        name.rpartition(".")[0]: module
        for name, module in model.named_modules()
        if name.rpartition(".")[2] == "to_k"
    }


def first_key_inputs(
    models: dict[str, torch.nn.Module], run: Callable[[], Any]
) -> dict[tuple[str, str], Any]:
    """The input of each attention module's key projection at its first call during ``run()``.

    Keyed ``(model path, module name)``. Plain torch pre-hooks; ``run`` is stopped (by an exception
    it never sees) as soon as every model in ``models`` has made one forward pass.
    """
    seen: dict[tuple[str, str], Any] = {}
    passes: set[str] = set()
    handles = []

    def key_hook(key: tuple[str, str]) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            seen.setdefault(key, args[0].detach().clone())

        return hook

    def model_done(path: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            passes.add(path)
            if passes == set(models):
                raise _EnoughSeen

        return hook

    for path, model in models.items():
        handles += [
            p.register_forward_pre_hook(key_hook((path, n)))
            for n, p in attention_key_projections(model).items()
        ]
        handles.append(model.register_forward_hook(model_done(path)))
    try:
        run()
    except _EnoughSeen:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


_WORDS = ("a", "the", "red", "blue", "green", "small", "round", "circle", "square", "dog", "tree", "sky")


def random_prompt(rng: random.Random, avoid: str = "") -> str:
    """A prompt of known words; with ``avoid``, one that differs from it in its first letter and length."""
    while True:
        prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
        if not avoid or (prompt[0] != avoid[0] and len(prompt.split()) != len(avoid.split())):
            return prompt


def random_conditioning(
    kwargs: dict[str, Any], rng: random.Random, avoid: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Random values for what conditions a call: its prompt(s), or its image where it has no prompt (SVD)."""
    if "prompt" in kwargs:
        old = (avoid or {}).get("prompt")
        if isinstance(kwargs["prompt"], list):
            olds = old or [""] * len(kwargs["prompt"])
            return {"prompt": [random_prompt(rng, o) for o in olds]}
        return {"prompt": random_prompt(rng, old or "")}
    image = kwargs["image"]
    return {"image": _image(image.size[0], seed=rng.randrange(2**31))}


def text_attention(
    models: dict[str, torch.nn.Module],
    run: Callable[[int, dict[str, Any]], Any],
    kwargs: dict[str, Any],
    rng: random.Random,
) -> dict[str, set[str]]:
    """Per model path, the attention modules whose key/value input is the text encoder's output.

    Measured in three plain calls, ``run(seed, conditioning)``: a module attends to the text when the
    input of its key projection is the same in two calls that differ only in the initial noise (it
    does not depend on the latents: self-attention does, Kandinsky 3's included, whatever its
    ``is_cross_attention`` flag says) and changes with another random prompt (it is the conditioning,
    projected or concatenated as the model does, not a constant). Only the first denoiser pass of
    each call runs.
    """
    seeds = rng.sample(range(2**31), 2)
    prompt = random_conditioning(kwargs, rng)
    other = random_conditioning(kwargs, rng, avoid=prompt)
    base = first_key_inputs(models, lambda: run(seeds[0], prompt))
    noise = first_key_inputs(models, lambda: run(seeds[1], prompt))
    text = first_key_inputs(models, lambda: run(seeds[0], other))
    found: dict[str, set[str]] = {path: set() for path in models}
    for (path, name), key in base.items():
        same_text = torch.equal(key, noise[path, name])
        other_text = text[path, name]
        if same_text and not (other_text.shape == key.shape and torch.equal(other_text, key)):
            found[path].add(name)
    return found


def case_models(case: Case) -> dict[str, torch.nn.Module]:
    """The denoiser (first) and the ControlNets the loop runs beside it, by attribute path."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    models = {case.denoiser_attr: getattr(case.pipe, case.denoiser_attr)}
    control = getattr(case.pipe, "controlnet", None)
    nets = getattr(control, "nets", None)
    found = (
        {f"controlnet.nets.{i}": n for i, n in enumerate(nets)}
        if nets is not None
        else {"controlnet": control}
    )
    models.update({p: n for p, n in found.items() if isinstance(n, (ControlNetModel, ControlNetUnionModel))})
    return models


def plain_call(case: Case, seed: int = 0, global_seed: int | None = None, **overrides: Any) -> torch.Tensor:
    """One call of ``case`` (latents); ``overrides`` replace its keyword arguments.

    ``seed`` seeds the call's generator (the initial noise); ``global_seed`` (default: ``seed``) torch's
    global generator, which some pipelines sample conditioning from (I2VGen-XL's image latents).
    """
    kwargs = dict(case.kwargs, num_inference_steps=case.steps, output_type="latent", **overrides)
    torch.manual_seed(seed if global_seed is None else global_seed)
    out = case.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


def case_text_attention(case: Case, rng: random.Random) -> dict[str, set[str]]:
    """:func:`text_attention` for a family case: its denoiser and ControlNets."""
    return text_attention(
        case_models(case), lambda seed, cond: plain_call(case, seed, global_seed=0, **cond), case.kwargs, rng
    )


_UNCOND = "uncond: the negative prompt's side inputs, as the original release"
_NO_CFG = "the whole batch (no CFG)"


@dataclass(frozen=True)
class Spec:
    """One supported family: its builder and what the README's support matrix says about it."""

    build: Callable[[], Case]
    pipeline: str
    cfg: str = "batched, dropped after the gate"
    after_gate: str = _UNCOND


_PIXART_CFG = "batched (mask doubled), dropped after the gate"
_SVD_HALF = (
    "cond: SVD's unconditional inputs are zeros (image embeddings and latents), the uncond half has no image"
)
_DISTILLED = "none (guidance-distilled): full batch cached, no averaging"
_VIDEO_CFG = "batched (text repeated per frame inside the UNet), dropped after the gate"
_CONTROLNET_CFG = (
    "batched, dropped after the gate; the ControlNet is gated too: one half (batch B), its cross-attention "
    "replayed (guess mode: the cond half's residuals)"
)
_ADAPTER_CFG = "batched, dropped after the gate; the adapter's residuals are sliced to B"
_CONTROLNET_XS_CFG = (
    "batched; the control branch is part of the denoiser (UNetControlNetXSModel), so it is gated too"
)
_MASK_CFG = "batched (attention mask doubled), dropped after the gate"
_PANORAMA_CFG = (
    "interleaved per view window ([u0, c0, u1, c1, ...]), one pass per batch of windows each step; "
    "cross-attention cached per pass, dropped after the gate"
)
_PANORAMA_HALF = "uncond: the interleaved batch's even rows (`x[0::2]`), handed back twice per row"

CASES: dict[str, Spec] = {
    "SD 1.x/2.x": Spec(sd, "StableDiffusionPipeline"),
    "SD, guidance <= 1": Spec(sd_no_cfg, "StableDiffusionPipeline", "off: output cached as is", _NO_CFG),
    "SDXL": Spec(sdxl, "StableDiffusionXLPipeline"),
    "PixArt-Alpha": Spec(pixart_alpha, "PixArtAlphaPipeline", _PIXART_CFG),
    "PixArt-Sigma": Spec(pixart_sigma, "PixArtSigmaPipeline", _PIXART_CFG),
    "Sana": Spec(sana, "SanaPipeline"),
    "LCM (SD UNet)": Spec(lcm_sd, "LatentConsistencyModelPipeline", _DISTILLED, _NO_CFG),
    "LCM (SDXL UNet)": Spec(lcm_sdxl, "StableDiffusionXLPipeline", _DISTILLED, _NO_CFG),
    "PixArt-LCM": Spec(pixart_lcm, "PixArtAlphaPipeline", _DISTILLED, _NO_CFG),
    "SD img2img": Spec(sd_img2img, "StableDiffusionImg2ImgPipeline"),
    "SDXL img2img": Spec(sdxl_img2img, "StableDiffusionXLImg2ImgPipeline"),
    "SD inpainting": Spec(sd_inpaint, "StableDiffusionInpaintPipeline"),
    "SDXL inpainting": Spec(sdxl_inpaint, "StableDiffusionXLInpaintPipeline"),
    "SD ControlNet": Spec(sd_controlnet, "StableDiffusionControlNetPipeline", _CONTROLNET_CFG),
    "SDXL ControlNet": Spec(sdxl_controlnet, "StableDiffusionXLControlNetPipeline", _CONTROLNET_CFG),
    "SD IP-Adapter": Spec(sd_ip_adapter, "StableDiffusionPipeline"),
    "SDXL IP-Adapter": Spec(sdxl_ip_adapter, "StableDiffusionXLPipeline"),
    "SD LoRA (PEFT)": Spec(sd_lora, "StableDiffusionPipeline"),
    "SD + model CPU offload": Spec(sd_model_cpu_offload, "StableDiffusionPipeline"),
    "Stable Video Diffusion": Spec(
        svd,
        "StableVideoDiffusionPipeline",
        "batched (per-frame guidance), dropped after the gate",
        _SVD_HALF,
    ),
    "LTX-Video": Spec(ltx_video, "LTXPipeline"),
    "AnimateDiff": Spec(animatediff, "AnimateDiffPipeline", _VIDEO_CFG),
    "AnimateDiff video-to-video": Spec(animatediff_v2v, "AnimateDiffVideoToVideoPipeline", _VIDEO_CFG),
    "Text-to-video (UNet3D)": Spec(text_to_video, "TextToVideoSDPipeline", _VIDEO_CFG),
    "SD T2I-Adapter": Spec(sd_t2i_adapter, "StableDiffusionAdapterPipeline", _ADAPTER_CFG),
    "SD ControlNet img2img": Spec(
        sd_controlnet_img2img, "StableDiffusionControlNetImg2ImgPipeline", _CONTROLNET_CFG
    ),
    "SD ControlNet inpainting": Spec(
        sd_controlnet_inpaint, "StableDiffusionControlNetInpaintPipeline", _CONTROLNET_CFG
    ),
    "SDXL ControlNet img2img": Spec(
        sdxl_controlnet_img2img, "StableDiffusionXLControlNetImg2ImgPipeline", _CONTROLNET_CFG
    ),
    "SDXL ControlNet inpainting": Spec(
        sdxl_controlnet_inpaint, "StableDiffusionXLControlNetInpaintPipeline", _CONTROLNET_CFG
    ),
    "SDXL ControlNet-Union": Spec(
        sdxl_controlnet_union, "StableDiffusionXLControlNetUnionPipeline", _CONTROLNET_CFG
    ),
    "SD ControlNet-XS": Spec(sd_controlnet_xs, "StableDiffusionControlNetXSPipeline", _CONTROLNET_XS_CFG),
    "LCM img2img": Spec(lcm_img2img, "LatentConsistencyModelImg2ImgPipeline", _DISTILLED, _NO_CFG),
    "GLIGEN": Spec(
        gligen,
        "StableDiffusionGLIGENPipeline",
        "batched; the grounding (gated self-attention) is self-attention and keeps computing",
    ),
    "Kandinsky 3": Spec(kandinsky3, "Kandinsky3Pipeline", _MASK_CFG),
    "Kandinsky 3 img2img": Spec(kandinsky3_img2img, "Kandinsky3Img2ImgPipeline", _MASK_CFG),
    "I2VGen-XL": Spec(
        i2vgen_xl,
        "I2VGenXLPipeline",
        "batched (text and image embeddings, image latents and fps doubled), dropped after the gate",
    ),
    "Latte": Spec(latte, "LattePipeline", _VIDEO_CFG.replace("UNet", "transformer")),
    "HunyuanDiT": Spec(
        hunyuan_dit,
        "HunyuanDiTPipeline",
        "batched (CLIP and T5 embeddings, masks, size and style ids doubled), dropped after the gate",
    ),
    "Sana Sprint": Spec(
        sana_sprint,
        "SanaSprintPipeline",
        "none (guidance is an embedding input; fixed by the family adapter): full batch cached",
        _NO_CFG,
    ),
    "SD x4 upscaler": Spec(
        sd_upscale,
        "StableDiffusionUpscalePipeline",
        "batched (low-res image and noise level doubled), dropped after the gate",
    ),
    "SD x2 latent upscaler": Spec(
        latent_upscale,
        "StableDiffusionLatentUpscalePipeline",
        "batched (low-res latents and the pooled-text timestep condition doubled), dropped after the gate",
    ),
    "AnimateDiff SDXL": Spec(animatediff_sdxl, "AnimateDiffSDXLPipeline", _VIDEO_CFG),
    "Video-to-video (UNet3D)": Spec(video_to_video, "VideoToVideoSDPipeline", _VIDEO_CFG),
    "SDXL T2I-Adapter": Spec(sdxl_t2i_adapter, "StableDiffusionXLAdapterPipeline", _ADAPTER_CFG),
    "SDXL ControlNet-XS": Spec(
        sdxl_controlnet_xs, "StableDiffusionXLControlNetXSPipeline", _CONTROLNET_XS_CFG
    ),
    "Kolors": Spec(kolors, "KolorsPipeline"),
    "Kolors img2img": Spec(kolors_img2img, "KolorsImg2ImgPipeline"),
    "Allegro": Spec(
        allegro,
        "AllegroPipeline",
        _MASK_CFG + "; its rotary tables (`image_rotary_emb`) are never sliced",
    ),
    "Sana Video": Spec(sana_video, "SanaVideoPipeline", _MASK_CFG),
    "Lumina-Next": Spec(
        lumina,
        "LuminaPipeline",
        "batched as [cond; uncond] (prompt first; the family adapter says so), dropped after the gate",
    ),
    "SD Panorama": Spec(sd_panorama, "StableDiffusionPanoramaPipeline", _PANORAMA_CFG, _PANORAMA_HALF),
    "SD Panorama, 2 views per pass": Spec(
        sd_panorama_view_batches, "StableDiffusionPanoramaPipeline", _PANORAMA_CFG, _PANORAMA_HALF
    ),
    "SD Panorama, guidance <= 1": Spec(
        sd_panorama_no_cfg,
        "StableDiffusionPanoramaPipeline",
        "off: each window's output cached as is",
        _NO_CFG,
    ),
}

# Memory and precision features composed with crossgate (tests/test_memory_features.py).
MEMORY_ROWS: list[tuple[str, str, str]] = [
    (
        "group offloading (`enable_group_offload`, block and leaf level), either order",
        "supported; output exactly crossgate's alone",
        "test_memory_features.py",
    ),
    (
        "layerwise casting (`enable_layerwise_casting`, fp8 storage), either order",
        "supported; exactly the independent TGATE under the same casting, within 2x the casting's own error "
        "of fp32 crossgate",
        "test_memory_features.py",
    ),
    (
        "torchao int8 weight-only denoiser (`quantize_`), either order",
        "supported; as layerwise casting (skipped where torchao is not installed)",
        "test_memory_features.py",
    ),
]

# Rows of the matrix that are not a family case: (what, status, where it is tested).
OTHER_ROWS: list[tuple[str, str, str]] = [
    (
        "img2img / inpainting `gate_step`",
        "counts the steps the loop runs (`strength` x steps)",
        "test_family[SD img2img]",
    ),
    ("model CPU offload, crossgate applied first", "supported", "test_compose.py"),
    (
        "`torch.compile` of the denoiser: `pipe.unet = torch.compile(pipe.unet)`, `pipe.unet.compile()`, "
        "regional `compile_repeated_blocks()`, all with `fullgraph=True`, compiled before or after `apply()` "
        "(UNet, PixArt, Wan, ControlNet; SD Panorama assigned after `apply()`)",
        "supported: 0 graph breaks; one graph per kind of pass (batched CFG: plain, before the gate, after "
        "it = 3; Wan: 4), none new after the first gated call (other prompt, steps, gate) nor after "
        "`remove()`; within 1e-4 of eager crossgate",
        "test_compile.py",
    ),
    (
        '`compile_split_cfg=True` with a denoiser compiled whole (UNet, PixArt, SD Panorama with per-sample CFG, UNet with a compiled ControlNet; `gate_step="auto"` and `guidance_after_gate`)',
        "supported: the steps before the gate run as two B-row passes, so the graphs before and after the "
        "gate both take batch B; within 1e-4 of eager crossgate; refused for joint-attention and "
        "sequential-CFG families and with TGATE v2's self-attention caching",
        "test_compile.py",
    ),
    ("sequential CPU offload", "not tested: accelerate's sequential offload fails on CPU-only machines", "-"),
    *MEMORY_ROWS,
    (
        "user subclass of a supported class",
        "supported if it does not override `__call__`; one that does is refused until "
        "`crossgate.adapters.support.allow_untested(cls)`",
        "test_classification.py",
    ),
]
