"""``crossgate eval``: the metrics on known inputs, and the runner's mechanics on a tiny random model.

With random weights the judge's accuracies mean nothing, so the runner tests check what must hold
for any model: the plain reference, exact equality when TGATE never engages, compute ordering.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossgate.cli import main
from crossgate.tools.quality.metrics import frechet_distance, mse, psnr, ssim
from crossgate.tools.quality.report import markdown_table, write_report
from crossgate.tools.quality.runner import RunConfig, default_captions, evaluate


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3)).astype(np.uint8)


def test_psnr_known_values():
    a = _image()
    assert math.isinf(psnr(a, a)[0])
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    flat = np.full((32, 32, 3), 100, np.uint8)
    assert mse(flat, flat + 5)[0] == pytest.approx(25.0)
    assert psnr(flat, flat + 5)[0] == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-9)
    assert psnr(a, b)[0] < math.inf


def test_ssim_identity_symmetry_and_ordering():
    a = _image(1)
    assert ssim(a, a)[0] == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(2)
    small = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
    large = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, small)[0] == pytest.approx(ssim(small, a)[0], abs=1e-12)
    assert 1.0 > ssim(a, small)[0] > ssim(a, large)[0]
    with pytest.raises(ValueError, match="smaller than"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_frechet_distance_known_values():
    base = np.random.default_rng(3).normal(size=(500, 3))
    assert frechet_distance(base, base) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean shifted by (2, 0, 0): the distance is |shift|^2 exactly.
    assert frechet_distance(base, base + np.array([2.0, 0, 0])) == pytest.approx(4.0, abs=1e-9)
    # One dimension, b = 2a about zero mean: (sigma_a - sigma_b)^2 + (mu_a - mu_b)^2.
    one = base[:, :1] - base[:, :1].mean()
    var = float(np.var(one, ddof=1))
    assert frechet_distance(one, 2 * one) == pytest.approx(var, rel=1e-9)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(base, base[:, :2])


def test_run_config_parsing():
    assert RunConfig.parse("plain") == RunConfig("plain")
    assert RunConfig.parse("tgate:10") == RunConfig("tgate", 10)
    assert RunConfig.parse("10") == RunConfig("tgate", 10)
    assert RunConfig.parse("null-before:6").name == "null-before m=6"
    for bad in ("tgate:x", "warp:3", "tgate:0"):
        with pytest.raises(ValueError):
            RunConfig.parse(bad)


def test_default_captions_are_held_out_scene_captions():
    from crossgate.embedded.scenes import held_out_compositions, parse_caption

    captions = default_captions("held-out")
    assert len(captions) == len(held_out_compositions())
    assert {parse_caption(c) for c in captions} == set(held_out_compositions())


def test_evaluate_mechanics_on_tiny_pipeline(sd_pipe, tmp_path):
    captions = default_captions("held-out")[:2]
    configs = [RunConfig("tgate", 1), RunConfig("tgate", 3), RunConfig("null-before", 1)]
    report = evaluate(sd_pipe, captions, configs, per_caption=1, steps=3, batch_size=4, log=lambda _: None)
    by_name = {r.name: r for r in report.results}
    assert list(by_name) == ["plain", "tgate m=1", "tgate m=3", "null-before m=1"]
    plain = by_name["plain"]
    assert plain.images == 2 and math.isinf(plain.psnr) and plain.ssim == pytest.approx(1.0)
    # m = steps: TGATE never engages, so the images equal the plain pipeline's exactly.
    assert math.isinf(by_name["tgate m=3"].psnr)
    assert by_name["tgate m=3"].macs_per_image == plain.macs_per_image
    gated = by_name["tgate m=1"]
    assert gated.denoiser_batches == [2, 1, 1]  # CFG batch until the gate, one branch after
    assert 0 < gated.macs_per_image < plain.macs_per_image
    assert gated.macs_vs_plain == pytest.approx(gated.macs_per_image / plain.macs_per_image)
    assert not math.isinf(by_name["null-before m=1"].psnr)  # the text changed in step 0
    assert by_name["null-before m=1"].macs_per_image == plain.macs_per_image
    for r in report.results:
        for value in (r.object_accuracy, r.relation_accuracy, r.relation_flipped, r.caption_accuracy):
            assert 0.0 <= value <= 1.0
        assert r.frechet >= 0 and r.seconds > 0
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {"eval.md", "eval.csv", "eval.json", "eval.png", "samples.png"}
    table = markdown_table(report)
    assert all(f"| {name} |" in table for name in by_name)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["results"][0]["psnr"] == "inf" and len(data["results"]) == 4


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from crossgate.testing import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(seed=0).save_pretrained(folder)
    return folder


def test_eval_cli_writes_outputs(saved_tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(
        ["eval", "--model", str(saved_tiny), "--gate-steps", "1", "--max-captions", "2", "--per-caption", "1",
         "--steps", "2", "--batch-size", "2", "--out-dir", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "| tgate m=1 |" in printed
    assert (out / "eval.md").is_file() and (out / "eval.png").stat().st_size > 0


def test_eval_cli_bad_input(saved_tiny, tmp_path, capsys):
    assert main(["eval", "--model", str(saved_tiny), "--config", "warp:3"]) == 2
    assert "unknown configuration kind" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "captions.txt"
    bad.write_text("a red circle left of a blue square\na cat on a mat\n")
    assert main(["eval", "--model", str(saved_tiny), "--caption-file", str(bad)]) == 2
    assert "cannot parse caption" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--gate-steps", "0,5"])
