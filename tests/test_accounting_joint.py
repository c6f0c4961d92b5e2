"""Joint-attention accounting (crossgate.tools.accounting.joint): SD3, FLUX.1, Qwen-Image and
HunyuanVideo, counted on meta.

Two independent checks: a real crossgate-gated call of a tiny SD3/FLUX/Qwen-Image/HunyuanVideo
pipeline, whose linear/conv MACs (forward hooks) and all-op MACs (``FlopCounterMode`` with the math
SDPA kernel, so attention is counted on CPU too) must equal the prediction exactly, in every CFG
layout and variant; and the published architectures of SD3-medium, Qwen-Image and HunyuanVideo
counted by hand (linear layers and attention matmuls). Then the CLI's rows.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import diffusers
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import crossgate
from crossgate.cli import main
from crossgate.loading import bundled_config
from crossgate.testing import (
    tiny_flux_pipeline,
    tiny_hunyuan_video_pipeline,
    tiny_qwen_image_pipeline,
    tiny_sd3_pipeline,
)
from crossgate.tools.accounting import (
    MODELS,
    AccountingError,
    CallMeter,
    is_joint_model,
    joint_macs,
)

STEPS = 3
CONVENTIONS = ("linear_conv", "all")


BUILD: dict[str, Callable[[], Any]] = {
    "sd3": tiny_sd3_pipeline,
    "sd3.5": lambda: tiny_sd3_pipeline(dual_attention_layers=(0,)),  # qk-norm (and MMDiT-X's attn2)
    "flux": tiny_flux_pipeline,
    "qwen": tiny_qwen_image_pipeline,
    "hunyuan": tiny_hunyuan_video_pipeline,
}


class _Pipes(dict):
    """The tiny pipelines, each built the first time a test asks for it."""

    def __missing__(self, key: str) -> Any:
        self[key] = BUILD[key]()
        return self[key]


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return _Pipes()


TRUE_CFG = {"true_cfg_scale": 4.0, "negative_prompt": "a blue square"}
# HunyuanVideo: 9 frames of 16x16 (3 x 2 x 2 latent tokens), the prompt as it is (no template), padded
# to max_sequence_length like the real pipeline pads to 256
HUNYUAN_CALL = {
    "guidance_scale": 6.0,
    "height": 16,
    "width": 16,
    "num_frames": 9,
    "prompt_template": {"template": "{}", "crop_start": 0},
}
# case -> (pipeline, call, whether it runs CFG). Qwen-Image encodes each prompt to its own length: the
# character tokenizer spells its template out, so max_sequence_length (16) cuts both branches alike.
CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "sd3": ("sd3", {"guidance_scale": 5.0}, True),
    "sd3.5": ("sd3.5", {"guidance_scale": 5.0}, True),
    "flux": ("flux", {"guidance_scale": 3.5}, False),  # FLUX.1-dev's distilled guidance: no CFG
    "flux-cfg": ("flux", {"guidance_scale": 3.5, **TRUE_CFG}, True),
    "qwen": ("qwen", TRUE_CFG, True),
    "hunyuan": ("hunyuan", HUNYUAN_CALL, False),  # distilled guidance: no CFG
    "hunyuan-cfg": ("hunyuan", {**HUNYUAN_CALL, **TRUE_CFG}, True),
}
SEQUENTIAL = ("flux", "qwen", "hunyuan")
# the elements each block keeps per text token and width: keys, values and text output; SD3's last
# block hands no text on (its key and value only)
KEPT_TENSORS = {"sd3": 2 * 3 - 1, "sd3.5": 2 * 3 - 1, "flux": 4 * 3, "qwen": 2 * 3, "hunyuan": 2 * 3}


def _measured(
    pipe: Any, call: dict, gate: int | None, config: dict, steps: int = STEPS
) -> tuple[dict[str, int], CallMeter]:
    """What one real call of ``pipe`` ran in its transformer: linear/conv and all-op MACs."""
    gated = crossgate.enabled(pipe, gate_step=gate, **config) if gate else contextlib.nullcontext()
    kwargs = dict(
        prompt="a red circle", num_inference_steps=steps, height=32, width=32, max_sequence_length=16
    )
    kwargs.update(call)
    with gated, CallMeter(pipe) as meter, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0))
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
        ("qwen", None, {}),
        ("qwen", 2, {}),
        ("qwen", 2, {"text_stream": "live"}),
        ("qwen", 2, {"keep_cfg": True}),
        ("hunyuan", 2, {}),
        ("hunyuan", STEPS, {}),
        ("hunyuan-cfg", 2, {}),
        ("hunyuan-cfg", 2, {"text_stream": "live"}),
        ("hunyuan-cfg", 2, {"keep_cfg": True}),
    ],
)
def test_prediction_equals_a_real_gated_call(pipes, case: str, gate: int | None, config: dict) -> None:
    name, call, cfg = CASES[case]
    pipe = pipes[name]
    measured, meter = _measured(pipe, call, gate, config)
    counted = meter.joint_macs(cfg=cfg)
    assert counted.cfg_layout == ("sequential" if name in SEQUENTIAL else "batched")
    predicted = {
        c: counted.image_macs(
            STEPS, gate, c, cfg, config.get("text_stream", "frozen"), config.get("keep_cfg", False)
        )
        for c in CONVENTIONS
    }
    assert predicted == measured
    # the frozen text stream's memory: blocks x 3 x rows x text tokens x hidden
    tensors = KEPT_TENSORS[name]
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


def _qwen_image_by_hand() -> dict[str, int]:
    """Qwen-Image @1024, one row, from its published config: 60 double-stream blocks of width 3072 (24
    heads x 128), 128x128 latents packed 2x2 into 4096 tokens of 64 channels, 512 text tokens of
    Qwen2.5-VL's width 3584, 16 channels out."""
    d, layers, tokens, text, ctx, patch = 3072, 60, 4096, 512, 3584, 16 * 2 * 2
    per_token = 3 * d * d + d * d + 8 * d * d  # q/k/v, out, MLP (4x): the same on either stream
    image_block = 6 * d * d + tokens * per_token  # img_mod on the timestep embedding, then the image
    text_block = 6 * d * d + text * per_token  # txt_mod, add_q/k/v, to_add_out, txt_mlp
    outside = tokens * patch * d + text * ctx * d  # img_in, txt_in
    outside += 256 * d + d * d  # timestep embedder
    outside += 2 * d * d + tokens * d * patch  # norm_out, proj_out
    return {
        "plain": layers * (image_block + text_block) + outside,
        "text_side": layers * text_block,
        "capture": layers * (6 * d * d + 2 * text * d * d),  # txt_mod, add_k/v
        "outside": outside,
        "attention": layers * 2 * (tokens + text) ** 2 * d,  # QK^T and AV over all rows
        "attention_text_rows": layers * 2 * text * (tokens + text) * d,
        "kept": layers * 3 * text * d,
    }


def _hunyuan_video_by_hand() -> dict[str, int]:
    """HunyuanVideo @720x1280, 129 frames, one row, from its published config: 20 double- and 40
    single-stream blocks of width 3072 (24 heads x 128); 33 x 90 x 160 latents patched 1x2x2 into
    118,800 tokens; 256 Llama tokens (4096 wide) through a 2-layer token refiner; CLIP pooled 768."""
    d, double, single, refiner = 3072, 20, 40, 2
    tokens, text, llama, pooled, patch = 33 * 45 * 80, 256, 4096, 768, 16 * 2 * 2
    assert tokens == 118_800
    per_token = 3 * d * d + d * d + 8 * d * d  # q/k/v, out, FFN (4x) in a double block; the same
    # in a single block: q/k/v, proj_mlp (4x) and proj_out over [attention; MLP] (5x -> 1x)
    text_double = 6 * d * d + text * per_token  # norm1_context's modulation, then the text rows
    plain_blocks = double * (6 * d * d + tokens * per_token + text_double)
    plain_blocks += single * (3 * d * d + (tokens + text) * per_token)  # one modulation for both
    outside = tokens * patch * d  # x_embedder (Conv3d 1x2x2)
    outside += 256 * d + d * d + llama * d + d * d  # the refiner's timestep and mean-prompt embedders
    outside += text * llama * d + refiner * (text * (4 + 8) * d * d + 2 * d * d)  # proj_in, refiner blocks
    outside += 3 * (d * d) + (256 + pooled + 256) * d  # timestep, pooled-CLIP and guidance embedders
    outside += 2 * d * d + tokens * d * patch  # norm_out, proj_out
    return {
        "plain": plain_blocks + outside,
        "text_side": double * text_double + single * text * per_token,
        "capture": double * (6 * d * d + 2 * text * d * d) + single * (3 * d * d + 2 * text * d * d),
        "outside": outside,
        "outside_attention": refiner * 2 * text * text * d,  # the refiner's self-attention
        "attention": (double + single) * 2 * (tokens + text) ** 2 * d,
        "attention_text_rows": (double + single) * 2 * text * (tokens + text) * d,
        "kept": (double + single) * 3 * text * d,
    }


def test_qwen_image_counts_equal_the_architecture_by_hand() -> None:
    hand, counted = _qwen_image_by_hand(), joint_macs("qwen-image")
    assert (counted.blocks, counted.image_tokens, counted.text_tokens) == (60, 4096, 512)
    assert counted.plain[1]["linear_conv"] == hand["plain"]
    assert counted.plain[1]["all"] == hand["plain"] + hand["attention"]
    assert counted.text_side("linear_conv") == hand["text_side"]
    assert counted.text_side("all") == hand["text_side"] + hand["attention_text_rows"]
    assert counted.capture[1] == {"linear_conv": hand["capture"], "all": hand["capture"]}
    assert counted.idle == {"linear_conv": hand["outside"], "all": hand["outside"]}
    assert counted.kept[1] == hand["kept"]
    # true CFG, two calls per step: 2 x 10 plain passes and the capture in both, then 15 frozen cond
    # passes and 15 uncond calls that still run outside the blocks
    assert (counted.cfg_layout, counted.cfg) == ("sequential", True)
    frozen = hand["plain"] - hand["text_side"]
    tgate = 20 * hand["plain"] + 2 * hand["capture"] + 15 * (frozen + hand["outside"])
    assert counted.image_macs(25, 10) == tgate
    split = counted.split(25, 10)
    assert split.cfg_drop == 15 * (hand["plain"] - hand["outside"])
    assert split.text_freeze == 15 * hand["text_side"] and split.capture == 2 * hand["capture"]
    assert split.tgate == split.baseline - split.cfg_drop - split.text_freeze + split.capture


def test_hunyuan_video_counts_equal_the_architecture_by_hand() -> None:
    hand, counted = _hunyuan_video_by_hand(), joint_macs("hunyuan-video")
    assert (counted.blocks, counted.image_tokens, counted.text_tokens) == (60, 118_800, 256)
    assert counted.model == "HunyuanVideo @720x1280, 129 frames"
    assert counted.plain[1]["linear_conv"] == hand["plain"]
    assert counted.plain[1]["all"] == hand["plain"] + hand["attention"] + hand["outside_attention"]
    assert counted.text_side("linear_conv") == hand["text_side"]
    assert counted.text_side("all") == hand["text_side"] + hand["attention_text_rows"]
    assert counted.capture[1] == {"linear_conv": hand["capture"], "all": hand["capture"]}
    assert counted.idle == {
        "linear_conv": hand["outside"],
        "all": hand["outside"] + hand["outside_attention"],
    }
    assert counted.kept[1] == hand["kept"]
    # guidance-distilled: no CFG by default, the text freeze is the whole saving
    assert (counted.cfg_layout, counted.cfg) == ("sequential", False)
    frozen = hand["plain"] - hand["text_side"]
    assert counted.image_macs(25, 10) == 10 * hand["plain"] + hand["capture"] + 15 * frozen
    split = counted.split(25, 10)
    assert (split.cfg_drop, split.text_freeze, split.capture) == (0, 15 * hand["text_side"], hand["capture"])
    with_cfg = counted.split(25, 10, cfg=True)  # true_cfg_scale: two calls per step
    assert with_cfg.cfg_drop == 15 * (hand["plain"] - hand["outside"])
    assert with_cfg.text_freeze == 15 * hand["text_side"]


def test_bundled_joint_configs() -> None:
    joint = ["sd3-medium", "sd3.5-large", "flux1-dev", "qwen-image", "hunyuan-video"]
    assert [k for k in MODELS if is_joint_model(k)] == joint
    flux = bundled_config(MODELS["flux1-dev"].config)
    assert (flux["num_layers"], flux["num_single_layers"], flux["axes_dims_rope"]) == (19, 38, [16, 56, 56])
    large = bundled_config(MODELS["sd3.5-large"].config)
    assert (large["num_layers"], large["caption_projection_dim"], large["qk_norm"]) == (38, 2432, "rms_norm")
    assert not MODELS["flux1-dev"].cfg and MODELS["flux1-dev"].cfg_layout == "sequential"
    # Qwen-Image's and HunyuanVideo's published configs equal their diffusers classes' defaults
    for key in ("qwen-image", "hunyuan-video"):
        config = bundled_config(MODELS[key].config)
        cls = getattr(diffusers, config["_class_name"])
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        assert {k: v for k, v in config.items() if not k.startswith("_")} == {
            k: list(defaults[k]) if isinstance(defaults[k], tuple) else defaults[k]
            for k in config
            if not k.startswith("_")
        }
    qwen, hunyuan = (
        bundled_config(MODELS["qwen-image"].config),
        bundled_config(MODELS["hunyuan-video"].config),
    )
    assert (qwen["num_layers"], qwen["joint_attention_dim"], qwen["guidance_embeds"]) == (60, 3584, False)
    assert (hunyuan["num_layers"], hunyuan["num_single_layers"], hunyuan["text_embed_dim"]) == (20, 40, 4096)
    assert MODELS["qwen-image"].cfg and MODELS["qwen-image"].cfg_layout == "sequential"
    assert not MODELS["hunyuan-video"].cfg and MODELS["hunyuan-video"].size == (720, 1280)
    assert MODELS["hunyuan-video"].frames == 129 and MODELS["hunyuan-video"].text_len == 256
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


def test_cli_prints_the_qwen_image_and_hunyuan_video_rows(capsys) -> None:
    assert main(["macs", "qwen-image", "hunyuan-video", "--gate-step", "0.4"]) == 0
    out = capsys.readouterr().out
    qwen, hunyuan = "| Qwen-Image @1024 | true CFG, 2 calls/step |", "| HunyuanVideo @720x1280, 129 frames |"
    assert f"{qwen} baseline | 1566.219T | 1.000 | 1957.598T | 1.000 |" in out
    assert f"{qwen} TGATE m=10 (0.4 of 25) | 1045.394T | 0.667 | 1306.313T | 0.667 |" in out
    assert f"{qwen} TGATE m=10 (0.4 of 25) | linear+conv | 1566.219T | 1045.394T | 469.757T (30.0%) " in out
    assert "| 52.235T (3.3%) | 1.166T (0.07%) |" in out
    assert "| Qwen-Image @1024 | 60 | 4096 | 512 | 31.32438T | 3.48232T (11.1%) |" in out
    assert f"{hunyuan} none (default) | baseline | 20226.747T | 1.000 | 150857.403T | 1.000 |" in out
    assert f"{hunyuan} none (default) | TGATE m=10 (0.4 of 25) | 20200.930T | 0.999 |" in out
    assert f"{hunyuan} true CFG, 2 calls/step | TGATE m=10 (0.4 of 25) | 28293.541T | 0.699 |" in out
    assert (
        f"{hunyuan} none (default) | TGATE m=10 (0.4 of 25) | linear+conv | 20226.747T | 20200.930T | 0 "
        in out
    )
    assert f"{hunyuan[:-1]}| 60 | 118800 | 256 | 809.06987T | 1.74059T (0.2%) |" in out
    assert "| 540 MiB |" in out and "| 270 MiB |" in out


@pytest.mark.parametrize("name", ["qwen", "hunyuan"])
def test_a_qwen_image_or_hunyuan_video_folder_counts_at_its_pipelines_defaults(
    pipes, name: str, tmp_path, capsys
) -> None:
    pipes[name].save_pretrained(tmp_path)
    counted = joint_macs(str(tmp_path))
    config = pipes[name].transformer.config
    if name == "qwen":  # 1024x1024 through the tiny VAE (4x): 256x256 latents packed 2x2; 512 text tokens
        assert (counted.model, counted.image_tokens, counted.text_tokens) == (
            f"{tmp_path.name} @1024",
            128**2,
            512,
        )
        assert (counted.cfg_layout, counted.cfg, counted.blocks) == ("sequential", True, config.num_layers)
    else:  # 720x1280, 129 frames: 33 x 90 x 160 latents (VAE 8x, 4x in time), patch 1; 256 text tokens
        assert counted.model == f"{tmp_path.name} @720x1280, 129 frames"
        assert (counted.image_tokens, counted.text_tokens) == (33 * 90 * 160, 256)
        assert (counted.cfg_layout, counted.cfg, counted.blocks) == ("sequential", False, 2)
        small = [
            "--resolution",
            "16",
            "--frames",
            "9",
            "--text-len",
            "16",
            "--steps",
            "4",
            "--gate-step",
            "2",
        ]
        assert main(["macs", "--model-dir", str(tmp_path), *small]) == 0
        out = capsys.readouterr().out
        assert f"| {tmp_path.name} @16x16, 9 frames | none (default) | TGATE m=2 |" in out
        assert (
            f"| {tmp_path.name} @16x16, 9 frames | true CFG, 2 calls/step | TGATE m=2, CFG drop only" in out
        )
        assert f"| {tmp_path.name} @16x16, 9 frames | 2 | 12 | 16 |" in out  # 3 x 2 x 2 latent tokens
        assert f"| {joint_macs(str(tmp_path), 16, 16, 9).image_macs(4, 2) / 1e9:.3f}G |" in out
