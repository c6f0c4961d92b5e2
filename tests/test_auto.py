"""gate_step="auto" and calibration profiles, on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

import crossgate
from crossgate.adapters import cross_attention_modules
from crossgate.gate import AutoGate, replay
from crossgate.tools.quality.calibration import first_gate, profile_from_convergence

PROMPTS = ["a red circle left of a blue square", "a green triangle above a yellow circle"]


@pytest.fixture(scope="module")
def _embedded():
    from diffusers import StableDiffusionPipeline

    from crossgate.embedded import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("embedded model not installed")
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(_embedded):
    yield _embedded
    crossgate.remove(_embedded)


def gen(pipe, steps=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS, num_inference_steps=steps, generator=generator, output_type="latent").images


def test_auto_gate_equals_the_fixed_gate_it_chose(pipe):
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=0.1)
    auto = gen(pipe)
    stats = crossgate.last_call(pipe)
    assert 4 <= stats.gate < 16  # inside the guard rails (0.2 n .. 0.8 n), not at either end
    scaled = [c * 20 / 25 for c in stats.convergence]  # the tolerance is per 1/25 of the trajectory
    assert scaled[-1] < 0.1 <= max(scaled[: stats.gate - 2] or [1.0])
    assert set(stats.cross_attention_computed_steps.values()) == {stats.gate}
    crossgate.apply(pipe, gate_step=stats.gate)
    assert torch.equal(gen(pipe), auto)


def test_guard_rails(pipe):
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=100.0)
    gen(pipe)
    assert crossgate.last_call(pipe).gate == 4  # round(0.2 * 20)
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=1e-9)
    gen(pipe)
    assert crossgate.last_call(pipe).gate == 16  # round(0.8 * 20)


def test_auto_that_cannot_engage_is_exactly_plain(pipe):
    plain = gen(pipe)
    crossgate.apply(pipe, gate_step="auto", auto_min_fraction=1.0, auto_max_fraction=1.0)
    assert torch.equal(gen(pipe), plain)


def test_live_statistic_equals_the_analysis_curve(pipe):
    from crossgate.tools.quality.convergence import record_convergence

    recorded = record_convergence(pipe, PROMPTS, num_inference_steps=20, seed=0, batch_size=2).average("mean")
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=1e-9)
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]  # as analysis seeds them
    pipe(PROMPTS, num_inference_steps=20, generator=generators, output_type="latent")
    live = crossgate.last_call(pipe).convergence
    assert len(live) == 15  # steps 1 .. 15, before the gate at 16
    torch.testing.assert_close(torch.tensor(live), torch.tensor(recorded[:15]), rtol=1e-4, atol=1e-6)


def test_profile_replays_the_auto_gate(pipe, tmp_path):
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=0.1)
    auto = gen(pipe)
    gate = crossgate.last_call(pipe).gate
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"gate_fraction": gate / 20}))
    crossgate.apply(pipe, crossgate.TGateConfig.from_profile(path))
    assert torch.equal(gen(pipe), auto)


def test_auto_does_not_leak_between_calls(pipe):
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=0.1)
    first = gen(pipe)
    gen(pipe, seed=3)
    assert torch.equal(gen(pipe), first)


def test_auto_gate_rule_replayed_over_a_curve():
    curve = [0.5, 0.3, 0.2, 0.09, 0.05, 0.04]  # change at steps 1..6

    def gate(tolerance, min_gate, max_gate, scale=1.0):
        return replay(AutoGate(tolerance / scale, min_gate, max_gate), curve)

    assert gate(0.1, min_gate=1, max_gate=7) == 5  # below at step 4 -> gate after it
    assert gate(0.1, min_gate=6, max_gate=7) == 6
    assert gate(0.01, min_gate=1, max_gate=7) == 7
    # scale 2 (a 50-step call): the change must be below 0.1 / 2 = 0.05, first true at step 6
    assert gate(0.1, min_gate=1, max_gate=8, scale=2.0) == 7
    # the config's own policy: 20 steps -> guard rails round(0.2*20)=4, round(0.8*20)=16, scale 20/25
    config = crossgate.TGateConfig(gate_step="auto", auto_tolerance=0.1)
    assert first_gate(curve, config, 20) == gate(0.1, 4, 16, scale=20 / 25)


def test_tolerance_is_stated_per_25th_of_the_trajectory(pipe):
    """The same scaled statistic: at n=40 the gate fires where change * 40/25 < tol."""
    crossgate.apply(pipe, gate_step="auto", auto_tolerance=0.1)
    gen(pipe, steps=40)
    stats = crossgate.last_call(pipe)
    scaled = [c * 40 / 25 for c in stats.convergence]
    assert scaled[-1] < 0.1 and all(v >= 0.1 for v in scaled[7 : stats.gate - 2])


def test_calibrate_profile_roundtrip(pipe, tmp_path):
    from crossgate.tools.quality.calibration import calibrate, write_profile

    profile = calibrate(pipe, PROMPTS, num_inference_steps=20, tolerance=0.1)
    auto = crossgate.TGateConfig(gate_step="auto", auto_tolerance=0.1)
    assert profile["gate_step"] == replay(AutoGate(0.1 / (20 / 25), 4, 16), profile["convergence"])
    assert profile["gate_step"] == first_gate(profile["convergence"], auto, 20)
    path = write_profile(profile, tmp_path / "p.json")
    config = crossgate.TGateConfig.from_profile(path)
    assert config.resolve_gate(20) == profile["gate_step"]
    layers = {name for name, _ in cross_attention_modules(pipe.unet)}
    assert set(profile["layer_settle_steps"]) == layers  # information only: one gate for all layers


def test_profile_errors(tmp_path):
    with pytest.raises(crossgate.ConfigError, match="not found"):
        crossgate.TGateConfig.from_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(crossgate.ConfigError, match="not readable JSON"):
        crossgate.TGateConfig.from_profile(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(crossgate.ConfigError, match="gate_fraction"):
        crossgate.TGateConfig.from_profile(tmp_path / "empty.json")


@pytest.mark.parametrize(
    "bad",
    [
        dict(gate_step="later"),
        dict(gate_step="auto", auto_tolerance=0),
        dict(gate_step="auto", auto_tolerance=float("nan")),
        dict(gate_step="auto", auto_min_fraction=0.9, auto_max_fraction=0.5),
        dict(gate_step="auto", auto_max_fraction=1.5),
    ],
)
def test_bad_auto_settings(bad):
    with pytest.raises(crossgate.ConfigError):
        crossgate.TGateConfig(**bad)


def test_cli_calibrate(tmp_path, _sd_template, capsys):
    from crossgate.cli import main

    model = tmp_path / "tiny"
    _sd_template.save_pretrained(model)
    out = tmp_path / "profile.json"
    assert (
        main(["calibrate", "--model", str(model), "--steps", "6", "--prompt", "a red cat", "--out", str(out)])
        == 0
    )
    profile = json.loads(out.read_text())
    assert profile["num_inference_steps"] == 6 and 1 <= profile["gate_step"] <= 6
    assert "from_profile" in capsys.readouterr().out
    assert main(["calibrate", "--model", str(model), "--tolerance", "-1", "--out", str(out)]) == 2


def test_profile_from_convergence_is_pure():
    from crossgate.tools.quality.convergence import ConvergenceResult

    result = ConvergenceResult(layers=["a", "b"], num_steps=25, cfg=True, prompts=["x"])
    result.relative_change = {
        "mean": {"a": [0.5, 0.2, 0.05, 0.01] + [0.01] * 20, "b": [0.5, 0.4, 0.3, 0.2] + [0.01] * 20}
    }
    profile = profile_from_convergence(result, 0.1, 0.2, 0.8)
    assert profile["layer_settle_steps"] == {"a": 5, "b": 6}  # a: below at step 3, but min gate is 5
    assert profile["gate_step"] == 6  # average [.5,.3,.175,.105,.01] first below 0.1 at step 5
