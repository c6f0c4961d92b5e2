"""`crossgate generate` end to end on a tiny pipeline saved to disk."""

from __future__ import annotations

import pytest
from PIL import Image

from crossgate.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, _sd_template):
    folder = tmp_path_factory.mktemp("tiny-sd")
    _sd_template.save_pretrained(folder)
    return str(folder)


def test_generate_writes_an_image(model_dir, tmp_path):
    out = tmp_path / "one.png"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                model_dir,
                "--steps",
                "4",
                "--gate-step",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    image = Image.open(out)
    assert min(image.size) >= 256  # tiny outputs are enlarged for people to look at


def test_compare_writes_side_by_side_with_timings(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a red circle",
            "--model",
            model_dir,
            "--steps",
            "4",
            "--gate-step",
            "0.5",
            "--compare",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "plain" in printed and "TGATE m=2/4" in printed
    image = Image.open(out)
    assert image.width >= 2 * image.height - 44  # two square panels plus a label strip


def test_unknown_model_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["generate", "x", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o.png")])
    assert code == 2
    assert "not found or not a diffusers pipeline" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "1.5", "ten"])
def test_bad_gate_step_is_rejected(bad, model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--model", model_dir, "--gate-step", bad])
    assert exit_info.value.code == 2
    assert "gate" in capsys.readouterr().err


def test_missing_prompt_is_a_clear_error(model_dir, capsys):
    assert main(["generate", "--model", model_dir]) == 2
    assert "prompt is required" in capsys.readouterr().err


def test_model_without_cross_attention_is_a_clear_error(tmp_path, capsys):
    from crossgate.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
    )
    pipe.save_pretrained(tmp_path / "nocross")
    assert (
        main(["generate", "x", "--model", str(tmp_path / "nocross"), "--out", str(tmp_path / "o.png")]) == 2
    )
    assert "no cross-attention" in capsys.readouterr().err
