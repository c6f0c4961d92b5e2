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
