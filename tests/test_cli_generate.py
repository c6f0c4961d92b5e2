"""`crossgate generate` end to end on a tiny pipeline saved to disk."""

from __future__ import annotations

from pathlib import Path

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
    """--compare times as bench does: a warm-up each, 3 alternating rounds, median and spread."""
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
    assert "warm-up plain" in printed and "warm-up TGATE" in printed
    assert printed.count("round 3/3") == 2  # both pipelines, alternating
    assert "median of 3 alternating rounds after a warm-up; per round" in printed
    assert "denoiser MACs ratio" in printed
    image = Image.open(out)
    assert image.width >= 2 * image.height - 70  # two square panels plus a two-line label strip


def test_compare_with_one_round_is_labelled_indicative(model_dir, tmp_path, capsys):
    """A single run's ratio is never printed bare: console and label say it is indicative."""
    out = tmp_path / "cmp.png"
    args = ["generate", "a red circle", "--model", model_dir, "--steps", "3", "--gate-step", "1"]
    assert main([*args, "--compare", "--rounds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    speedup = next(line for line in printed.splitlines() if line.startswith("speed-up"))
    assert "indicative (1 run)" in speedup
    labels = [line for line in printed.splitlines() if line.startswith(("plain ", "TGATE "))]
    assert len(labels) == 2 and all("indicative (1 run)" in line for line in labels), labels


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


def _no_loading(monkeypatch):
    """Make loading a model fail the test: these errors must come before any work."""
    from crossgate.cli import generate

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(generate, "load_pipeline", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("crossgate generate: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("kind", ["existing folder", "trailing slash", "no extension", "unknown extension"])
def test_bad_out_is_rejected_before_any_work(kind, tmp_path, monkeypatch, capsys):
    out = {
        "existing folder": str(tmp_path),
        "trailing slash": str(tmp_path / "outdir") + "/",
        "no extension": str(tmp_path / "picture"),
        "unknown extension": str(tmp_path / "picture.xyz"),
    }[kind]
    _no_loading(monkeypatch)
    assert main(["generate", "x", "--out", out]) == 2
    assert "--out" in _one_line_error(capsys)
    assert not (tmp_path / "outdir").exists()


def test_out_under_a_file_is_rejected_before_any_work(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    _no_loading(monkeypatch)
    assert main(["generate", "x", "--out", str(afile / "x.png")]) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert afile.read_text() == "not a folder"


def test_compare_with_no_tgate_is_an_error_before_any_work(tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    assert main(["generate", "x", "--no-tgate", "--compare", "--out", str(tmp_path / "o.png")]) == 2
    assert "--no-tgate" in _one_line_error(capsys)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from crossgate.cli import generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "load_pipeline", interrupted)
    assert main(["generate", "x", "--out", str(tmp_path / "o.png")]) == 130
    assert capsys.readouterr().err == "crossgate generate: interrupted\n"
    assert list(tmp_path.iterdir()) == []


def test_gate_after_the_last_step_warns_and_is_labelled_plain(model_dir, tmp_path, capsys):
    gated, plain = tmp_path / "gated.png", tmp_path / "plain.png"
    args = ["generate", "a red circle", "--model", model_dir, "--steps", "3"]
    assert main([*args, "--gate-step", "30", "--out", str(gated)]) == 0
    captured = capsys.readouterr()
    assert "TGATE never engages" in captured.err and "at or after the last of 3 steps" in captured.err
    assert "plain (m=" in captured.out and "TGATE m=" not in captured.out
    assert main([*args, "--no-tgate", "--out", str(plain)]) == 0
    assert Image.open(gated).tobytes() == Image.open(plain).tobytes()


def test_generate_validates_with_check_and_never_applies_by_hand(model_dir, tmp_path, monkeypatch):
    import crossgate

    checked = []
    real_check = crossgate.check

    def check(pipe, config=None, **overrides):
        checked.append(config)
        return real_check(pipe, config, **overrides)

    def forbidden(*args, **kwargs):
        raise AssertionError("the CLI must validate with crossgate.check, not apply/remove")

    monkeypatch.setattr(crossgate, "check", check)
    monkeypatch.setattr(crossgate, "apply", forbidden)
    monkeypatch.setattr(crossgate, "remove", forbidden)
    out = tmp_path / "o.png"
    assert (
        main(["generate", "x", "--model", model_dir, "--steps", "2", "--gate-step", "1", "--out", str(out)])
        == 0
    )
    assert len(checked) == 1 and checked[0].gate_step == 1
    assert out.is_file()


class _Image:
    """Stands in for a PIL image: writes some bytes, then fails the way ``fail`` says."""

    def __init__(self, fail: type[BaseException] | None = None):
        self.fail = fail

    def save(self, handle, format=None):
        handle.write(b"partial")
        if self.fail is not None:
            raise self.fail()


@pytest.mark.parametrize("fail", [KeyboardInterrupt, OSError])
def test_save_image_is_atomic(fail, tmp_path):
    from crossgate.cli.common import CommandError, save_image

    out = tmp_path / "o.png"
    out.write_bytes(b"before")
    with pytest.raises(KeyboardInterrupt if fail is KeyboardInterrupt else CommandError):
        save_image(_Image(fail), str(out))
    assert out.read_bytes() == b"before"  # untouched, and no temporary file left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_save_image_writes_with_the_usual_permissions(tmp_path):
    import os
    import stat

    from crossgate.cli.common import save_image

    out = save_image(Image.new("RGB", (4, 4)), str(tmp_path / "sub" / "o.png"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert Image.open(out).size == (4, 4)
    assert [p.name for p in out.parent.iterdir()] == ["o.png"]


def test_out_may_make_one_new_folder_inside_an_existing_one(model_dir, tmp_path):
    out = tmp_path / "new" / "one.png"
    assert main(["generate", "x", "--model", model_dir, "--steps", "2", "--out", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("kind", ["two new levels", "new folder at the root"])
def test_out_never_makes_a_chain_of_folders_or_one_at_the_root(kind, tmp_path, monkeypatch, capsys):
    """A typo in --out must not leave folders behind, least of all at the filesystem root."""
    import uuid

    root_folder = Path("/") / f"crossgate-test-{uuid.uuid4().hex}"
    out = {
        "two new levels": tmp_path / "a" / "b" / "x.png",
        "new folder at the root": root_folder / "x.png",
    }[kind]
    _no_loading(monkeypatch)
    assert main(["generate", "x", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "does not exist" in err and ("mkdir -p" in err or "filesystem root" in err)
    assert not (tmp_path / "a").exists() and not root_folder.exists()


def test_threads_default_to_what_the_load_leaves_idle(monkeypatch):
    import os

    import torch

    from crossgate.cli import common

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert common.auto_threads() == 8  # idle: torch's own default
    monkeypatch.setattr(os, "getloadavg", lambda: (6.6, 6.0, 5.0))
    assert common.auto_threads() == 1  # 8 CPUs, 7 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    assert common.auto_threads() == 1  # never 0


def test_generate_takes_threads(model_dir, tmp_path, monkeypatch, capsys):
    import torch

    from crossgate.cli import common

    before = torch.get_num_threads()
    monkeypatch.setattr(common, "auto_threads", lambda: 1)
    try:
        out = tmp_path / "t.png"
        assert main(["generate", "x", "--model", model_dir, "--steps", "2", "--out", str(out)]) == 0
        assert "torch CPU threads: 1" in capsys.readouterr().out and torch.get_num_threads() == 1
        assert (
            main(["generate", "x", "--model", model_dir, "--steps", "2", "--threads", "2", "--out", str(out)])
            == 0
        )
        assert "torch CPU threads: 2" in capsys.readouterr().out and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["generate", "x", "--threads", "0"])
