"""ControlNet accounting: `crossgate macs --controlnet` and the meter counting a pipeline's ControlNet."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from crossgate.cli import main
from crossgate.testing import ready, tiny_sd_pipeline
from crossgate.tools.accounting import (
    CallMeter,
    LinearConvCounter,
    Schedule,
    build_meta_denoiser,
    bundled_config,
    call_macs,
    controlnet_macs,
    count_call,
    image_macs,
    tera,
)

CONVENTIONS = ("linear_conv", "all")


def _independent_sd15_controlnet():
    """SD-1.5's ControlNet counted here, apart from ``controlnet_macs``: from_unet on meta, one sample."""
    from diffusers import ControlNetModel

    unet = build_meta_denoiser(bundled_config("sd15_unet.json"))
    with torch.device("meta"):
        controlnet = ControlNetModel.from_unet(unet)
    latents = torch.empty(1, 4, 64, 64, device="meta")
    kwargs = {
        "encoder_hidden_states": torch.empty(1, 77, 768, device="meta"),
        "controlnet_cond": torch.empty(1, 3, 512, 512, device="meta"),
    }
    return count_call(controlnet, (latents, torch.empty(1, device="meta")), kwargs)


def _rows(out: str) -> dict[str, list[str]]:
    """setting -> [MACs linear+conv, ratio, MACs all ops, ratio] of the printed table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("SD-1.5 UNet + ControlNet @512"):
            rows[cells[1]] = cells[2:]
    return rows


def test_cli_macs_controlnet_rows(capsys) -> None:
    n, m = 25, 10
    assert main(["macs", "sd15", "--controlnet", "--steps", str(n), "--gate-step", str(m)]) == 0
    out = capsys.readouterr().out
    assert "Per-image UNet + ControlNet MACs" in out
    rows = _rows(out)
    ungated_label = f"TGATE m={m}, ControlNet ungated (2B after the gate)"
    assert list(rows) == ["baseline", ungated_label, f"TGATE m={m}"]

    unet, controlnet = call_macs("sd15"), _independent_sd15_controlnet()
    assert controlnet_macs("sd15").total == controlnet.total
    assert controlnet.cross() > 0
    plain, tgate = Schedule.plain(n), Schedule.tgate(n, m)
    for column, convention in zip((0, 2), CONVENTIONS):
        base = image_macs(unet, plain, convention) + image_macs(controlnet, plain, convention)
        ungated = image_macs(unet, tgate, convention) + image_macs(controlnet, plain, convention)
        gated = image_macs(unet, tgate, convention) + image_macs(controlnet, tgate, convention)
        assert gated < ungated < base
        assert rows["baseline"][column] == tera(base)
        assert rows[ungated_label][column] == tera(ungated)
        assert rows[ungated_label][column + 1] == f"{ungated / base:.3f}"
        assert rows[f"TGATE m={m}"][column] == tera(gated)
        assert rows[f"TGATE m={m}"][column + 1] == f"{gated / base:.3f}"
    # the printed gated row is strictly below the ungated one
    lc = {label: float(re.sub("[TG]$", "", cells[0])) for label, cells in rows.items()}
    assert lc[f"TGATE m={m}"] < lc[ungated_label] < lc["baseline"]


def test_cli_macs_controlnet_per_call_lists_the_controlnet(capsys) -> None:
    assert main(["macs", "sd15", "--controlnet", "--gate-step", "5", "--per-call"]) == 0
    assert (
        f"| SD-1.5 ControlNet @512 | {tera(controlnet_macs('sd15').full(), 5)} |" in capsys.readouterr().out
    )


@pytest.mark.parametrize("model", ["pixart-alpha", "wan13b-480p"])
def test_cli_macs_controlnet_refuses_non_unet_models(model, capsys) -> None:
    assert main(["macs", model, "--controlnet"]) == 2
    assert "ControlNet counting covers UNet models" in capsys.readouterr().err


def test_cli_macs_controlnet_refuses_self_attention_caching(capsys) -> None:
    assert main(["macs", "sd15", "--controlnet", "--sa-interval", "3"]) == 2
    assert "--sa-interval" in capsys.readouterr().err


def _control_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def _controlnet_pipeline(nets: int):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    base = tiny_sd_pipeline()
    torch.manual_seed(2)
    controlnets = [
        ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16)) for _ in range(nets)
    ]
    controlnet = controlnets[0] if nets == 1 else controlnets
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet)
    return ready(pipe)


@pytest.mark.parametrize("nets", [1, 2], ids=["controlnet", "multi-controlnet"])
def test_meter_counts_the_controlnet(nets) -> None:
    """The plain pipeline (no crossgate): executed = UNet alone + ControlNet(s) alone, counted live."""
    pipe = _controlnet_pipeline(nets)
    image = _control_image() if nets == 1 else [_control_image(i) for i in range(nets)]
    steps = 4
    with (
        CallMeter(pipe) as meter,
        LinearConvCounter(pipe.unet) as unet,
        LinearConvCounter(pipe.controlnet) as controlnet,
    ):
        pipe("a red circle", image=image, num_inference_steps=steps, output_type="latent")
    assert controlnet.total > 0
    assert meter.executed > unet.total
    assert meter.executed == unet.total + controlnet.total
    assert (meter.denoiser_executed, meter.controlnet_executed) == (unet.total, controlnet.total)
    assert meter.denoiser_executed == image_macs(meter.call_macs(), Schedule.plain(steps))


def test_meter_without_a_controlnet_counts_the_denoiser() -> None:
    pipe = tiny_sd_pipeline()
    with CallMeter(pipe) as meter:
        pipe("a", num_inference_steps=2, output_type="latent")
    assert meter.controlnet is None and meter.controlnet_executed == 0
    assert meter.executed == meter.denoiser_executed > 0


@pytest.mark.parametrize(
    "nets,guess_mode",
    [(1, False), (2, False), (1, True)],
    ids=["controlnet", "multi-controlnet", "guess-mode"],
)
def test_executed_macs_of_a_gated_controlnet_call_match_the_live_count(nets, guess_mode) -> None:
    """executed_macs(CallStats, controls=...) predicts what ran, ControlNets gated at batch B included."""
    import crossgate
    from crossgate.tools.accounting import AccountingError, executed_macs

    pipe = _controlnet_pipeline(nets)
    image = _control_image() if nets == 1 else [_control_image(i) for i in range(nets)]
    steps, gate = 5, 2

    def run() -> CallMeter:
        with CallMeter(pipe) as meter:
            pipe(
                "a red circle",
                image=image,
                num_inference_steps=steps,
                guess_mode=guess_mode,
                output_type="latent",
            )
        return meter

    plain = run()
    crossgate.apply(pipe, gate_step=gate)
    try:
        gated = run()
        stats = crossgate.last_call(pipe)
    finally:
        crossgate.remove(pipe)
    controls = gated.control_call_macs()
    assert set(controls) == set(stats.control_batches)
    predicted = executed_macs(gated.call_macs(), stats, controls=controls)
    assert predicted == gated.executed
    assert gated.controlnet_executed < plain.controlnet_executed  # the ControlNets halve after the gate too
    with pytest.raises(AccountingError, match="controls="):
        executed_macs(gated.call_macs(), stats)
