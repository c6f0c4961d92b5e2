"""The joint-attention families crossgate supports, each built tiny from configs (tests/test_joint.py).

The support table (crossgate/adapters/support.py) names a case here for each supported joint class,
and the README's support matrix lists them (scripts/support_matrix.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from crossgate.testing import (
    tiny_auraflow_pipeline,
    tiny_chroma_pipeline,
    tiny_cogvideox_pipeline,
    tiny_cogview4_pipeline,
    tiny_flux_pipeline,
    tiny_hidream_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_lumina2_pipeline,
    tiny_qwen_image_edit_pipeline,
    tiny_qwen_image_pipeline,
    tiny_sd3_pipeline,
    tiny_z_image_pipeline,
)


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@dataclass(frozen=True)
class JointCase:
    build: Callable[[], Any]
    pipeline: str  # the diffusers class it builds (the support table's entry points here)
    call: dict[str, Any] = field(default_factory=dict)
    cfg: bool = True
    sequential: bool = False
    text_first: bool = True  # joint attention's token order: [text; image] (FLUX) or [image; text]
    text_output: int = 0  # where a block's output tuple has the text stream
    mean: bool = True  # the two branches' text streams have one length (text_stream="frozen_mean")
    named: bool = True  # sequential CFG: calls named cond/uncond (False: cond call first, then uncond)
    cond_first: bool = False  # batched CFG as [cond; uncond] (Z-Image)

    @property
    def cfg_text(self) -> str:
        if not self.cfg:
            return "none (guidance-distilled): text stream frozen, nothing dropped"
        if self.sequential and not self.named:
            return "sequential (`true_cfg_scale`, cond call then uncond call): uncond call skipped"
        if self.sequential:
            return "sequential (`true_cfg_scale`, calls named cond/uncond): uncond call skipped"
        if self.cond_first:
            return "batched `[cond; uncond]`: cond half runs"
        return "batched `[uncond; cond]`: cond half runs"


def _sd3(cls_name: str, dual: tuple[int, ...] = (), **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        pipe = tiny_sd3_pipeline(dual_attention_layers=dual)
        return (
            getattr(diffusers, cls_name)(**pipe.components)
            if cls_name != "StableDiffusion3Pipeline"
            else pipe
        )

    return JointCase(build, cls_name, {"guidance_scale": 5.0, **call}, text_first=False)


def _flux(cls_name: str, cfg: bool, in_channels: int = 16, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_flux_pipeline(cls=getattr(diffusers, cls_name), in_channels=in_channels)

    extra = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"} if cfg else {}
    return JointCase(
        build,
        cls_name,
        {"guidance_scale": 3.5, **extra, **call},
        cfg=cfg,
        sequential=True,
        named=cls_name == "FluxPipeline",
    )


def _sd3_controlnet() -> JointCase:
    def build() -> Any:
        import diffusers
        import torch

        pipe = tiny_sd3_pipeline()
        torch.manual_seed(1)
        controlnet = diffusers.SD3ControlNetModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=64,
            out_channels=16,
            pos_embed_max_size=16,
        )
        return diffusers.StableDiffusion3ControlNetPipeline(**pipe.components, controlnet=controlnet)

    call = {"guidance_scale": 5.0, "control_image": _image(2)}
    return JointCase(build, "StableDiffusion3ControlNetPipeline", call, text_first=False)


def _flux_controlnet(cls_name: str, cfg: bool, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers
        import torch

        pipe = tiny_flux_pipeline()
        torch.manual_seed(1)
        controlnet = diffusers.FluxControlNetModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(2, 2, 4),
        )
        cls = getattr(diffusers, cls_name)
        parts = {k: v for k, v in pipe.components.items() if k in inspect.signature(cls.__init__).parameters}
        return cls(**parts, controlnet=controlnet)

    extra = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"} if cfg else {}
    call = {"guidance_scale": 3.5, "control_image": _image(2), **extra, **call}
    return JointCase(build, cls_name, call, cfg=cfg, sequential=True, named=False)


def _chroma(cls_name: str, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_chroma_pipeline(cls=getattr(diffusers, cls_name))

    call = {"guidance_scale": 4.0, "negative_prompt": "a blue square", **call}
    return JointCase(build, cls_name, call, sequential=True, named=False)


def _qwen_controlnet() -> JointCase:
    def build() -> Any:
        import diffusers
        import torch

        pipe = tiny_qwen_image_pipeline()
        torch.manual_seed(1)
        controlnet = diffusers.QwenImageControlNetModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
        )
        return diffusers.QwenImageControlNetPipeline(**pipe.components, controlnet=controlnet)

    call = {"max_sequence_length": 512, "true_cfg_scale": 4.0, "negative_prompt": "a blue square"}
    call["control_image"] = _image(2)
    return JointCase(build, "QwenImageControlNetPipeline", call, sequential=True, mean=False)


def _qwen(cls_name: str, cfg: bool, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_qwen_image_pipeline(cls=getattr(diffusers, cls_name))

    extra = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"} if cfg else {}
    # the character tokenizer spells out Qwen's prompt template: keep every token, prompt included
    call = {"max_sequence_length": 512, **extra, **call}
    return JointCase(build, cls_name, call, cfg=cfg, sequential=True, mean=False)


def _small_edit_conditions() -> None:
    """Qwen-Image Edit resizes the condition image to 1024 x 1024 px (384 px for Edit Plus's vision
    input) whatever the output size: a minute per tiny call on a CPU. The cases shrink that target to
    32 x 32 px by wrapping each Edit module's ``calculate_dimensions``; the pipelines' own ``__call__``
    and transformer calls are unchanged (the condition's tokens are image rows like any other)."""
    import importlib

    for name in ("edit", "edit_plus", "edit_inpaint"):
        module = importlib.import_module(f"diffusers.pipelines.qwenimage.pipeline_qwenimage_{name}")
        original = module.calculate_dimensions
        if not getattr(original, "small", False):

            def small(target_area: int, ratio: float, original: Callable = original) -> Any:
                return original(32 * 32, ratio)

            small.small = True  # type: ignore[attr-defined]
            module.calculate_dimensions = small


def _qwen_edit(cls_name: str, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        _small_edit_conditions()
        return tiny_qwen_image_edit_pipeline(cls=getattr(diffusers, cls_name))

    call = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square", **call}
    return JointCase(build, cls_name, call, sequential=True, mean=False)


def _hunyuan_video(cfg: bool) -> JointCase:
    extra = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"} if cfg else {}
    call = {
        "height": 16,
        "width": 16,
        "num_frames": 9,
        "prompt_template": {"template": "{}", "crop_start": 0},
    }
    return JointCase(
        tiny_hunyuan_video_pipeline,
        "HunyuanVideoPipeline",
        {"guidance_scale": 6.0, **call, **extra},
        cfg=cfg,
        sequential=True,
        text_first=False,
        text_output=1,
    )


def _cogvideox(cls_name: str, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_cogvideox_pipeline(cls=getattr(diffusers, cls_name))

    video = {"height": 16, "width": 16, "negative_prompt": "a blue square", "guidance_scale": 6.0}
    return JointCase(build, cls_name, {**video, **call}, text_output=1)


def _z_image(cls_name: str, cfg: bool, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_z_image_pipeline(cls=getattr(diffusers, cls_name))

    # each caption unpadded (then to a multiple of 32): the branches' text lengths differ
    negative = "a blue square on a grey table, blurry"  # past 32 tokens: 64 text rows, the prompt's 32
    guidance = {"guidance_scale": 4.0, "negative_prompt": negative} if cfg else {"guidance_scale": 0.0}
    call = {"max_sequence_length": 64, **guidance, **call}
    return JointCase(build, cls_name, call, cfg=cfg, text_first=False, mean=False, cond_first=True)


_INPAINT = {"image": _image(1), "mask_image": Image.new("L", (32, 32), 255), "strength": 1.0}
JOINT_CASES: dict[str, JointCase] = {
    "SD3": _sd3("StableDiffusion3Pipeline"),
    "SD3.5 (dual attention, qk-norm)": _sd3("StableDiffusion3Pipeline", dual=(0,)),
    "SD3 img2img": _sd3("StableDiffusion3Img2ImgPipeline", image=_image(), strength=1.0),
    "SD3 inpainting": _sd3("StableDiffusion3InpaintPipeline", **_INPAINT),
    "SD3 ControlNet": _sd3_controlnet(),
    "FLUX.1": _flux("FluxPipeline", cfg=True),
    "FLUX.1, distilled guidance (no CFG)": _flux("FluxPipeline", cfg=False),
    "FLUX.1 img2img": _flux("FluxImg2ImgPipeline", cfg=True, image=_image(), strength=1.0),
    "FLUX.1 inpainting": _flux("FluxInpaintPipeline", cfg=True, **_INPAINT),
    "FLUX.1 Kontext": _flux(
        "FluxKontextPipeline", cfg=True, image=_image(), _auto_resize=False, max_area=32 * 32
    ),
    "FLUX.1 Kontext inpainting": _flux(
        "FluxKontextInpaintPipeline", cfg=True, _auto_resize=False, max_area=32 * 32, **_INPAINT
    ),
    "FLUX.1 ControlNet": _flux_controlnet("FluxControlNetPipeline", cfg=True),
    "FLUX.1 ControlNet img2img": _flux_controlnet(
        "FluxControlNetImg2ImgPipeline", cfg=False, image=_image(), strength=1.0
    ),
    "FLUX.1 ControlNet inpainting": _flux_controlnet("FluxControlNetInpaintPipeline", cfg=False, **_INPAINT),
    "FLUX.1 Fill": _flux(
        "FluxFillPipeline", cfg=False, in_channels=48, image=_image(), mask_image=_INPAINT["mask_image"]
    ),
    "FLUX.1 Control": _flux("FluxControlPipeline", cfg=False, in_channels=32, control_image=_image(2)),
    "FLUX.1 Control img2img": _flux(
        "FluxControlImg2ImgPipeline",
        cfg=False,
        in_channels=32,
        image=_image(),
        control_image=_image(2),
        strength=1.0,
    ),
    "FLUX.1 Control inpainting": _flux(
        "FluxControlInpaintPipeline", cfg=False, in_channels=32, control_image=_image(2), **_INPAINT
    ),
    "AuraFlow": JointCase(
        tiny_auraflow_pipeline,
        "AuraFlowPipeline",
        {"guidance_scale": 4.0, "negative_prompt": "a blue square"},
    ),
    "Chroma": _chroma("ChromaPipeline"),
    "Chroma img2img": _chroma("ChromaImg2ImgPipeline", image=_image(), strength=1.0),
    "Qwen-Image": _qwen("QwenImagePipeline", cfg=True),
    "Qwen-Image, no CFG": _qwen("QwenImagePipeline", cfg=False),
    "Qwen-Image img2img": _qwen("QwenImageImg2ImgPipeline", cfg=True, image=_image(), strength=1.0),
    "Qwen-Image ControlNet": _qwen_controlnet(),
    "Qwen-Image inpainting": _qwen("QwenImageInpaintPipeline", cfg=True, **_INPAINT),
    "Qwen-Image Edit": _qwen_edit("QwenImageEditPipeline", image=_image()),
    "Qwen-Image Edit Plus, two images": _qwen_edit("QwenImageEditPlusPipeline", image=[_image(0), _image(1)]),
    "Qwen-Image Edit inpainting": _qwen_edit("QwenImageEditInpaintPipeline", **_INPAINT),
    "HunyuanVideo": _hunyuan_video(cfg=False),
    "HunyuanVideo, true CFG": _hunyuan_video(cfg=True),
    "CogView4": JointCase(
        tiny_cogview4_pipeline,
        "CogView4Pipeline",
        {"guidance_scale": 5.0, "negative_prompt": "a blue square"},
        sequential=True,
        text_output=1,
        mean=False,
    ),
    # no system prompt and room for the whole prompt: the two branches' unpadded lengths differ
    "Lumina2": JointCase(
        tiny_lumina2_pipeline,
        "Lumina2Pipeline",
        {
            "guidance_scale": 4.0,
            "negative_prompt": "a blue square",
            "system_prompt": "",
            "max_sequence_length": 64,
        },
        sequential=True,
        named=False,
        mean=False,
    ),
    "Z-Image": _z_image("ZImagePipeline", cfg=True),
    "Z-Image-Turbo (no CFG)": _z_image("ZImagePipeline", cfg=False),
    "Z-Image img2img": _z_image("ZImageImg2ImgPipeline", cfg=True, image=_image(), strength=1.0),
    "Z-Image inpainting": _z_image("ZImageInpaintPipeline", cfg=True, **_INPAINT),
    "HiDream": JointCase(
        tiny_hidream_pipeline,
        "HiDreamImagePipeline",
        {"guidance_scale": 5.0, "negative_prompt": "a blue square"},
        text_first=False,
        text_output=1,
    ),
    "CogVideoX": _cogvideox("CogVideoXPipeline", num_frames=8),
    "CogVideoX video-to-video": _cogvideox(
        "CogVideoXVideoToVideoPipeline", video=[_image(i).resize((16, 16)) for i in range(8)], strength=1.0
    ),
}
