"""`crossgate calibrate`: errors before work, validation without touching the pipeline."""

from __future__ import annotations

import pytest

from crossgate.cli import main


def test_out_folder_is_rejected_before_loading(tmp_path, monkeypatch, capsys):
    from crossgate.cli import calibrate

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(calibrate, "load_pipeline", refuse)
    assert main(["calibrate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossgate calibrate: error: --out") and err.count("\n") == 1


def test_model_without_cross_attention_is_a_clear_error(tmp_path, capsys):
    from crossgate.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
    )
    pipe.save_pretrained(tmp_path / "nocross")
    out = tmp_path / "p.json"
    assert main(["calibrate", "--model", str(tmp_path / "nocross"), "--steps", "2", "--out", str(out)]) == 2
    assert "no cross-attention" in capsys.readouterr().err
    assert not out.exists()


def test_calibrate_validates_with_check_and_leaves_the_pipeline_alone(tmp_path, _sd_template, monkeypatch):
    import crossgate
    from crossgate.tools.quality import calibration

    checked = []
    real_check, real_calibrate = crossgate.check, calibration.calibrate

    def check(pipe, config=None, **overrides):
        checked.append(config)
        return real_check(pipe, config, **overrides)

    def forbidden(*args, **kwargs):
        raise AssertionError("calibrate must validate with crossgate.check, not apply/remove")

    def calibrate_plain(pipe, *args, **kwargs):
        assert not crossgate.is_applied(pipe)
        return real_calibrate(pipe, *args, **kwargs)

    monkeypatch.setattr(crossgate, "check", check)
    monkeypatch.setattr(crossgate, "apply", forbidden)
    monkeypatch.setattr(crossgate, "remove", forbidden)
    monkeypatch.setattr(calibration, "calibrate", calibrate_plain)
    model = tmp_path / "tiny"
    _sd_template.save_pretrained(model)
    out = tmp_path / "profile.json"
    argv = ["calibrate", "--model", str(model), "--steps", "4", "--prompt", "a cat", "--out", str(out)]
    assert main(argv) == 0
    assert len(checked) == 1 and checked[0].is_auto and checked[0].auto_tolerance == pytest.approx(0.05)
    assert out.is_file()


@pytest.mark.parametrize(("steps", "curve_value"), [(6, 1.0), (6, 0.0), (7, 1.0), (25, 1.0), (25, 0.0)])
def test_profile_gate_fraction_stays_within_the_guard_rails(steps, curve_value):
    """`auto` rounds its rails to whole steps (0.8 of 6 steps is step 5, 0.833): the profile's fraction
    stays in [min_fraction, max_fraction] and still gives the calibrated step back at that step count."""
    from crossgate.config import TGateConfig
    from crossgate.tools.quality.calibration import profile_from_convergence
    from crossgate.tools.quality.convergence import ConvergenceResult

    layers = ["a.attn2", "b.attn2"]
    curve = [curve_value] * (steps - 1)  # 1.0: never converges (latest gate); 0.0: at once (earliest)
    result = ConvergenceResult(
        layers, steps, True, ["p"], relative_change={"mean": dict.fromkeys(layers, curve)}
    )
    profile = profile_from_convergence(result, tolerance=0.05, min_fraction=0.2, max_fraction=0.8)
    assert 0.2 <= profile["gate_fraction"] <= 0.8
    assert TGateConfig(gate_step=profile["gate_fraction"]).resolve_gate(steps) == profile["gate_step"]
