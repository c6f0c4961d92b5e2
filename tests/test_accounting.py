"""Compute accounting: the paper's MACs table, TGATE v2 schedules, and prediction == execution."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

import crossgate
from crossgate.cli import main
from crossgate.testing import tiny_sd_pipeline, tiny_sdxl_pipeline
from crossgate.tools.accounting import (
    MODELS,
    AccountingError,
    CallMeter,
    Schedule,
    call_macs,
    executed_macs,
    folder_text_len,
    image_macs,
    is_joint_model,
    tera,
    v2_self_attention_steps,
)

T = 1e12
REL = 1e-3  # the tolerance: within 0.1% of the paper

# (model, schedule, paper MACs in T) -- /work/shared/reference/paper-numbers.md, n = 25, CFG on.
PAPER_V1 = [
    ("sd15", None, 16.938),
    ("sd15", 5, 9.875),
    ("sd15", 10, 11.641),
    ("sd21", None, 38.041),
    ("sd21", 5, 22.208),
    ("sd21", 10, 26.166),
    ("sdxl", None, 149.438),
    ("sdxl", 5, 84.438),
    ("sdxl", 10, 100.688),
    ("pixart-alpha", None, 107.031),
    ("pixart-alpha", 8, 65.318),
    ("pixart-alpha", 10, 70.225),
    ("pixart-sigma", None, 107.766),
]

PER_CALL = [("sd15", 0.33861, 0.32434), ("sdxl", 2.98866, 2.72754), ("pixart-alpha", 2.14072, 1.82740)]


@pytest.mark.parametrize(("model", "gate", "paper"), PAPER_V1)
def test_paper_table_v1(model: str, gate: int | None, paper: float) -> None:
    call = call_macs(model)
    schedule = Schedule.plain(25) if gate is None else Schedule.tgate(25, gate)
    assert image_macs(call, schedule) / T == pytest.approx(paper, rel=REL)


@pytest.mark.parametrize(("model", "full", "skipped"), PER_CALL)
def test_paper_per_call(model: str, full: float, skipped: float) -> None:
    call = call_macs(model)
    assert call.full() / T == pytest.approx(full, rel=REL)
    assert call.skipped() / T == pytest.approx(skipped, rel=REL)


def test_pixart_self_attention_per_sample_step() -> None:
    assert call_macs("pixart-alpha").self_attn() / T == pytest.approx(0.6087, rel=REL)


# TGATE v2, schedule stated explicitly: warm_up=2, the step before the gate computes, in between a
# step computes self-attention only when its index is a multiple of k; all steps after the gate compute.
V2_M15_K3 = [i not in (4, 5, 7, 8, 10, 11, 13) for i in range(25)]


def test_v2_schedule_is_the_stated_one() -> None:
    assert v2_self_attention_steps(25, 15, 3, warm_up=2) == V2_M15_K3


@pytest.mark.parametrize(
    ("model", "gate", "k", "paper"),
    [
        ("pixart-alpha", 15, 3, 73.971),
        ("pixart-alpha", 10, 3, 65.355),
        ("pixart-alpha", 10, 5, 64.138),
        ("pixart-alpha", 15, 5, 71.536),
        ("sdxl", 10, 5, 95.988),
        ("pixart-sigma", 15, 3, 74.420),
    ],
)
def test_paper_table_v2(model: str, gate: int, k: int, paper: float) -> None:
    call = call_macs(model)
    assert image_macs(call, Schedule.tgate_v2(25, gate, k)) / T == pytest.approx(paper, rel=REL)


def test_v2_explicit_mask_matches_named_schedule() -> None:
    call = call_macs("pixart-alpha")
    explicit = Schedule.tgate(25, 15, self_attention=V2_M15_K3)
    assert image_macs(call, explicit) == image_macs(call, Schedule.tgate_v2(25, 15, 3))
    saved = image_macs(call, Schedule.tgate(25, 15)) - image_macs(call, explicit)
    assert saved == 14 * call.self_attn()  # 7 cached steps, both CFG halves


def test_all_ops_adds_attention_matmuls() -> None:
    for key in MODELS:
        if is_joint_model(key):  # no cross-attention (SD3, FLUX.1): tests/test_accounting_joint.py
            continue
        call = call_macs(key)
        assert call.full("all") > call.full("linear_conv")
        assert call.cross("all") > call.cross("linear_conv")


def test_no_cfg_and_gate_beyond_steps() -> None:
    call = call_macs("sd15")
    assert image_macs(call, Schedule.plain(25, cfg=False)) == 25 * call.full()
    assert image_macs(call, Schedule.tgate(25, 5, cfg=False)) == 5 * call.full() + 20 * call.skipped()
    assert image_macs(call, Schedule.tgate(25, 30)) == image_macs(call, Schedule.plain(25))


def test_bad_inputs_raise_clear_errors(tmp_path) -> None:
    with pytest.raises(AccountingError, match="neither a bundled model"):
        call_macs(str(tmp_path / "missing"))
    with pytest.raises(AccountingError, match="no denoiser config"):
        call_macs(str(tmp_path))
    with pytest.raises(AccountingError, match="one entry per step"):
        Schedule.tgate(25, 5, self_attention=[True] * 3)
    with pytest.raises(AccountingError, match="gate_step"):
        Schedule.tgate(25, 0)


def test_model_dir_counts_the_saved_pipeline(tmp_path) -> None:
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path)
    call = call_macs(str(tmp_path), resolution=32)
    meta = CallMeter(pipe)
    with meta:
        pipe("a", num_inference_steps=1, height=32, width=32, output_type="latent")
    assert call.full() == meta.call_macs().full()


@pytest.mark.parametrize("factory", [tiny_sd_pipeline, tiny_sdxl_pipeline])
@pytest.mark.parametrize("gate", [1, 4, 10])
def test_prediction_equals_execution(factory, gate: int) -> None:
    """Schedule prediction == CallStats-based executed MACs == linear/conv MACs that really ran."""
    pipe = factory()
    steps = 6
    kwargs = dict(
        num_inference_steps=steps, guidance_scale=5.0, output_type="latent", num_images_per_prompt=2
    )
    with crossgate.enabled(pipe, gate_step=gate), CallMeter(pipe) as meter:
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
        stats = crossgate.last_call(pipe)
    call = meter.call_macs()
    predicted = 2 * image_macs(call, Schedule.tgate(steps, gate))  # two images per prompt
    assert executed_macs(call, stats) == predicted
    assert meter.executed == predicted
    if gate < steps:
        assert meter.executed < 2 * image_macs(call, Schedule.plain(steps))


@pytest.mark.parametrize("interval", [2, 3])
def test_v2_prediction_equals_execution(interval: int) -> None:
    """With self-attention caching too: the v2 schedule predicts exactly what ran."""
    pipe = tiny_sd_pipeline()
    steps, gate = 8, 6
    with crossgate.enabled(pipe, gate_step=gate, self_attention_interval=interval), CallMeter(pipe) as meter:
        pipe("a red circle", num_inference_steps=steps, output_type="latent")
        stats = crossgate.last_call(pipe)
    call = meter.call_macs()
    predicted = image_macs(call, Schedule.tgate_v2(steps, gate, interval))
    assert predicted < image_macs(call, Schedule.tgate(steps, gate))  # some steps really cached
    assert executed_macs(call, stats) == predicted
    assert meter.executed == predicted


def test_plain_execution_matches_plain_schedule() -> None:
    pipe = tiny_sd_pipeline()
    with CallMeter(pipe) as meter:
        pipe("a", num_inference_steps=3, output_type="latent")
    assert meter.executed == image_macs(meter.call_macs(), Schedule.plain(3))


def test_cli_macs_prints_table(capsys) -> None:
    assert main(["macs", "sd15", "--gate-step", "5", "--sa-interval", "3", "--per-call"]) == 0
    out = capsys.readouterr().out
    assert "| SD-1.5 UNet @512 | TGATE m=5 | 9.873T |" in out
    assert "TGATE v2 m=5,k=3" in out
    assert "0.33861T" in out


def test_cli_macs_unknown_model(capsys) -> None:
    assert main(["macs", "sd99"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_model_dir_uses_the_folders_tokenizer_length(tmp_path) -> None:
    """A pipeline pads prompts to its tokenizer's model_max_length: count that many tokens, not 77."""
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 16
    config_path.write_text(json.dumps(config))
    short = StableDiffusionPipeline.from_pretrained(str(tmp_path), local_files_only=True)
    assert short.tokenizer.model_max_length == 16
    with CallMeter(short) as meter:
        short("a", num_inference_steps=1, output_type="latent")
    counted = call_macs(str(tmp_path))
    assert counted.full() == meter.call_macs().full()
    assert counted.full() < call_macs(str(tmp_path), text_len=77).full()
    assert folder_text_len(tmp_path, {"_class_name": "UNet2DConditionModel"}) == 16
    assert folder_text_len(tmp_path / "unet", {}) == 77  # a denoiser folder has no tokenizer


def test_macs_on_the_embedded_model_equals_what_eval_counts(capsys) -> None:
    """`crossgate macs --model-dir <embedded>` counts the call the embedded pipeline really makes."""
    from crossgate.embedded import default_model_path, load_pipeline

    folder = default_model_path()
    if folder is None:
        pytest.skip("embedded model not installed")
    pipe = load_pipeline(folder)
    steps = 3
    with CallMeter(pipe) as meter:  # what eval's LinearConvCounter counts, per image
        pipe("a red circle left of a blue square", num_inference_steps=steps, output_type="latent")
    counted = call_macs(str(folder))
    assert counted.full() == meter.call_macs().full()
    assert meter.executed == image_macs(counted, Schedule.plain(steps))
    assert main(["macs", "--model-dir", str(folder), "--steps", "25", "--gate-step", "5"]) == 0
    expected = tera(image_macs(counted, Schedule.plain(25)))
    assert f"| baseline | {expected} |" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Wan 2.1 T2V: sequential CFG (two calls per step), counted on meta from the published configs.

WAN = {  # key -> (d, ffn, layers, height, width)
    "wan13b-480p": (1536, 8960, 30, 480, 832),
    "wan13b-720p": (1536, 8960, 30, 720, 1280),
    "wan14b-480p": (5120, 13824, 40, 480, 832),
    "wan14b-720p": (5120, 13824, 40, 720, 1280),
}


def _wan_linear_conv(
    d: int, ffn: int, layers: int, height: int, width: int, frames: int = 81
) -> tuple[int, int]:
    """(full call, cross-attention) linear+conv MACs of Wan 2.1 T2V, by hand from its architecture."""
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)  # VAE 4x/8x, patch (1, 2, 2)
    text, text_dim, patch_in = 512, 4096, 16 * 1 * 2 * 2
    cross = tokens * 2 * d * d + text * 2 * d * d  # q, out on the video; k, v on the prompt
    block = tokens * 4 * d * d + cross + tokens * 2 * d * ffn  # self q/k/v/out, cross, FFN
    outside = 2 * tokens * patch_in * d  # patch embedding and output head
    outside += text * (text_dim * d + d * d) + 256 * d + d * d + 6 * d * d  # text, time embeddings
    return layers * block + outside, layers * cross


@pytest.mark.parametrize("key", list(WAN))
def test_wan_counts_match_the_architecture_by_hand(key: str) -> None:
    call = call_macs(key)
    full, cross = _wan_linear_conv(*WAN[key])
    assert (call.full(), call.cross()) == (full, cross)
    assert call.cfg_layout == "sequential" and len(call.cross_attention) == WAN[key][2]
    assert call.full("all") > call.full() and 0 < call.outside_blocks() < 1e-3 * call.full()


def test_wan_cross_attention_share() -> None:
    """Cross-attention's share of one pass, as docs/benchmarks.md records it (both conventions)."""
    share = {
        key: (round(c.cross() / c.full(), 3), round(c.cross("all") / c.full("all"), 3))
        for key in ("wan13b-480p", "wan14b-480p")
        for c in [call_macs(key)]
    }
    assert share == {"wan13b-480p": (0.115, 0.044), "wan14b-480p": (0.178, 0.091)}
    single = call_macs("wan14b-480p", frames=1)
    assert (round(single.cross() / single.full(), 3), round(single.cross("all") / single.full("all"), 3)) == (
        0.22,
        0.222,
    )


def test_wan_tgate_schedule_is_two_passes_then_one() -> None:
    call = call_macs("wan13b-480p")
    n, m = 50, 20
    plain = Schedule.plain(n, cfg_layout="sequential")
    tgate = Schedule.tgate(n, m, cfg_layout="sequential")
    assert plain.denoiser_batches == [1] * 2 * n
    assert tgate.denoiser_batches == [1] * (2 * m + n - m)
    assert image_macs(call, plain) == 2 * n * call.full() == image_macs(call, Schedule.plain(n))
    expected = 2 * m * call.full() + (n - m) * (call.skipped() + call.outside_blocks())
    assert image_macs(call, tgate) == expected
    # the skipped uncond calls' embeddings and head are all that separates it from batched TGATE
    ideal = Schedule.tgate(n, m, cfg_layout="sequential", idle_cost=False)
    assert image_macs(call, ideal) == image_macs(call, Schedule.tgate(n, m))
    assert image_macs(call, tgate) - image_macs(call, ideal) == (n - m) * call.outside_blocks()
    for convention in ("linear_conv", "all"):
        ratio = image_macs(call, tgate, convention) / image_macs(call, plain, convention)
        skipped = call.skipped(convention) + call.outside_blocks(convention)
        assert ratio == pytest.approx(
            (2 * m * call.full(convention) + (n - m) * skipped) / (2 * n * call.full(convention))
        )
    no_cfg = Schedule.tgate(n, m, cfg=False, cfg_layout="sequential")
    assert image_macs(call, no_cfg) == m * call.full() + (n - m) * call.skipped()


@pytest.mark.parametrize(("gate", "guidance"), [(1, 5.0), (2, 5.0), (4, 5.0), (2, 1.0)])
def test_wan_prediction_equals_execution(gate: int, guidance: float) -> None:
    """Tiny Wan 2.1 T2V: schedule == CallStats-based executed MACs == linear/conv MACs that really ran,
    with the meter seeing both calls of every step (the skipped uncond calls after the gate too)."""
    from sequential_cases import wan_t2v

    case = wan_t2v()
    pipe, steps = case.pipe, 4
    kwargs = dict(case.kwargs, guidance_scale=guidance, num_inference_steps=steps, output_type="latent")
    with crossgate.enabled(pipe, gate_step=gate), CallMeter(pipe) as meter:
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        stats = crossgate.last_call(pipe)
    cfg = guidance > 1
    assert meter.calls == (2 if cfg else 1) * steps and meter.cfg_layout == "sequential"
    call = meter.call_macs()
    assert call.cfg_layout == "sequential" and call.outside_blocks() > 0
    schedule = Schedule.tgate(steps, gate, cfg=cfg, cfg_layout="sequential")
    assert stats.denoiser_batches == schedule.denoiser_batches
    predicted = image_macs(call, schedule)
    assert executed_macs(call, stats) == predicted
    assert meter.executed == predicted
    if cfg and gate < steps:
        assert predicted < image_macs(call, Schedule.plain(steps, cfg_layout="sequential"))
        assert predicted > image_macs(
            call, Schedule.tgate(steps, gate, cfg_layout="sequential", idle_cost=False)
        )


def test_wan_model_dir_and_cli(tmp_path, capsys) -> None:
    """A saved Wan pipeline folder is counted as its pipeline calls it; the CLI prints the Wan rows."""
    from sequential_cases import wan_t2v

    case = wan_t2v()
    case.pipe.save_pretrained(tmp_path)
    with CallMeter(case.pipe) as meter:
        case.pipe(**dict(case.kwargs, num_inference_steps=1, output_type="latent"))
    counted = call_macs(str(tmp_path), resolution=(16, 16), text_len=16, frames=5)
    assert counted.full() == meter.call_macs().full() and counted.cfg_layout == "sequential"
    with pytest.raises(AccountingError, match="1 \\+ 4 k frames"):
        call_macs("wan13b-480p", frames=80)
    with pytest.raises(AccountingError, match="image model"):
        call_macs("sd15", frames=5)
    with pytest.raises(AccountingError, match="multiple of 16x16"):
        call_macs("wan13b-480p", resolution=(488, 832))
    assert main(["macs", "wan13b-480p", "--steps", "50", "--gate-step", "0.4", "--per-call"]) == 0
    out = capsys.readouterr().out
    assert "| Wan2.1-T2V-1.3B @480x832, 81 frames | TGATE m=20 (0.4 of 50) | 2732.344T | 0.666 |" in out
    assert "| Wan2.1-T2V-1.3B @480x832, 81 frames | baseline | 4104.735T | 1.000 |" in out
    assert main(["macs", "sd15", "--frames", "5"]) == 2
    assert "video models only" in capsys.readouterr().err
