"""The joint-attention families crossgate supports, each built tiny from configs (tests/test_joint.py).

The support table (crossgate/adapters/support.py) names a case here for each supported joint class,
and the README's support matrix lists them (scripts/support_matrix.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from crossgate.testing import tiny_flux_pipeline, tiny_sd3_pipeline


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

    @property
    def cfg_text(self) -> str:
        if not self.cfg:
            return "none (guidance-distilled): text stream frozen, nothing dropped"
        if self.sequential:
            return "sequential (`true_cfg_scale`, calls named cond/uncond): uncond call skipped"
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

    return JointCase(build, cls_name, {"guidance_scale": 5.0, **call})


def _flux(cls_name: str, cfg: bool, **call: Any) -> JointCase:
    def build() -> Any:
        import diffusers

        return tiny_flux_pipeline(cls=getattr(diffusers, cls_name))

    extra = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"} if cfg else {}
    return JointCase(build, cls_name, {"guidance_scale": 3.5, **extra, **call}, cfg=cfg, sequential=True)


_INPAINT = {"image": _image(1), "mask_image": Image.new("L", (32, 32), 255), "strength": 1.0}
JOINT_CASES: dict[str, JointCase] = {
    "SD3": _sd3("StableDiffusion3Pipeline"),
    "SD3.5 (dual attention, qk-norm)": _sd3("StableDiffusion3Pipeline", dual=(0,)),
    "SD3 img2img": _sd3("StableDiffusion3Img2ImgPipeline", image=_image(), strength=1.0),
    "SD3 inpainting": _sd3("StableDiffusion3InpaintPipeline", **_INPAINT),
    "FLUX.1": _flux("FluxPipeline", cfg=True),
    "FLUX.1, distilled guidance (no CFG)": _flux("FluxPipeline", cfg=False),
}
