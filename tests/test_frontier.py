"""The study configurations of docs/quality-frontier.md (``crossgate.tools.quality.ablations``).

cfg-cutoff is checked against diffusers' own ``SDCFGCutoffCallback`` (one prompt, where that callback
is right), cache-only against forward hooks that overwrite each cross-attention output after the
gate, the kept-guidance study hook against the engine's ``guidance_after_gate``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import crossgate
from crossgate.adapters.base import cross_attention_modules
from crossgate.tools.quality.ablations import GuidanceSchedule, cache_only, cfg_cutoff, kept_guidance
from crossgate.tools.quality.runner import RunConfig, default_captions, evaluate
from crossgate.tools.quality.sampling import StepTracker

STEPS = 6


def _latents(pipe, prompts, tracker=None, callback=None, seed=0):
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
    kwargs = dict(num_inference_steps=STEPS, generator=generators, output_type="latent")
    if tracker is not None:
        tracker.reset()
        tracker.prompts = len(prompts)
        kwargs["callback_on_step_end"] = tracker
    elif callback is not None:
        kwargs["callback_on_step_end"] = callback
        kwargs["callback_on_step_end_tensor_inputs"] = ["prompt_embeds"]
    with torch.inference_mode():
        return pipe(list(prompts), **kwargs).images


def _batches(pipe):
    seen: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    return seen, handle


def test_cfg_cutoff_beyond_the_steps_is_plain_exactly(sd_pipe):
    plain = _latents(sd_pipe, ["a red circle", "a blue square"])
    tracker = StepTracker()
    with cfg_cutoff(sd_pipe, STEPS, tracker):
        assert torch.equal(_latents(sd_pipe, ["a red circle", "a blue square"], tracker), plain)


def test_cfg_cutoff_matches_diffusers_callback_and_halves_the_batch(sd_pipe):
    from diffusers.callbacks import SDCFGCutoffCallback

    gate = 3
    expected = _latents(
        sd_pipe,
        ["a red circle"],
        callback=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=gate - 1),
    )
    tracker = StepTracker()
    with cfg_cutoff(sd_pipe, gate, tracker):
        seen, handle = _batches(sd_pipe)  # registered after the cutoff's hook: sees what runs
        got = _latents(sd_pipe, ["a red circle"], tracker)
    handle.remove()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert seen == [2] * gate + [1] * (STEPS - gate)
    assert not torch.equal(got, _latents(sd_pipe, ["a red circle"]))  # the cutoff changed something


def test_cfg_cutoff_takes_the_cond_half_of_every_prompt(sd_pipe):
    """diffusers' callback keeps prompt_embeds[-1:]; the hook keeps each prompt's own cond embedding."""
    prompts = ["a red circle", "a blue square"]
    tracker = StepTracker()
    with cfg_cutoff(sd_pipe, 2, tracker):
        pair = _latents(sd_pipe, prompts, tracker)
        first = _latents(sd_pipe, prompts[:1], tracker)
    torch.testing.assert_close(pair[:1], first, atol=1e-4, rtol=1e-4)  # batch-size numerics only
    assert not torch.allclose(pair[1:], first, atol=1e-2)  # the second prompt kept its own text


def test_cache_only_keeps_both_branches_and_replays_per_branch(sd_pipe):
    prompts = ["a red circle", "a blue square"]
    gate = 2
    plain = _latents(sd_pipe, prompts)
    # Independent reference: forward hooks that overwrite each cross-attention output after the gate.
    step = {"i": 0}
    cache: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(module, inputs, output):
            if step["i"] < gate:
                cache[name] = output
                return output
            return cache[name]

        return hook

    def callback(pipe, i, t, kwargs):
        step["i"] = i + 1
        return kwargs

    handles = [m.register_forward_hook(make_hook(n)) for n, m in cross_attention_modules(sd_pipe.unet)]
    expected = _latents(sd_pipe, prompts, callback=callback)
    for handle in handles:
        handle.remove()

    tracker = StepTracker()
    halves_differ: list[bool] = []
    out_hook = sd_pipe.unet.register_forward_hook(
        lambda m, a, out: (
            halves_differ.append(not torch.equal(*out[0].chunk(2))) if tracker.step >= gate else None
        )
    )
    seen, handle = _batches(sd_pipe)
    with cache_only(sd_pipe, gate, tracker) as processors:
        got = _latents(sd_pipe, prompts, tracker)
    handle.remove()
    out_hook.remove()
    assert torch.equal(got, expected)
    assert seen == [4] * STEPS  # the CFG batch 2B at every step: no branch dropped
    assert halves_differ and all(halves_differ)  # uncond and cond still differ: guidance kept
    for processor in processors.values():
        assert processor.computed == list(range(gate)) and processor.replayed == list(range(gate, STEPS))
    assert not torch.equal(got, plain)
    # the processors are restored on exit
    assert all(not hasattr(m.processor, "replayed") for _, m in cross_attention_modules(sd_pipe.unet))
    with cache_only(sd_pipe, STEPS, StepTracker()):
        pass
    assert torch.equal(_latents(sd_pipe, prompts), plain)


def test_cache_only_beyond_the_steps_is_plain_exactly(sd_pipe):
    plain = _latents(sd_pipe, ["a red circle"])
    tracker = StepTracker()
    with cache_only(sd_pipe, STEPS, tracker):
        assert torch.equal(_latents(sd_pipe, ["a red circle"], tracker), plain)


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_kept_guidance_hook_with_a_constant_schedule_is_the_engine(sd_pipe, decay):
    prompts = ["a red circle", "a blue square"]
    with crossgate.enabled(sd_pipe, gate_step=3, guidance_after_gate=1.0, guidance_after_gate_decay=decay):
        engine = _latents(sd_pipe, prompts)
    tracker = StepTracker()
    with crossgate.enabled(sd_pipe, gate_step=3):
        with kept_guidance(sd_pipe, 3, GuidanceSchedule(1.0, decay), tracker) as used:
            hooked = _latents(sd_pipe, prompts, tracker)
        tgate = _latents(sd_pipe, prompts)
    torch.testing.assert_close(hooked, engine, atol=1e-5, rtol=1e-5)
    assert used == pytest.approx([decay**k for k in range(STEPS - 3)])
    assert (hooked - tgate).abs().max() > 1e-3


def test_eps_schedule_rescales_by_the_noise_level(sd_pipe):
    scheduler = sd_pipe.scheduler
    scheduler.set_timesteps(STEPS)
    alpha = [float(scheduler.alphas_cumprod[int(t)]) ** 0.5 for t in scheduler.timesteps]
    weights = GuidanceSchedule(0.5, 0.9, "eps").weights(scheduler, 2, STEPS)
    assert weights == pytest.approx([0.5 * 0.9**k * alpha[1] / alpha[2 + k] for k in range(STEPS - 2)])
    assert all(later < earlier for earlier, later in itertools.pairwise(weights))  # alpha grows: fades out
    with pytest.raises(ValueError, match="schedule"):
        GuidanceSchedule(1.0, 1.0, "sigma")


def test_study_configs_through_evaluate(sd_pipe):
    captions = default_captions("held-out")[:2]
    specs = ["tgate:1", "cfg-cutoff:3", "cache-only:3", "deepcache:1", "tgate:1:dc=1", "cfg-cutoff:1"]
    specs += ["cache-only:1", "tgate:1:w=1:ws=eps", "deepcache:2"]
    configs = [RunConfig.parse(s) for s in specs]
    report = evaluate(sd_pipe, captions, configs, per_caption=1, steps=3, batch_size=4, log=lambda _: None)
    by = {r.name: r for r in report.results}
    plain = by["plain"]
    for name in ("cfg-cutoff m=3", "cache-only m=3", "deepcache dc=1"):  # never engages: plain exactly
        assert math.isinf(by[name].psnr) and by[name].macs_per_image == plain.macs_per_image
    assert by["tgate m=1 dc=1"].psnr == by["tgate m=1"].psnr  # DeepCache every step changes nothing
    assert by["cfg-cutoff m=1"].denoiser_batches == [2, 1, 1]
    assert by["cache-only m=1"].denoiser_batches == [2, 2, 2]
    tgate, cutoff, cached = by["tgate m=1"], by["cfg-cutoff m=1"], by["cache-only m=1"]
    assert tgate.macs_per_image < cutoff.macs_per_image < plain.macs_per_image  # cutoff runs attn2
    assert tgate.macs_per_image < cached.macs_per_image < plain.macs_per_image  # replays cost nothing
    assert by["tgate m=1 w=1 ws=eps"].macs_per_image == tgate.macs_per_image  # no extra pass
    assert by["deepcache dc=2"].macs_per_image < plain.macs_per_image


def test_study_stages_rescale_to_the_same_trajectory_fraction():
    """The n=50 stage is the n=25 candidates at the same gate fraction and decay per fraction."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "frontier_study.py"
    spec = importlib.util.spec_from_file_location("frontier_study", path)
    study = importlib.util.module_from_spec(spec)
    sys.modules["frontier_study"] = study  # its dataclasses look their module up
    spec.loader.exec_module(study)
    assert study.rescaled("tgate:10:w=1:d=0.8", 2) == "tgate:20:w=1:d=0.89"
    assert study.rescaled("cfg-cutoff:5", 2) == "cfg-cutoff:10"
    assert study.rescaled("tgate:10:dca=5", 2) == "tgate:20:dca=5"  # DeepCache intervals are per step
    assert study.rescaled("deepcache:3", 2) == "deepcache:3"
    assert study.rescaled("tgate:15:w=1:d=0.8", 1) == "tgate:15:w=1:d=0.8"
    stage = study.STAGES["full-ddim-50"]
    assert (stage.steps, stage.captions, stage.per_caption) == (50, 96, 4)
    argv = stage.argv(Path("/tmp/x"))
    assert argv[argv.index("--gate-steps") + 1] == "10,16,20,30,40"
