"""Tiny random-weight pipelines that run CFG as two named denoiser calls (Wan's family), and a second,
independent sequential-CFG TGATE to check the engine against.

The reference uses none of crossgate (not even its module finder): it counts denoiser calls (under CFG
the pipeline calls cond, then uncond, every step), treats as cross-attention every attention module
that is called with ``encoder_hidden_states`` (the conditioning as key/value input, seen at run time),
records those outputs with plain torch forward hooks, replays the mean after the gate, and hands the
uncond call the cond call's output by replacing ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossgate import testing as rp


@dataclass
class SeqCase:
    pipe: Any
    kwargs: dict[str, Any]
    steps: int = 4
    gate: int = 2


_VIDEO = {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16, "guidance_scale": 5.0}


def wan_t2v(seed: int = 0) -> SeqCase:
    from diffusers import WanPipeline

    pipe = WanPipeline(**rp.tiny_wan_parts(seed), transformer=rp.tiny_wan_transformer(seed))
    rp.ready(pipe)
    return SeqCase(pipe, {"prompt": "a red circle", "negative_prompt": "blurry", **_VIDEO})


def wan22_two_experts(seed: int = 0, boundary_ratio: float = 0.87, steps: int = 6) -> SeqCase:
    """Wan 2.2: `transformer` for t >= boundary, `transformer_2` below (6 shifted steps: 1000, 966, 914 | 826, 644, 47)."""
    from diffusers import WanPipeline

    pipe = WanPipeline(
        **rp.tiny_wan_parts(seed),
        transformer=rp.tiny_wan_transformer(seed),
        transformer_2=rp.tiny_wan_transformer(seed + 1),
        boundary_ratio=boundary_ratio,
    )
    rp.ready(pipe)
    return SeqCase(
        pipe, {"prompt": "a red circle", "negative_prompt": "blurry", **_VIDEO}, steps=steps, gate=2
    )


def wan_i2v(seed: int = 0) -> SeqCase:
    """Image-to-video: the CLIP image embedding enters attn2 through its added key/value projections."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor

    torch.manual_seed(seed)
    image_encoder = rp.tiny_clip_vision_encoder(4, patch_size=1)
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    pipe = WanImageToVideoPipeline(
        **rp.tiny_wan_parts(seed),
        # the latents are concatenated with the image condition: 16 + 20 channels in
        transformer=rp.tiny_wan_transformer(seed, in_channels=36, image_dim=4, added_kv_proj_dim=24),
        image_encoder=image_encoder,
        image_processor=image_processor,
    )
    rp.ready(pipe)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return SeqCase(pipe, {"image": image, "prompt": "a red circle", "negative_prompt": "blurry", **_VIDEO})


def wan_vace(seed: int = 0) -> SeqCase:
    """VACE: control blocks (`vace_blocks`, with their own attn2) add hints to the main blocks."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    transformer = rp.tiny_wan_transformer(
        seed, WanVACETransformer3DModel, vace_layers=[0], vace_in_channels=96
    )
    pipe = WanVACEPipeline(**rp.tiny_wan_parts(seed), transformer=transformer)
    rp.ready(pipe)
    return SeqCase(pipe, {"prompt": "a red circle", "negative_prompt": "blurry", **_VIDEO})


def skyreels_v2(seed: int = 0) -> SeqCase:
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    transformer = rp.tiny_wan_transformer(seed, SkyReelsV2Transformer3DModel)
    parts = rp.tiny_wan_parts(seed)
    parts["scheduler"] = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = SkyReelsV2Pipeline(**parts, transformer=transformer)
    rp.ready(pipe)
    return SeqCase(pipe, {"prompt": "a red circle", "negative_prompt": "blurry", **_VIDEO})


@dataclass(frozen=True)
class SeqSpec:
    """A per-branch CFG family in :data:`SEQUENTIAL`: its builder, the gates the text-attention check
    runs (Wan 2.2 needs one per expert) and how many denoisers (experts) its pipeline has."""

    build: Callable[[], SeqCase]
    gates: tuple[int, ...] = (2,)
    experts: int = 1


# The one registry of per-branch CFG families (test_sequential.py, test_cross_attention_detection.py);
# the batched-CFG families are tests/families.py's CASES.
SEQUENTIAL: dict[str, SeqSpec] = {
    "Wan 2.1 T2V": SeqSpec(wan_t2v),
    "Wan 2.1 I2V": SeqSpec(wan_i2v),
    "Wan VACE": SeqSpec(wan_vace),
    "SkyReels-V2": SeqSpec(skyreels_v2),
    # 6 steps, the experts switch at step 3: an expert replays only where it runs both before and
    # after the gate (gate 2: the first; gate 4: the second)
    "Wan 2.2 two experts": SeqSpec(wan22_two_experts, gates=(2, 4), experts=2),
}


class ManualSequentialTGate:
    """Hand-rolled sequential-CFG TGATE over the pipeline's transformers (cond call first, then uncond)."""

    def __init__(
        self, transformers: list[torch.nn.Module], gate: int, cfg: bool = True, keep_guidance: float = 0.0
    ) -> None:
        self.gate, self.cfg, self.keep_guidance = gate, cfg, keep_guidance
        self.delta: torch.Tensor | None = None
        self.calls = 0
        self.latest: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        self.cond_output: Any = None
        self._restore: list[Any] = []
        self._handles = []
        for index, transformer in enumerate(transformers):
            for name, module in transformer.named_modules():
                if hasattr(module, "to_q") and hasattr(module, "processor"):  # an attention module
                    hook = self._attn_hook((index, name))
                    self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
            original = transformer.forward
            self._restore.append((transformer, "forward" in transformer.__dict__, original))
            transformer.forward = self._forward_for(original)

    def _branch(self) -> str:
        return "uncond" if self.cfg and (self.calls - 1) % 2 else "cond"

    def _step(self) -> int:
        return (self.calls - 1) // 2 if self.cfg else self.calls - 1

    def _attn_hook(self, key):
        def hook(module, inputs, kwargs, output):
            context = inputs[1] if len(inputs) > 1 else kwargs.get("encoder_hidden_states")
            if not isinstance(context, torch.Tensor):
                return output  # self-attention: its key/value input is the latents
            if self._step() < self.gate:
                self.latest.setdefault(key, {})[self._branch()] = output
                return output
            if key not in self.cache:
                seen = self.latest.get(key)
                if not seen:
                    return output  # this expert never ran before the gate: compute
                self.cache[key] = (seen["cond"] + seen["uncond"]) / 2 if self.cfg else seen["cond"]
            return self.cache[key]

        return hook

    def _forward_for(self, original):
        def forward(*args, **kwargs):
            self.calls += 1
            step, branch = self._step(), self._branch()
            if step >= self.gate and branch == "uncond":
                if self.keep_guidance and self.delta is not None:  # the pipeline adds (g - 1) w delta
                    return (self.cond_output[0] - self.keep_guidance * self.delta,)
                return self.cond_output
            out = original(*args, **kwargs)
            if step == self.gate - 1 and branch == "cond":
                self.last_cond = out[0]
            if step == self.gate - 1 and branch == "uncond":
                self.delta = self.last_cond - out[0]
            if step >= self.gate:
                self.cond_output = out
            return out

        return forward

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for transformer, had_own, original in self._restore:
            if had_own:
                transformer.forward = original
            else:
                del transformer.forward
