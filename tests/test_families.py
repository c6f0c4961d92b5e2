"""Every supported pipeline family through the same `crossgate.apply` call.

For each family (tiny random weights, built in tests/families.py):
1. gate_step >= steps: `torch.equal` to the plain pipeline;
2. after the gate: every cross-attention layer (the ControlNets' too) computed in exactly m steps and
   replayed in every pass after them (Panorama: one pass per batch of view windows per step), the
   denoiser batch (and each ControlNet's) halved when the call runs CFG, and the output equal to an
   independent hand-patched TGATE (tests/manual_tgate.py) within atol 1e-4 + rtol 1e-5 (float32
   reassociation only), which gates the attention modules measured to attend to the text in plain
   calls (`families.text_attention`), not the ones crossgate finds;
3. no state leaks between calls, and `remove()` restores the plain output exactly.
"""

from __future__ import annotations

import random

import pytest
import torch

import crossgate
from families import CASES, Case, case_text_attention
from manual_tgate import ManualControlGate, ManualTGate


def controlnets(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's ControlNets by attribute path, found without crossgate (Multi* unwrapped)."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    model = getattr(pipe, "controlnet", None)
    nets = getattr(model, "nets", None)
    found = (
        {f"controlnet.nets.{i}": n for i, n in enumerate(nets)} if nets is not None else {"controlnet": model}
    )
    return {path: n for path, n in found.items() if isinstance(n, (ControlNetModel, ControlNetUnionModel))}


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
    text_modules = case_text_attention(case, random.Random(family))
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
    assert set(stats.cross_attention_replays.values()) == {(steps - case.gate) * case.passes}
    split = case.gate * case.passes  # denoiser passes before the gate
    before, after = stats.denoiser_batches[:split], stats.denoiser_batches[split:]
    step = before[: case.passes]  # one step's passes
    assert before == step * case.gate
    assert after == [b // 2 if case.cfg else b for b in step] * (steps - case.gate)
    assert not torch.equal(gated, plain)
    nets = controlnets(pipe)
    assert set(stats.control_batches) == set(nets)
    for path, batches in stats.control_batches.items():
        assert batches == before[:1] * case.gate + after[:1] * (steps - case.gate), path
        assert any(name.startswith(f"{path}.") for name in stats.cross_attention_computed_steps)

    crossgate.remove(pipe)
    assert stats.post_gate_inputs == case.half
    manuals = [
        ManualTGate(
            getattr(pipe, case.denoiser_attr),
            case.gate,
            case.cfg,
            case.half,
            cond_first=case.cond_first,
            passes=case.passes,
            interleaved=case.interleaved,
            text_modules=text_modules[case.denoiser_attr],
        )
    ]
    manuals += [
        ManualControlGate(
            n, case.gate, case.cfg, case.half, guess_mode=False, text_modules=text_modules[path]
        )
        for path, n in nets.items()
    ]
    try:
        expected = call(case)
    finally:
        for manual in manuals:
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


def inputs_seen(case: Case, module: torch.nn.Module, key: str) -> list[torch.Tensor]:
    """The keyword input ``key`` of every ``module`` call during one plain call of ``case``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs[key]), with_kwargs=True
    )
    try:
        call(case)
    finally:
        handle.remove()
    return seen


def test_lumina_batches_cond_first():
    """The Lumina adapter's cond_first is read from a real call: the first half carries the prompt.

    Its mask (the prompt's tokens) is longer than the empty negative prompt's, so a diffusers release
    that swaps the order fails here rather than silently feeding the other half after the gate.
    """
    from families import lumina

    case = lumina()
    masks = inputs_seen(case, case.pipe.transformer, "encoder_mask")
    first, second = masks[0].chunk(2)
    assert first.sum() > second.sum()


def test_panorama_interleaves_cfg_per_view():
    """The Panorama adapter's layout is read from a real call: [neg, pos, neg, pos] per pass of 2 views.

    A diffusers release that batches the views' CFG contiguously fails here rather than feeding mixed
    halves after the gate.
    """
    from families import sd_panorama_view_batches

    case = sd_panorama_view_batches()
    seen = inputs_seen(case, case.pipe.unet, "encoder_hidden_states")
    assert len(seen) == case.steps * case.passes
    embeds = seen[0]
    assert embeds.shape[0] == 4
    assert torch.equal(embeds[0], embeds[2]) and torch.equal(embeds[1], embeds[3])
    assert not torch.equal(embeds[0], embeds[1])


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"self_attention_interval": 2}, "self-attention caching"),
        ({"gate_step": "auto"}, 'gate_step="auto"'),
        ({"guidance_after_gate": 0.5}, "guidance_after_gate"),
    ],
)
def test_panorama_refuses_what_a_single_pass_per_step_assumes(option, match):
    from families import sd_panorama

    pipe = sd_panorama().pipe
    options = {"gate_step": 3, **option}
    with pytest.raises(crossgate.ConfigError, match=match):
        crossgate.check(pipe, **options)
    with pytest.raises(crossgate.ConfigError, match=match):
        crossgate.apply(pipe, **options)
    assert not crossgate.is_applied(pipe) and "progress_bar" not in pipe.__dict__
    crossgate.apply(pipe, gate_step=3)
    with pytest.raises(crossgate.ConfigError, match=match):
        crossgate.apply(pipe, **options)  # a refused reconfiguration keeps the previous one
    from crossgate.pipeline import configuration

    assert configuration(pipe).gate_step == 3
    crossgate.remove(pipe)
