"""``crossgate analyze``: cross-attention convergence recording and the null-text ablation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import crossgate
from crossgate.adapters import cross_attention_modules
from crossgate.cli import main
from crossgate.tools.quality.convergence import record_convergence
from crossgate.tools.quality.null_text import null_text_ablation
from crossgate.tools.quality.sampling import StepTracker, cfg_active, generate_images, null_text

PROMPTS = ["a red circle left of a blue square", "a green triangle above a yellow circle"]


def _hook_counts(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_convergence_matches_an_independent_recording(sd_pipe):
    layers = cross_attention_modules(sd_pipe.unet)
    name, module = layers[0]
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone()))
    before = _hook_counts(sd_pipe.unet)
    result = record_convergence(sd_pipe, PROMPTS, num_inference_steps=4, batch_size=2)
    assert _hook_counts(sd_pipe.unet) == before  # our hooks are gone
    handle.remove()
    assert result.layers == [n for n, _ in layers]
    assert result.cfg and set(result.relative_change) == {"mean", "cond", "uncond"}
    assert len(outputs) == 4 and len(result.timesteps) == 4
    for t in range(1, 4):
        prev, cur = (o.flatten(1) for o in (outputs[t - 1], outputs[t]))
        for view, pick in (
            ("cond", lambda x: x[2:]),
            ("uncond", lambda x: x[:2]),
            ("mean", lambda x: (x[:2] + x[2:]) / 2),
        ):
            a, b = pick(prev), pick(cur)
            expected = ((b - a).norm(dim=1) / a.norm(dim=1)).mean().item()
            assert result.relative_change[view][name][t - 1] == pytest.approx(expected, rel=1e-5)
    average = result.average("mean")
    assert len(average) == 3 and all(np.isfinite(average)) and min(average) > 0


def test_convergence_without_cfg_records_one_view(sd_pipe):
    result = record_convergence(sd_pipe, PROMPTS[:1], num_inference_steps=3, guidance_scale=1.0)
    assert not result.cfg and set(result.relative_change) == {"mean"}


def test_convergence_refuses_a_gated_pipeline(sd_pipe):
    with crossgate.enabled(sd_pipe, gate_step=2), pytest.raises(ValueError, match="remove"):
        record_convergence(sd_pipe, PROMPTS, num_inference_steps=3)


def test_null_text_windows_are_exact(sd_pipe):
    seeds = [0, 1]
    plain = generate_images(sd_pipe, PROMPTS, seeds, 3).images
    unconditional = generate_images(sd_pipe, ["", ""], seeds, 3).images
    results = {}
    for window, gate in (("after", 3), ("before", 3), ("after", 1)):
        tracker = StepTracker()
        with null_text(sd_pipe, window, gate, tracker):
            results[window, gate] = generate_images(sd_pipe, PROMPTS, seeds, 3, tracker=tracker).images
    assert _hook_counts(sd_pipe.unet) == 0
    assert np.array_equal(results["after", 3], plain)  # no step at or after m=3 of 3 steps
    assert np.array_equal(results["before", 3], unconditional)  # every step sees the null text
    assert not np.array_equal(results["after", 1], plain)


def test_null_text_needs_cfg(sd_pipe):
    tracker = StepTracker()
    with null_text(sd_pipe, "before", 2, tracker), pytest.raises(ValueError, match="classifier-free"):
        generate_images(sd_pipe, PROMPTS[:1], [0], 3, guidance_scale=1.0, tracker=tracker)


def test_cfg_active_follows_the_engines_rule(sd_pipe):
    """The pipeline's own do_classifier_free_guidance decides whenever it can be read (the adapter's
    rule); only a pipeline that cannot say falls back to the batch being twice the prompt count."""
    # Before any call the property cannot be read: the batch decides.
    assert cfg_active(sd_pipe, 4, prompts=2) and not cfg_active(sd_pipe, 2, prompts=2)
    seen: list[tuple[bool, bool]] = []

    def probe(module, args, kwargs):
        seen.append((cfg_active(sd_pipe, 4, 0), cfg_active(sd_pipe, 2, 1)))

    handle = sd_pipe.unet.register_forward_pre_hook(probe, with_kwargs=True)
    try:
        sd_pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=5.0, output_type="latent")
        sd_pipe(PROMPTS[0], num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        handle.remove()
    assert seen == [(True, True), (False, False)]  # the property, not the batch, decided


def test_null_text_ablation_report(sd_pipe):
    result = null_text_ablation(sd_pipe, PROMPTS, gates=[3], num_inference_steps=3, batch_size=2)
    rows = {(r.arm, r.gate): r for r in result.rows}
    assert set(rows) == {("null text before m", 3), ("null text after m", 3)}
    assert rows["null text after m", 3].mse == 0.0 and rows["null text after m", 3].ssim == pytest.approx(1.0)
    assert rows["null text before m", 3].mse > 0
    assert result.plain_object_accuracy is not None  # scene captions are judged
    with pytest.raises(ValueError, match="outside"):
        null_text_ablation(sd_pipe, PROMPTS, gates=[4], num_inference_steps=3)


def test_analyze_cli(tmp_path, capsys):
    from crossgate.testing import tiny_sd_pipeline

    model = tmp_path / "tiny"
    tiny_sd_pipeline(seed=0).save_pretrained(model)
    out = tmp_path / "analysis"
    rc = main(
        ["analyze", "--model", str(model), "--prompt", "a red circle", "--prompt", "a blue square",
         "--steps", "3", "--null-gates", "1", "--out-dir", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "7 cross-attention layers" in printed and "null text before m" in printed
    data = json.loads((out / "convergence.json").read_text())
    assert len(data["layers"]) == 7 and len(data["average"]["mean"]) == 2
    for name in (
        "convergence.csv",
        "convergence.png",
        "null_text.json",
        "null_text.png",
        "null_text_samples.png",
    ):
        assert (out / name).stat().st_size > 0
    assert main(["analyze", "--model", str(model), "--steps", "3", "--null-gates", "5"]) == 2
    assert "--null-gates must be <=" in capsys.readouterr().err


def test_analyze_says_plainly_when_the_change_never_settles(tmp_path, capsys, monkeypatch):
    from crossgate.testing import tiny_sd_pipeline
    from crossgate.tools.quality.convergence import ConvergenceResult

    model = tmp_path / "tiny"
    tiny_sd_pipeline(seed=0).save_pretrained(model)
    monkeypatch.setattr(ConvergenceResult, "settle_step", lambda self, threshold=0.05, view="mean": None)
    args = ["analyze", "--model", str(model), "--prompt", "a red circle", "--steps", "3", "--no-null-text"]
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "average change does not stay below 5% within the 3 steps" in printed
    assert "from never" not in printed
