"""Every supported pipeline family through the same `crossgate.apply` call.

For each family (tiny random weights, built in tests/families.py):
1. gate_step >= steps: `torch.equal` to the plain pipeline;
2. after the gate: every cross-attention layer computed in exactly m steps, the denoiser batch halved
   when the call runs CFG, and the output equal to an independent hand-patched TGATE
   (tests/manual_tgate.py) within atol 1e-4 + rtol 1e-5 (float32 reassociation only);
3. no state leaks between calls, and `remove()` restores the plain output exactly.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from families import CASES, Case
from manual_tgate import ManualTGate


def call(case: Case, seed: int = 0, **overrides):
    kwargs = dict(case.kwargs, num_inference_steps=case.steps, output_type="latent", **overrides)
    torch.manual_seed(seed)  # for pipelines that sample without the generator (I2VGen-XL's image latents)
    out = case.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


@pytest.mark.parametrize("family", list(CASES))
def test_family(family):
    spec = CASES[family]
    case = spec.build()
    pipe = case.pipe
    assert type(pipe).__name__ == spec.pipeline
    plain = call(case)

    # 1. inactive gate is exact
    with crossgate.enabled(pipe, gate_step=case.steps):
        assert torch.equal(call(case), plain)

    # 2. the gate: counts, halved batch, agreement with the independent implementation
    crossgate.apply(pipe, gate_step=case.gate)
    gated = call(case)
    stats = crossgate.last_call(pipe)
    steps = case.actual_steps or case.steps
    assert stats.num_steps == steps and stats.gate == case.gate
    assert stats.cfg is case.cfg
    assert set(stats.cross_attention_computed_steps.values()) == {case.gate}
    assert set(stats.cross_attention_replays.values()) == {steps - case.gate}
    before, after = stats.denoiser_batches[: case.gate], stats.denoiser_batches[case.gate :]
    assert len(set(before)) == 1 and len(set(after)) == 1
    assert after[0] == (before[0] // 2 if case.cfg else before[0])
    assert not torch.equal(gated, plain)

    crossgate.remove(pipe)
    assert stats.post_gate_inputs == case.half
    manual = ManualTGate(getattr(pipe, case.denoiser_attr), case.gate, case.cfg, case.half)
    try:
        expected = call(case)
    finally:
        manual.close()
    torch.testing.assert_close(gated, expected, atol=1e-4, rtol=1e-5)

    # 3. no leakage across calls; remove() is exact
    crossgate.apply(pipe, gate_step=case.gate)
    call(case, seed=1)
    assert torch.equal(call(case), gated)
    crossgate.remove(pipe)
    assert torch.equal(call(case), plain)


def test_pipeline_calling_the_denoiser_per_cfg_branch_is_refused():
    from diffusers import StableDiffusionPipeline, WanPipeline

    from crossgate.adapters.registry import calls_denoiser_per_cfg_branch
    from crossgate.testing import tiny_sd_pipeline

    assert calls_denoiser_per_cfg_branch(WanPipeline, "transformer")

    class TwoPassPipeline(StableDiffusionPipeline):
        def __call__(self, *args, **kwargs):  # the shape of Wan's loop, in miniature
            noise_cond = self.unet(*args, **kwargs)
            noise_uncond = self.unet(*args, **kwargs)
            return noise_cond, noise_uncond

    pipe = TwoPassPipeline(**tiny_sd_pipeline().components)
    with pytest.raises(crossgate.UnsupportedPipelineError, match="separately for the conditional"):
        crossgate.apply(pipe, gate_step=2)
    assert not crossgate.is_applied(pipe)
