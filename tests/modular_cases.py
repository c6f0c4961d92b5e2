"""Tiny Modular Diffusers pipelines, each built on the components of a tiny classic pipeline.

A case holds both pipelines (they share every model), the call for each, and how to bring the classic
pipeline's latents to the modular one's layout (FLUX and Qwen-Image pack their latents into tokens;
their modular pipelines hand them back unpacked). The classic pipelines with crossgate are checked
against independent references in test_families.py, test_sequential.py and test_joint.py; the modular
ones are checked against them (test_modular.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from crossgate import testing as rp


@dataclass
class ModularCase:
    classic: Any
    modular: Any
    call: dict[str, Any]  # the modular call's inputs (also the classic call's, with `classic_call`)
    classic_call: dict[str, Any] = field(default_factory=dict)
    classic_config: dict[str, Any] = field(default_factory=dict)  # crossgate options matching the modular run
    unpack: Callable[[torch.Tensor], torch.Tensor] = lambda latents: latents
    probe: str = ""  # a module that runs exactly when the denoiser computes a pass
    text: str = ""  # name suffix of the modules that compute the text side (cross-attention / text stream)
    joint: bool = False
    cfg: bool = True
    steps: int = 6
    gate: int = 3
    tolerance: float = 0.0  # max |modular - classic|: 0 where both run the same calls

    def run_modular(self, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)
        return self.modular(
            **self.call, num_inference_steps=self.steps, generator=generator, output="latents"
        )

    def run_classic(self, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(seed)
        kwargs = {**self.call, **self.classic_call, "num_inference_steps": self.steps}
        out = self.classic(**kwargs, generator=generator, output_type="latent")
        return self.unpack(out.frames if hasattr(out, "frames") else out.images)


def _modular(blocks: Any, classic: Any, pipeline_cls: Any = None, **extra: Any) -> Any:
    """A modular pipeline of ``blocks`` (its default class, or ``pipeline_cls``) on ``classic``'s models."""
    pipe = blocks.init_pipeline() if pipeline_cls is None else pipeline_cls(blocks=blocks)
    pipe.update_components(**{k: v for k, v in classic.components.items() if v is not None}, **extra)
    return pipe


def _cfg(scale: float) -> Any:
    from diffusers import ClassifierFreeGuidance

    return ClassifierFreeGuidance(guidance_scale=scale)


def sdxl() -> ModularCase:
    from diffusers import StableDiffusionXLAutoBlocks

    classic = rp.tiny_sdxl_pipeline()
    return ModularCase(
        classic,
        _modular(StableDiffusionXLAutoBlocks(), classic, guider=_cfg(5.0)),
        # an explicit negative prompt: without one the classic pipeline zeroes the uncond embeddings
        {"prompt": "a red circle", "negative_prompt": "blurry", "height": 32, "width": 32},
        {"guidance_scale": 5.0},
        # the classic pipeline batches [uncond; cond]; the modular one runs the cond call after the gate
        classic_config={"post_gate_inputs": "cond"},
        probe="conv_in",
        text="attn2",
        tolerance=1e-4,  # one batch of 2 against two calls of 1: float32 reassociation (plain: 2.7e-5)
    )


_VIDEO = {"prompt": "a red circle", "negative_prompt": "blurry", "height": 16, "width": 16, "num_frames": 5}


def wan() -> ModularCase:
    from diffusers import WanBlocks

    classic = rp.tiny_wan_pipeline()
    return ModularCase(
        classic,
        _modular(WanBlocks(), classic, guider=_cfg(5.0)),
        _VIDEO,
        {"guidance_scale": 5.0},
        probe="blocks.0.attn1",
        text="attn2",
    )


def wan22() -> ModularCase:
    """Wan 2.2's two experts (`transformer` above the boundary, `transformer_2` below), a guider each."""
    from diffusers import Wan22Blocks, Wan22ModularPipeline, WanPipeline

    classic = rp.ready(
        WanPipeline(
            **rp.tiny_wan_parts(0),
            transformer=rp.tiny_wan_transformer(0),
            transformer_2=rp.tiny_wan_transformer(1),
            boundary_ratio=0.87,  # 6 shifted steps: 1000, 966, 914 | 826, 644, 47
        )
    )
    # Wan22Blocks().init_pipeline() makes a WanModularPipeline: the class is named
    modular = _modular(Wan22Blocks(), classic, Wan22ModularPipeline, guider=_cfg(5.0), guider_2=_cfg(5.0))
    modular.register_to_config(boundary_ratio=0.87)
    # gate 4: both experts run before it (an expert first running after the gate computes its
    # cross-attention, the rule test_sequential.py::test_wan22_two_experts checks)
    return ModularCase(
        classic, modular, _VIDEO, {"guidance_scale": 5.0}, probe="blocks.0.attn1", text="attn2", gate=4
    )


def wan_i2v() -> ModularCase:
    from diffusers import WanImage2VideoAutoBlocks

    from sequential_cases import wan_i2v as classic_wan_i2v

    classic = classic_wan_i2v()
    call = {k: v for k, v in classic.kwargs.items() if k != "guidance_scale"}
    return ModularCase(
        classic.pipe,
        _modular(WanImage2VideoAutoBlocks(), classic.pipe, guider=_cfg(5.0)),
        call,
        {"guidance_scale": 5.0},
        probe="blocks.0.attn1",
        text="attn2",
    )


def ltx_video() -> ModularCase:
    from diffusers import LTXAutoBlocks, LTXPipeline

    from families import ltx_video as classic_ltx

    classic = classic_ltx().pipe
    call = {"prompt": "a red circle", "negative_prompt": "blurry", "height": 32, "width": 32, "num_frames": 9}
    return ModularCase(
        classic,
        _modular(LTXAutoBlocks(), classic, guider=_cfg(3.0)),
        {**call, "max_sequence_length": 16},
        {"guidance_scale": 3.0},
        classic_config={"post_gate_inputs": "cond"},
        # the classic pipeline packs the latents into tokens: 3 latent frames of 8 x 8
        unpack=lambda latents: LTXPipeline._unpack_latents(latents, 3, 8, 8, 1, 1),
        probe="transformer_blocks.0.attn1",
        text="attn2",
        steps=4,
        gate=2,
        tolerance=1e-4,  # one batch of 2 against two calls of 1
    )


def sd3() -> ModularCase:
    from diffusers import StableDiffusion3AutoBlocks

    classic = rp.tiny_sd3_pipeline()
    return ModularCase(
        classic,
        _modular(StableDiffusion3AutoBlocks(), classic, guider=_cfg(5.0)),
        {"prompt": "a red circle", "negative_prompt": "a blue square", "height": 32, "width": 32},
        {"guidance_scale": 5.0},
        probe="transformer_blocks.0.attn.to_q",
        text="add_k_proj",
        joint=True,
        tolerance=1e-4,  # one batch of 2 against two calls of 1 (plain: 1.8e-6)
    )


def flux() -> ModularCase:
    from diffusers import FluxAutoBlocks, FluxPipeline

    classic = rp.tiny_flux_pipeline()
    return ModularCase(
        classic,
        _modular(FluxAutoBlocks(), classic),
        {"prompt": "a red circle", "height": 32, "width": 32, "guidance_scale": 3.5},
        unpack=lambda latents: FluxPipeline._unpack_latents(latents, 32, 32, classic.vae_scale_factor),
        probe="transformer_blocks.0.attn.to_q",
        text="add_k_proj",
        joint=True,
        cfg=False,
    )


def flux_kontext() -> ModularCase:
    import numpy as np
    from diffusers import FluxKontextAutoBlocks, FluxKontextPipeline
    from PIL import Image

    classic = rp.tiny_flux_pipeline(cls=FluxKontextPipeline)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return ModularCase(
        classic,
        _modular(FluxKontextAutoBlocks(), classic),
        # both resize the image to a preferred Kontext resolution (1024 px) unless told not to
        {"prompt": "a red circle", "image": image, "height": 32, "width": 32, "guidance_scale": 3.5}
        | {"_auto_resize": False, "max_area": 32 * 32},
        unpack=lambda latents: FluxKontextPipeline._unpack_latents(latents, 32, 32, classic.vae_scale_factor),
        probe="transformer_blocks.0.attn.to_q",
        text="add_k_proj",
        joint=True,
        cfg=False,
    )


def qwen_image() -> ModularCase:
    from diffusers import QwenImageAutoBlocks, QwenImagePipeline

    classic = rp.tiny_qwen_image_pipeline()
    return ModularCase(
        classic,
        _modular(QwenImageAutoBlocks(), classic, guider=_cfg(4.0)),
        {"prompt": "a red circle", "negative_prompt": "a blue square", "height": 32, "width": 32},
        # the character tokenizer spells out Qwen's prompt template: keep every token
        {"true_cfg_scale": 4.0, "max_sequence_length": 512},
        unpack=lambda latents: QwenImagePipeline._unpack_latents(latents, 32, 32, classic.vae_scale_factor),
        probe="transformer_blocks.0.attn.to_q",
        text="add_k_proj",
        joint=True,
        tolerance=1e-4,
    )


@dataclass(frozen=True)
class Spec:
    build: Callable[[], ModularCase]
    pipeline: str  # the modular class it builds (the support table's entry points here)
    guider: str = "`ClassifierFreeGuidance`: cond call, then uncond call"


MODULAR_CASES: dict[str, Spec] = {
    "SDXL modular": Spec(sdxl, "StableDiffusionXLModularPipeline"),
    "Wan 2.1 modular": Spec(wan, "WanModularPipeline"),
    "Wan 2.2 modular (two experts)": Spec(
        wan22, "Wan22ModularPipeline", "`guider` and `guider_2`, one per expert"
    ),
    "Wan 2.1 image-to-video modular": Spec(wan_i2v, "WanImage2VideoModularPipeline"),
    "LTX-Video modular": Spec(ltx_video, "LTXModularPipeline"),
    "SD3 modular": Spec(sd3, "StableDiffusion3ModularPipeline"),
    "FLUX.1 modular": Spec(flux, "FluxModularPipeline", "none (guidance-distilled): text stream frozen"),
    "FLUX.1 Kontext modular": Spec(
        flux_kontext, "FluxKontextModularPipeline", "none (guidance-distilled): text stream frozen"
    ),
    "Qwen-Image modular": Spec(qwen_image, "QwenImageModularPipeline"),
}
