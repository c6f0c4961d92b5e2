"""Joint-attention accounting (crossgate.tools.accounting.joint): SD3 and FLUX.1, counted on meta.

Two independent checks: a real crossgate-gated call of a tiny SD3/FLUX pipeline, whose linear/conv
MACs (forward hooks) and all-op MACs (``FlopCounterMode`` with the math SDPA kernel, so attention is
counted on CPU too) must equal the prediction exactly, in every CFG layout and variant; and SD3-medium's
published architecture counted by hand (linear layers and attention matmuls). Then the CLI's rows.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import crossgate
from crossgate.cli import main
from crossgate.loading import bundled_config
from crossgate.testing import tiny_flux_pipeline, tiny_sd3_pipeline
from crossgate.tools.accounting import (
    MODELS,
    AccountingError,
    CallMeter,
    is_joint_model,
    joint_macs,
)

STEPS = 3
CONVENTIONS = ("linear_conv", "all")


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {
        "sd3": tiny_sd3_pipeline(),
        "sd3.5": tiny_sd3_pipeline(dual_attention_layers=(0,)),  # qk-norm (and MMDiT-X's second attention)
        "flux": tiny_flux_pipeline(),
    }


CFG_CALL = {
    "sd3": {"guidance_scale": 5.0},
    "sd3.5": {"guidance_scale": 5.0},
    "flux": {"guidance_scale": 3.5},  # FLUX.1-dev's distilled guidance: no CFG
    "flux-cfg": {"guidance_scale": 3.5, "true_cfg_scale": 4.0, "negative_prompt": "a blue square"},
}


def _measured(
    pipe: Any, call: dict, gate: int | None, config: dict, steps: int = STEPS
) -> tuple[dict[str, int], CallMeter]:
    """What one real call of ``pipe`` ran in its transformer: linear/conv and all-op MACs."""
    gated = crossgate.enabled(pipe, gate_step=gate, **config) if gate else contextlib.nullcontext()
    kwargs = dict(
        prompt="a red circle", num_inference_steps=steps, height=32, width=32, max_sequence_length=16
    )
    with gated, CallMeter(pipe) as meter, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        pipe(**kwargs, **call, output_type="latent", generator=torch.Generator().manual_seed(0))
    flops = sum(fc.get_flop_counts()[type(pipe.transformer).__name__].values()) // 2
    return {"linear_conv": meter.denoiser_executed, "all": flops}, meter


@pytest.mark.parametrize(
    ("case", "gate", "config"),
    [
        ("sd3", None, {}),
        ("sd3", 2, {}),
        ("sd3", 2, {"text_stream": "live"}),
        ("sd3", 2, {"keep_cfg": True}),
        ("sd3.5", 2, {}),
        ("flux", 2, {}),
        ("flux", STEPS, {}),  # the gate at the last step: the capture runs, nothing follows it
        ("flux-cfg", 2, {}),
        ("flux-cfg", 2, {"text_stream": "live"}),
        ("flux-cfg", 2, {"keep_cfg": True}),
    ],
)
def test_prediction_equals_a_real_gated_call(pipes, case: str, gate: int | None, config: dict) -> None:
    pipe = pipes[case.removesuffix("-cfg")]
    cfg = case != "flux"
    measured, meter = _measured(pipe, CFG_CALL[case], gate, config)
    counted = meter.joint_macs(cfg=cfg)
    assert counted.cfg_layout == ("sequential" if case.startswith("flux") else "batched")
    predicted = {
        c: counted.image_macs(
            STEPS, gate, c, cfg, config.get("text_stream", "frozen"), config.get("keep_cfg", False)
        )
        for c in CONVENTIONS
    }
    assert predicted == measured
    # the frozen text stream's memory: blocks x 3 x rows x text tokens x hidden (SD3's last block hands
    # no text on: its key and value only)
    tensors = {"sd3": 2 * 3 - 1, "sd3.5": 2 * 3 - 1, "flux": 4 * 3}[case.removesuffix("-cfg")]
    config_ = pipe.transformer.config
    per_row = tensors * counted.text_tokens * config_.attention_head_dim * config_.num_attention_heads
    assert counted.kept == {1: per_row, 2: 2 * per_row} and counted.kept_bytes() == 2 * per_row
    if gate is not None and gate < STEPS and config.get("text_stream") != "live":
        plain = {c: counted.image_macs(STEPS, None, c, cfg) for c in CONVENTIONS}
        assert all(predicted[c] < plain[c] for c in CONVENTIONS)
        split = counted.split(STEPS, gate, "all", cfg)
        assert split.tgate == split.baseline - split.cfg_drop - split.text_freeze + split.capture
        assert split.text_freeze > 0 and split.capture > 0 and (split.cfg_drop > 0) == cfg


def _sd3_medium_by_hand() -> dict[str, int]:
    """SD3-medium @1024, one row: plain pass, text side, capture, outside the blocks (linear+conv), and
    the attention matmuls, from its published config (24 blocks of width 1536, the last context_pre_only)."""
    d, layers, tokens, text, ctx, pooled, patch = 1536, 24, 4096, 333, 4096, 2048, 16 * 2 * 2
    image_block = 6 * d * d + 4 * tokens * d * d + 8 * tokens * d * d  # adaLN, q/k/v/out, FFN (4x)
    text_block = 6 * d * d + 4 * text * d * d + 8 * text * d * d  # the same on the text stream
    text_last = 2 * d * d + 3 * text * d * d  # context_pre_only: adaLN-continuous, q/k/v (no out, no FFN)
    outside = tokens * patch * d + text * ctx * d  # patch embedding, context_embedder
    outside += 256 * d + d * d + pooled * d + d * d  # timestep and pooled-text embedders
    outside += 2 * d * d + tokens * d * patch  # norm_out, proj_out
    text_side = (layers - 1) * text_block + text_last
    return {
        "plain": layers * image_block + text_side + outside,
        "text_side": text_side,
        "capture": (layers - 1) * (6 * d * d + 2 * text * d * d) + 2 * d * d + 2 * text * d * d,  # norm, k, v
        "outside": outside,
        "attention": layers * 2 * (tokens + text) ** 2 * d,  # QK^T and AV over all rows
        "attention_text_rows": layers * 2 * text * (tokens + text) * d,  # the text queries' share
    }


def test_sd3_medium_counts_equal_the_architecture_by_hand() -> None:
    hand, counted = _sd3_medium_by_hand(), joint_macs("sd3-medium")
    assert (counted.blocks, counted.image_tokens, counted.text_tokens) == (24, 4096, 333)
    assert counted.plain[1]["linear_conv"] == hand["plain"]
    assert counted.plain[1]["all"] == hand["plain"] + hand["attention"]
    assert counted.plain[2] == {c: 2 * counted.plain[1][c] for c in CONVENTIONS}
    assert counted.text_side("linear_conv") == hand["text_side"]
    assert counted.text_side("all") == hand["text_side"] + hand["attention_text_rows"]
    assert counted.capture[1] == {"linear_conv": hand["capture"], "all": hand["capture"]}
    assert counted.idle == {"linear_conv": hand["outside"], "all": hand["outside"]}
    assert counted.kept[1] == (24 * 3 - 1) * 333 * 1536
    # n=25, m=10, batched CFG: 10 steps at 2 rows and the capture at 2 rows, then 15 frozen passes at 1
    tgate = 10 * 2 * hand["plain"] + 2 * hand["capture"] + 15 * (hand["plain"] - hand["text_side"])
    assert counted.image_macs(25, 10) == tgate
    split = counted.split(25, 10)
    assert counted.image_macs(25, 26) == counted.image_macs(25, None)  # the gate never comes: plain
    assert (split.cfg_drop, split.text_freeze) == (15 * hand["plain"], 15 * hand["text_side"])


def test_bundled_joint_configs() -> None:
    assert [k for k in MODELS if is_joint_model(k)] == ["sd3-medium", "sd3.5-large", "flux1-dev"]
    flux = bundled_config(MODELS["flux1-dev"].config)
    assert (flux["num_layers"], flux["num_single_layers"], flux["axes_dims_rope"]) == (19, 38, [16, 56, 56])
    large = bundled_config(MODELS["sd3.5-large"].config)
    assert (large["num_layers"], large["caption_projection_dim"], large["qk_norm"]) == (38, 2432, "rms_norm")
    assert not MODELS["flux1-dev"].cfg and MODELS["flux1-dev"].cfg_layout == "sequential"
    with pytest.raises(AccountingError, match="not a joint-attention transformer"):
        joint_macs("sd15")


def test_cli_prints_the_joint_rows(capsys) -> None:
    assert main(["macs", "sd3-medium", "--gate-step", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "| SD3-medium @1024 | CFG, batched | baseline | 150.296T | 1.000 | 222.608T | 1.000 |" in out
    assert (
        "| SD3-medium @1024 | CFG, batched | TGATE m=10 (0.4 of 25) | 101.990T | 0.679 | 150.978T | 0.678 |"
        in out
    )
    assert "| TGATE m=10 (0.4 of 25), CFG drop only (text live) | 105.207T | 0.700 |" in out
    assert "| TGATE m=10 (0.4 of 25), text freeze only (keep_cfg) | 143.786T | 0.957 |" in out
    assert "| linear+conv | 150.296T | 101.990T | 45.089T (30.0%) | 3.293T (2.2%) | 76.083G (0.05%) |" in out
    assert (
        "| SD3-medium @1024 | 24 | 4096 | 333 | 3.00592T | 0.21953T (7.3%) | 4.45217T | 0.32826T (7.4%) |"
        in out
    )
    assert "Per-image denoiser MACs" not in out  # no cross-attention table for a joint model


def test_cli_lists_a_flux_folder_without_and_with_true_cfg(pipes, tmp_path, capsys) -> None:
    pipes["flux"].save_pretrained(tmp_path)
    assert (
        main(["macs", "--model-dir", str(tmp_path), "--resolution", "32", "--gate-step", "2", "--steps", "4"])
        == 0
    )
    out = capsys.readouterr().out
    name = tmp_path.name
    assert f"| {name} @32 | none (default) | TGATE m=2 |" in out
    assert f"| {name} @32 | true CFG, 2 calls/step | TGATE m=2, CFG drop only (text live) |" in out
    assert f"| {name} @32 | none (default) | TGATE m=2 | linear+conv |" in out
    counted = joint_macs(str(tmp_path), 32)
    assert (
        counted.text_tokens == 512 and counted.image_tokens == 8 * 8
    )  # T5 padded to 512; 32 px / VAE 2 / packing 2
    assert f"| {counted.image_macs(4, 2) / 1e9:.3f}G |" in out
    assert main(["macs", "--model-dir", str(tmp_path), "--controlnet"]) == 2
    assert "ControlNet counting covers UNet models" in capsys.readouterr().err
