"""TGATE v2: self-attention caching on the published schedule (crossgate.schedule)."""

from __future__ import annotations

import pytest
import torch

import crossgate
from conftest import ProcessorCounter, live_call_records, run
from crossgate.adapters.base import self_attention_modules
from crossgate.hooks import hooked
from crossgate.schedule import Action, format_plan, self_attention_plan
from reference_tgate import reference_latents


def test_worked_example_table():
    plan = self_attention_plan(25, gate=10, interval=5, warm_up=2)
    assert format_plan(plan, 10) == "C C S R R S R R R G" + " C" * 15
    assert sum(a is not Action.REUSE for a in plan) == 20


def test_published_pixart_setting_reuses_the_documented_steps():
    plan = self_attention_plan(25, gate=15, interval=3, warm_up=2)
    assert [i for i, a in enumerate(plan) if a is Action.REUSE] == [4, 5, 7, 8, 10, 11, 13]


def test_late_only_caching_reuses_after_the_gate():
    plan = self_attention_plan(10, gate=4, interval=None, interval_after=2)
    assert format_plan(plan, 4) == "C C C G S R S R S R"
    assert self_attention_plan(10, gate=4, interval=None) == [Action.COMPUTE] * 10  # v1


def _computed(plan):
    return [i for i, a in enumerate(plan) if a is not Action.REUSE]


@pytest.mark.parametrize("after", [1, 2])
def test_counts_follow_the_schedule_sd(sd_pipe, after):
    counter = ProcessorCounter(self_attention_modules(sd_pipe.unet))
    crossgate.apply(sd_pipe, gate_step=5, self_attention_interval=3, self_attention_interval_after=after)
    run(sd_pipe, steps=10)
    plan = self_attention_plan(10, 5, 3, after, 2)
    stats = crossgate.last_call(sd_pipe)
    assert set(map(tuple, stats.self_attention_computed_steps.values())) == {tuple(_computed(plan))}
    assert set(counter.calls.values()) == {len(_computed(plan))}


def test_counts_follow_the_schedule_sdxl_and_pixart(sdxl_pipe):
    from families import pixart_alpha

    case = pixart_alpha()
    for pipe, kwargs in ((sdxl_pipe, {}), (case.pipe, case.kwargs)):
        crossgate.apply(pipe, gate_step=6, self_attention_interval=2, self_attention_warm_up=1)
        generator = torch.Generator().manual_seed(0)
        kwargs = {"prompt": "a red circle", **kwargs, "num_inference_steps": 8, "output_type": "latent"}
        pipe(**kwargs, generator=generator)
        stats = crossgate.last_call(pipe)
        expected = _computed(self_attention_plan(8, 6, 2, 1, 1))
        assert expected != list(range(8))
        assert set(map(tuple, stats.self_attention_computed_steps.values())) == {tuple(expected)}
        assert stats.denoiser_batches[-1] * 2 == stats.denoiser_batches[0]


def test_interval_one_is_exactly_v1(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=3)
    v1 = run(sd_pipe, steps=8)
    crossgate.apply(sd_pipe, gate_step=3, self_attention_interval=1)
    assert torch.equal(run(sd_pipe, steps=8), v1)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("after", [1, 2])
def test_matches_independent_reference(sd_pipe, sdxl_pipe, family, after):
    pipe = sd_pipe if family == "sd" else sdxl_pipe
    prompts = ["a red circle", "a blue square"]
    plan = format_plan(self_attention_plan(8, 5, 3, after, 1), 5).replace("G", "S").split()
    assert "R" in plan
    expected = reference_latents(
        pipe, prompts, steps=8, gate=5, guidance=5.0, seed=3, sdxl=family == "sdxl", sa_plan=plan
    )
    crossgate.apply(
        pipe,
        gate_step=5,
        self_attention_interval=3,
        self_attention_interval_after=after,
        self_attention_warm_up=1,
    )
    got = run(pipe, prompts, steps=8, seed=3, guidance_scale=5.0, negative_prompt=["", ""])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    crossgate.apply(pipe, gate_step=5)
    assert (
        run(pipe, prompts, steps=8, seed=3, guidance_scale=5.0, negative_prompt=["", ""]) - got
    ).abs().max() > 4e-5


def test_no_leakage_between_calls(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=4, self_attention_interval=2)
    first = run(sd_pipe, "a red circle", steps=8)
    run(sd_pipe, "a blue square", steps=8, seed=5)
    assert torch.equal(run(sd_pipe, "a red circle", steps=8), first)
    assert live_call_records() == 0, "no self-attention cache outlives its call"
    crossgate.remove(sd_pipe)
    assert not any(hooked(m) for m in sd_pipe.unet.modules())


@pytest.mark.parametrize(
    "field,bad",
    [
        ("self_attention_interval", 0),
        ("self_attention_interval", -2),
        ("self_attention_interval", 1.5),
        ("self_attention_interval", "3"),
        ("self_attention_interval", True),
        ("self_attention_interval_after", 0),
        ("self_attention_warm_up", -1),
    ],
)
def test_bad_schedule_values_are_clear_errors(sd_pipe, field, bad):
    with pytest.raises(crossgate.ConfigError, match=field):
        crossgate.apply(sd_pipe, gate_step=3, **{field: bad})
    assert not crossgate.is_applied(sd_pipe)
