"""`guidance_after_gate`: the last guidance difference kept after the gate at no extra denoiser pass.

Checked against the independent explicit loop (tests/reference_tgate.py), which adds
w d^k (g - 1/2) delta to each single prediction itself, and for sequential CFG against
ManualSequentialTGate; w = 0 is TGATE exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import crossgate
from conftest import run
from crossgate.config import MAX_GUIDANCE_AFTER_GATE
from reference_tgate import reference_latents
from sequential_cases import ManualSequentialTGate, wan_t2v


@pytest.mark.parametrize("weight,decay", [(1.0, 1.0), (0.5, 0.8)])
def test_batched_cfg_matches_the_reference_loop(sd_pipe, weight, decay):
    prompts = ["a red circle", "a blue square"]
    crossgate.apply(sd_pipe, gate_step=3, guidance_after_gate=weight, guidance_after_gate_decay=decay)
    got = run(sd_pipe, prompts, steps=8, seed=3, guidance_scale=5.0, negative_prompt=["", ""])
    assert crossgate.last_call(sd_pipe).denoiser_batches == [4, 4, 4, 2, 2, 2, 2, 2]  # no extra pass
    crossgate.remove(sd_pipe)
    expected = reference_latents(
        sd_pipe, prompts, steps=8, gate=3, guidance=5.0, seed=3, keep_guidance=weight, keep_decay=decay
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain_tgate = reference_latents(sd_pipe, prompts, steps=8, gate=3, guidance=5.0, seed=3)
    assert (got - plain_tgate).abs().max() > 1e-3  # the kept guidance made a difference


def test_zero_weight_is_tgate_exactly(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=3)
    tgate = run(sd_pipe, steps=8)
    crossgate.apply(sd_pipe, gate_step=3, guidance_after_gate=0.0, guidance_after_gate_decay=0.5)
    assert torch.equal(run(sd_pipe, steps=8), tgate)


def test_sequential_cfg_matches_the_manual_reference():
    case = wan_t2v()
    pipe = case.pipe

    def call():
        kwargs = dict(case.kwargs, num_inference_steps=4, output_type="latent")
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0)).frames

    crossgate.apply(pipe, gate_step=2, guidance_after_gate=1.0)
    got = call()
    crossgate.remove(pipe)
    manual = ManualSequentialTGate([pipe.transformer], 2, keep_guidance=1.0)
    try:
        expected = call()
    finally:
        manual.close()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field,bad", [("guidance_after_gate", -1.0), ("guidance_after_gate_decay", 0.0)])
def test_bad_values_are_clear_errors(field, bad):
    with pytest.raises(crossgate.ConfigError, match=field):
        crossgate.TGateConfig(**{field: bad})


@pytest.mark.parametrize("weight", [1e308, 10**30, math.inf, -math.inf, math.nan, 10**400, 10.000001])
def test_weights_past_the_bound_are_refused(sd_pipe, weight):
    """1e308 and 10**30 used to be accepted and made every output value NaN."""
    with pytest.raises(crossgate.ConfigError, match="guidance_after_gate must be"):
        crossgate.TGateConfig(guidance_after_gate=weight)
    with pytest.raises(crossgate.ConfigError, match="guidance_after_gate must be"):
        crossgate.apply(sd_pipe, gate_step=3, guidance_after_gate=weight)
    assert not crossgate.is_applied(sd_pipe) and "progress_bar" not in sd_pipe.__dict__


def test_the_largest_weight_keeps_the_output_finite(sd_pipe):
    """At MAX_GUIDANCE_AFTER_GATE and a strong guidance scale every value stays finite."""
    assert crossgate.TGateConfig(guidance_after_gate=MAX_GUIDANCE_AFTER_GATE).guidance_after_gate == 10
    outs = {}
    for weight in (0.0, MAX_GUIDANCE_AFTER_GATE):
        with crossgate.enabled(sd_pipe, gate_step=2, guidance_after_gate=weight):
            outs[weight] = run(sd_pipe, steps=8, guidance_scale=15.0, negative_prompt="x")
    assert torch.isfinite(outs[MAX_GUIDANCE_AFTER_GATE]).all()
    assert (outs[MAX_GUIDANCE_AFTER_GATE] - outs[0.0]).abs().max() > 1e-2  # the weight was applied


def test_cond_first_pipeline_keeps_the_guidance_the_right_way_round():
    """Lumina-Next batches [cond; uncond]: the kept difference is cond - uncond, handed back cond first.

    Read at the transformer's output (after crossgate's hook): at the first step after the gate the
    first half minus the second must be w times (cond - uncond) of the step before the gate.
    """
    from families import lumina
    from test_families import call

    case = lumina()
    weight = 0.7
    outputs: list[torch.Tensor] = []
    crossgate.apply(case.pipe, gate_step=case.gate, guidance_after_gate=weight)
    handle = case.pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        call(case)
    finally:
        handle.remove()
        crossgate.remove(case.pipe)
    before, after = outputs[case.gate - 1], outputs[case.gate]
    cond, uncond = before.chunk(2)
    first, second = after.chunk(2)
    torch.testing.assert_close(first - second, weight * (cond - uncond), atol=1e-5, rtol=1e-4)
