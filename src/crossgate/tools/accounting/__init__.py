"""Compute accounting: how many multiply-accumulates (MACs) a denoiser spends per image.

One denoiser call (one sample) is counted in two conventions:

* ``"linear_conv"``: linear and convolution layers only, the convention of the TGATE paper (calflops
  misses scaled-dot-product attention, so the attention matmuls are not in the paper's totals).
  Counted exactly with forward hooks on every ``nn.Linear``/``nn.ConvNd``.
* ``"all"``: every operation ``torch.utils.flop_counter.FlopCounterMode`` knows, attention matmuls
  included (on meta tensors SDPA is decomposed into counted matmuls). MACs = FLOPs / 2.

Rooms: :mod:`.counting` (the counters, :class:`CallMacs`), :mod:`.models` (bundled configs and
model folders built on the meta device, and a UNet's ControlNet: :func:`controlnet_macs`),
:mod:`.schedules` (per-step plans and per-image totals, executed MACs from ``CallStats``),
:mod:`.meter` (:class:`CallMeter`, a real call measured live, ControlNets included), :mod:`.joint`
(joint-attention transformers, SD3, FLUX.1, Qwen-Image and HunyuanVideo: the CFG drop, the text
freeze and its capture, :class:`JointMacs`).
"""

from __future__ import annotations

from crossgate.tools.accounting.counting import (
    CONVENTIONS,
    AccountingError,
    CallMacs,
    Convention,
    LinearConvCounter,
    check_convention,
    count_call,
    tera,
)
from crossgate.tools.accounting.joint import JointMacs, JointSplit, count_joint, is_joint_model, joint_macs
from crossgate.tools.accounting.meter import CallMeter
from crossgate.tools.accounting.models import (
    MODELS,
    ModelSpec,
    build_meta_denoiser,
    bundled_config,
    call_macs,
    controlnet_macs,
    example_inputs,
    folder_text_len,
)
from crossgate.tools.accounting.schedules import Schedule, executed_macs, image_macs, v2_self_attention_steps

__all__ = [
    "CONVENTIONS",
    "MODELS",
    "AccountingError",
    "CallMacs",
    "CallMeter",
    "Convention",
    "JointMacs",
    "JointSplit",
    "LinearConvCounter",
    "ModelSpec",
    "Schedule",
    "build_meta_denoiser",
    "bundled_config",
    "call_macs",
    "check_convention",
    "controlnet_macs",
    "count_call",
    "count_joint",
    "example_inputs",
    "executed_macs",
    "folder_text_len",
    "image_macs",
    "is_joint_model",
    "joint_macs",
    "tera",
    "v2_self_attention_steps",
]
