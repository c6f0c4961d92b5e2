"""TGATE core on SD-1.x and SDXL: exactness, agreement with a hand-written reference, counts, state."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)

import crossgate
import crossgate.pipeline
from conftest import ProcessorCounter, live_call_records, run
from crossgate.adapters import cross_attention_modules
from crossgate.gate import current_call
from crossgate.hooks import hooked
from reference_tgate import reference_latents

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "pndm": PNDMScheduler,
}


def use_scheduler(pipe, name):
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    return pipe


class BatchRecorder:
    """Records the batch the denoiser really computed (seen at its first convolution)."""

    def __init__(self, unet):
        self.batches: list[int] = []
        unet.conv_in.register_forward_pre_hook(lambda _m, inputs: self.batches.append(inputs[0].shape[0]))


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_gate_at_or_after_last_step_is_exactly_plain(sd_pipe, scheduler):
    use_scheduler(sd_pipe, scheduler)
    plain = run(sd_pipe, steps=6)
    for gate in (6, 9, 1.0):
        with crossgate.enabled(sd_pipe, gate_step=gate):
            assert torch.equal(run(sd_pipe, steps=6), plain), f"gate_step={gate}"


def test_gate_after_last_step_is_exactly_plain_sdxl(sdxl_pipe):
    plain = run(sdxl_pipe, steps=5, negative_prompt="blurry")
    with crossgate.enabled(sdxl_pipe, gate_step=5):
        assert torch.equal(run(sdxl_pipe, steps=5, negative_prompt="blurry"), plain)


@pytest.mark.parametrize("scheduler", ["ddim", "heun"])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_matches_independent_reference(sd_pipe, sdxl_pipe, family, scheduler, guidance):
    pipe = use_scheduler(sd_pipe if family == "sd" else sdxl_pipe, scheduler)
    prompts = ["a red circle left of a blue square", "a green triangle"]
    steps, gate = 8, 3
    expected = reference_latents(
        pipe, prompts, steps=steps, gate=gate, guidance=guidance, seed=7, sdxl=family == "sdxl"
    )
    crossgate.apply(pipe, gate_step=gate)
    got = run(pipe, prompts, steps=steps, seed=7, guidance_scale=guidance, negative_prompt=["", ""])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The gate really changed the result (otherwise this comparison would prove nothing).
    crossgate.remove(pipe)
    plain = run(pipe, prompts, steps=steps, seed=7, guidance_scale=guidance, negative_prompt=["", ""])
    assert (plain - got).abs().max() > 4e-5, "TGATE made no difference larger than the tolerance"


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_counts_cross_attention_and_halved_batch(sd_pipe, scheduler):
    use_scheduler(sd_pipe, scheduler)
    counter = ProcessorCounter(cross_attention_modules(sd_pipe.unet))
    recorder = BatchRecorder(sd_pipe.unet)
    run(sd_pipe, steps=6)
    plain_calls = dict(counter.calls)
    plain_passes = len(recorder.batches)
    order = sd_pipe.scheduler.order
    counter.calls = dict.fromkeys(counter.calls, 0)
    recorder.batches.clear()

    gate = 2
    crossgate.apply(sd_pipe, gate_step=gate)
    run(sd_pipe, steps=6, num_images_per_prompt=2)
    stats = crossgate.last_call(sd_pipe)
    assert stats.gate == gate and stats.num_steps == 6 and stats.cfg is True
    assert set(stats.cross_attention_computed_steps.values()) == {gate}
    # denoiser passes before the gate run at 2B = 4, after it at B = 2.
    passes_before = sum(1 for b in recorder.batches if b == 4)
    passes_after = sum(1 for b in recorder.batches if b == 2)
    assert passes_before + passes_after == plain_passes == len(recorder.batches)
    assert passes_after > 0 and passes_before >= gate
    # Every cross-attention layer computed once per pass before the gate, never after it.
    assert set(counter.calls.values()) == {passes_before}
    assert all(calls >= gate * 1 for calls in plain_calls.values())
    if order == 1 and scheduler != "pndm":
        assert passes_before == gate
    assert stats.denoiser_batches == recorder.batches


def test_heun_counts_steps_not_calls(sd_pipe):
    use_scheduler(sd_pipe, "heun")
    counter = ProcessorCounter(cross_attention_modules(sd_pipe.unet))
    crossgate.apply(sd_pipe, gate_step=3)
    run(sd_pipe, steps=6)
    # Heun evaluates the denoiser twice per step (except the last): 3 gated steps = 6 evaluations.
    assert set(counter.calls.values()) == {6}
    assert set(crossgate.last_call(sd_pipe).cross_attention_computed_steps.values()) == {3}


def test_fractional_gate_resolves_against_the_calls_steps(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=0.4)
    run(sd_pipe, steps=10)
    assert crossgate.last_call(sd_pipe).gate == 4
    run(sd_pipe, steps=5)
    assert crossgate.last_call(sd_pipe).gate == 2
    crossgate.apply(sd_pipe, gate_step=0.5)
    run(sd_pipe, steps=5)  # 2.5 rounds half up
    assert crossgate.last_call(sd_pipe).gate == 3


def test_no_leakage_between_calls(sd_pipe, _sd_template):
    import copy

    fresh = copy.deepcopy(_sd_template)
    crossgate.apply(fresh, gate_step=3)
    expected_b = run(fresh, "a blue square", steps=8, seed=1)

    crossgate.apply(sd_pipe, gate_step=3)
    run(sd_pipe, "a red circle", steps=8, seed=0)
    assert torch.equal(run(sd_pipe, "a blue square", steps=8, seed=1), expected_b)


def test_no_leakage_after_a_call_that_raised(sd_pipe, _sd_template):
    import copy

    fresh = copy.deepcopy(_sd_template)
    crossgate.apply(fresh, gate_step=3)
    expected_b = run(fresh, "a blue square", steps=8, seed=1)

    crossgate.apply(sd_pipe, gate_step=3)

    def explode(pipe, step, timestep, kwargs):
        if step == 5:
            raise KeyboardInterrupt("user pressed ctrl-c")
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        run(sd_pipe, "a red circle", steps=8, seed=0, callback_on_step_end=explode)
    assert current_call() is None
    assert live_call_records() == 0, "the interrupted call's caches must be dropped"
    assert torch.equal(run(sd_pipe, "a blue square", steps=8, seed=1), expected_b)


def test_denoiser_called_outside_a_call_is_untouched(sd_pipe):
    sample = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 77, 32)
    plain = sd_pipe.unet(sample, 10, encoder_hidden_states=text).sample
    crossgate.apply(sd_pipe, gate_step=1)
    assert torch.equal(sd_pipe.unet(sample, 10, encoder_hidden_states=text).sample, plain)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_remove_restores_plain_behaviour_exactly(sd_pipe, sdxl_pipe, family):
    pipe = sd_pipe if family == "sd" else sdxl_pipe
    plain = run(pipe, steps=6, num_images_per_prompt=2)
    crossgate.apply(pipe, gate_step=2)
    gated = run(pipe, steps=6, num_images_per_prompt=2)
    assert not torch.equal(gated, plain)
    crossgate.remove(pipe)
    assert not crossgate.is_applied(pipe)
    assert "progress_bar" not in pipe.__dict__
    assert torch.equal(run(pipe, steps=6, num_images_per_prompt=2), plain)
    crossgate.remove(pipe)  # removing twice is harmless


def test_apply_twice_is_idempotent_or_reconfigures(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=2)
    once = run(sd_pipe, steps=6)
    crossgate.apply(sd_pipe, gate_step=2)
    assert torch.equal(run(sd_pipe, steps=6), once)
    assert all(hooked(m) for _, m in cross_attention_modules(sd_pipe.unet)), (
        "a second apply must not stack hooks"
    )
    crossgate.apply(sd_pipe, gate_step=4)
    assert crossgate.pipeline.configuration(sd_pipe).gate_step == 4
    run(sd_pipe, steps=6)
    assert crossgate.last_call(sd_pipe).gate == 4


def test_sdxl_post_gate_inputs_choice_matters(sdxl_pipe):
    outs = {}
    for side in ("uncond", "cond"):
        with crossgate.enabled(sdxl_pipe, gate_step=2, post_gate_inputs=side):
            outs[side] = run(sdxl_pipe, steps=6, negative_prompt="a dark scene")
    assert not torch.equal(outs["uncond"], outs["cond"])


def test_batch_of_prompts_with_negative_prompts_and_images_per_prompt(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=2)
    out = run(
        sd_pipe,
        ["a red circle", "a blue square"],
        steps=5,
        negative_prompt=["x", "y"],
        num_images_per_prompt=3,
    )
    assert out.shape[0] == 6 and torch.isfinite(out).all()
    assert crossgate.last_call(sd_pipe).denoiser_batches == [12, 12, 6, 6, 6]


@pytest.mark.parametrize("bad", [0, -3, math.nan, 1.5, 0.0, "10", None, True, [3]])
def test_bad_gate_step_is_a_clear_error_and_leaves_pipeline_usable(sd_pipe, bad):
    plain = run(sd_pipe, steps=4)
    with pytest.raises(crossgate.ConfigError, match="gate_step"):
        crossgate.apply(sd_pipe, gate_step=bad)
    assert not crossgate.is_applied(sd_pipe)
    assert torch.equal(run(sd_pipe, steps=4), plain)


def test_bad_option_names_and_values(sd_pipe):
    with pytest.raises(crossgate.ConfigError, match="unknown TGATE option"):
        crossgate.apply(sd_pipe, gate=3)
    with pytest.raises(crossgate.ConfigError, match="post_gate_inputs"):
        crossgate.TGateConfig(post_gate_inputs="both")
    with pytest.raises(crossgate.ConfigError, match="TGateConfig"):
        crossgate.apply(sd_pipe, {"gate_step": 3})
    assert not crossgate.is_applied(sd_pipe)


def _untouched(pipe) -> bool:
    """No crossgate session, no instance-level patch, no hook left on any module of the pipeline."""
    any_hook = any(hooked(m) for m in pipe.unet.modules())
    return (
        not crossgate.is_applied(pipe)
        and "progress_bar" not in pipe.__dict__
        and "encode_prompt" not in pipe.__dict__
        and not pipe.unet._forward_pre_hooks
        and not pipe.unet._forward_hooks
        and not any_hook
    )


@pytest.mark.parametrize(
    ("config", "hint"),
    [
        ("0.4", r"got str '0\.4'; pass options as keywords \(crossgate\.apply\(pipe, gate_step=0\.4\)\)"),
        (
            {"gate_step": 3},
            r"got dict \{'gate_step': 3\}; pass options as keywords \(crossgate\.apply\(pipe, \*\*\{",
        ),
        (0.4, "got float 0.4; pass options as keywords"),
    ],
)
def test_config_that_is_not_a_tgateconfig_is_a_config_error(sd_pipe, config, hint):
    """A string, a number or a dict in the config's place: a ConfigError that says how to pass options.

    A dict is not taken as options (one way to pass them: keywords). Nothing is changed on the
    pipeline, and a refused reconfiguration keeps the previous configuration.
    """
    plain = run(sd_pipe, steps=4)
    for refuse in (crossgate.apply, crossgate.check):
        with pytest.raises(crossgate.ConfigError, match=hint):
            refuse(sd_pipe, config)
    with pytest.raises(crossgate.ConfigError, match=hint), crossgate.enabled(sd_pipe, config):
        pass
    assert _untouched(sd_pipe)
    assert torch.equal(run(sd_pipe, steps=4), plain)

    crossgate.apply(sd_pipe, gate_step=3)
    with pytest.raises(crossgate.ConfigError, match=hint):
        crossgate.apply(sd_pipe, config)
    assert crossgate.pipeline.configuration(sd_pipe).gate_step == 3
    crossgate.remove(sd_pipe)
    assert _untouched(sd_pipe)


def test_pipeline_without_cross_attention_is_refused_cleanly():
    from crossgate.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
    )
    plain = run(pipe, steps=3)
    with pytest.raises(crossgate.UnsupportedPipelineError, match="no cross-attention"):
        crossgate.apply(pipe, gate_step=2)
    assert not crossgate.is_applied(pipe) and "progress_bar" not in pipe.__dict__
    assert not any(hooked(m) for m in pipe.unet.modules())
    assert torch.equal(run(pipe, steps=3), plain)


def test_non_pipeline_is_refused(sd_pipe):
    with pytest.raises(crossgate.UnsupportedPipelineError, match="diffusers pipeline"):
        crossgate.apply(sd_pipe.unet, gate_step=2)
