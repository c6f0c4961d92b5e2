"""Pipelines that share a denoiser, scoped configs, and config values users actually pass.

Every expected output is made on an independent deep copy, so a shared hook or a leaked cache shows
up as a difference (`torch.equal`, no tolerance).
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

import crossgate
from conftest import live_call_records, run
from crossgate.gate import current_call
from crossgate.hooks import SelfAttentionRecord, hooked

STEPS = 6


def _img2img_kwargs():
    generator = torch.Generator("cpu").manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=generator)
    return {"image": image, "strength": 1.0}


def _expected(template, gate_step, prompt="a red circle", seed=0, **kwargs):
    fresh = copy.deepcopy(template)
    if gate_step is not None:
        crossgate.apply(fresh, gate_step=gate_step)
    return run(fresh, prompt, steps=STEPS, seed=seed, **kwargs)


def test_two_pipelines_on_one_unet_each_carry_their_own_config(sd_pipe, _sd_template):
    img2img = AutoPipelineForImage2Image.from_pipe(sd_pipe)
    assert img2img.unet is sd_pipe.unet
    crossgate.apply(sd_pipe, gate_step=2)
    crossgate.apply(img2img, gate_step=4)  # used to fail: "Hook ... already exists in the registry"

    fresh_img2img = StableDiffusionImg2ImgPipeline(**copy.deepcopy(_sd_template).components)
    crossgate.apply(fresh_img2img, gate_step=4)
    expected_i2i = run(fresh_img2img, steps=STEPS, **_img2img_kwargs())

    assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, 2))
    assert torch.equal(run(img2img, steps=STEPS, **_img2img_kwargs()), expected_i2i)
    assert crossgate.last_call(sd_pipe).gate == 2 and crossgate.last_call(img2img).gate == 4


def test_removing_from_one_keeps_the_other(sd_pipe, _sd_template):
    other = StableDiffusionPipeline(**sd_pipe.components)
    crossgate.apply(sd_pipe, gate_step=2)
    crossgate.apply(other, gate_step=3)
    crossgate.remove(sd_pipe)
    assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, None))
    assert torch.equal(run(other, steps=STEPS), _expected(_sd_template, 3))
    crossgate.remove(other)
    assert not any(hooked(m) for m in sd_pipe.unet.modules())
    assert not sd_pipe.unet._forward_pre_hooks and not sd_pipe.unet._forward_hooks


def test_plain_pipeline_nested_in_a_gated_call_gets_plain_output(sd_pipe, _sd_template):
    plain_twin = StableDiffusionPipeline(**sd_pipe.components)  # not applied, same UNet
    crossgate.apply(sd_pipe, gate_step=2)
    inner = []

    def callback(pipe, step, timestep, kwargs):
        if step == 3:  # after the gate: the gated call holds its cross-attention cache
            inner.append(run(plain_twin, "a blue square", steps=STEPS, seed=1))
        return kwargs

    outer = run(sd_pipe, steps=STEPS, callback_on_step_end=callback)
    assert torch.equal(inner[0], _expected(_sd_template, None, "a blue square", seed=1))
    assert torch.equal(outer, _expected(_sd_template, 2))


def test_gated_pipeline_nested_in_another_gated_call(sd_pipe, _sd_template):
    twin = StableDiffusionPipeline(**sd_pipe.components)
    crossgate.apply(sd_pipe, gate_step=2)
    crossgate.apply(twin, gate_step=4)
    inner = []

    def callback(pipe, step, timestep, kwargs):
        if step == 3:
            inner.append(run(twin, "a blue square", steps=STEPS, seed=1))
        return kwargs

    outer = run(sd_pipe, steps=STEPS, callback_on_step_end=callback)
    assert torch.equal(inner[0], _expected(_sd_template, 4, "a blue square", seed=1))
    assert torch.equal(outer, _expected(_sd_template, 2))
    assert crossgate.last_call(twin).gate == 4 and crossgate.last_call(sd_pipe).gate == 2


def test_concurrent_threads_on_a_shared_unet_each_get_their_own_output(sd_pipe, _sd_template):
    # Shares every model. Two components race across threads whatever crossgate does, so each thread
    # gets its own: the scheduler keeps per-call state (timesteps, step index), and a fast tokenizer
    # reconfigures padding on its shared Rust object at every call (transformers#47085: wrong padding
    # or "Already borrowed"; it once made the plain output here differ, with or without crossgate).
    plain_twin = StableDiffusionPipeline(
        **{
            **sd_pipe.components,
            "scheduler": copy.deepcopy(sd_pipe.scheduler),
            "tokenizer": copy.deepcopy(sd_pipe.tokenizer),
        }
    )
    assert plain_twin.unet is sd_pipe.unet and plain_twin.text_encoder is sd_pipe.text_encoder
    crossgate.apply(sd_pipe, gate_step=2)
    expected_gated = _expected(_sd_template, 2)
    expected_plain = _expected(_sd_template, None, "a blue square", seed=1)
    results: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(name, pipe, prompt, seed):
        try:
            results[name] = run(pipe, prompt, steps=STEPS, seed=seed)
        except BaseException as error:  # reported below, with the thread's error
            errors.append(error)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over often, so the two calls interleave inside passes
    try:
        for _ in range(3):
            results.clear()
            threads = [
                threading.Thread(target=work, args=("gated", sd_pipe, "a red circle", 0)),
                threading.Thread(target=work, args=("plain", plain_twin, "a blue square", 1)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors, errors
            assert torch.equal(results["gated"], expected_gated)
            assert torch.equal(results["plain"], expected_plain)
    finally:
        sys.setswitchinterval(switch_interval)


def test_replaced_denoiser_is_rehooked_at_the_next_call(sd_pipe, _sd_template):
    crossgate.apply(sd_pipe, gate_step=2)
    old = sd_pipe.unet
    sd_pipe.unet = copy.deepcopy(_sd_template.unet)
    assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, 2))
    stats = crossgate.last_call(sd_pipe)
    assert set(stats.cross_attention_computed_steps.values()) == {2}
    assert not any(hooked(m) for m in old.modules())
    crossgate.remove(sd_pipe)
    assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, None))


def test_replaced_denoiser_without_cross_attention_is_a_clear_error(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=2)
    unet = copy.deepcopy(sd_pipe.unet)
    for module in unet.modules():
        if getattr(module, "is_cross_attention", False):
            module.is_cross_attention = False  # as a UNet without text conditioning would be
    sd_pipe.unet = unet
    with pytest.raises(crossgate.UnsupportedPipelineError, match="replaced after apply"):
        run(sd_pipe, steps=STEPS)
    assert current_call() is None


def test_enabled_restores_the_previous_config(sd_pipe, _sd_template):
    crossgate.apply(sd_pipe, gate_step=4)
    with crossgate.enabled(sd_pipe, gate_step=2):
        assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, 2))
        with crossgate.enabled(sd_pipe, gate_step=3):
            run(sd_pipe, steps=STEPS)
            assert crossgate.last_call(sd_pipe).gate == 3
        run(sd_pipe, steps=STEPS)
        assert crossgate.last_call(sd_pipe).gate == 2
    assert torch.equal(run(sd_pipe, steps=STEPS), _expected(_sd_template, 4))
    assert crossgate.last_call(sd_pipe).gate == 4
    with crossgate.enabled(sd_pipe, gate_step=2):
        pass
    crossgate.remove(sd_pipe)
    with crossgate.enabled(sd_pipe, gate_step=2):
        pass
    assert not crossgate.is_applied(sd_pipe)


def test_default_gate_is_the_recommended_fraction(sd_pipe):
    assert crossgate.TGateConfig().gate_step == 0.4
    crossgate.apply(sd_pipe)
    run(sd_pipe, steps=10)
    assert crossgate.last_call(sd_pipe).gate == 4 and crossgate.last_call(sd_pipe).engaged


@pytest.mark.parametrize(
    "value,expected",
    [
        (np.int64(5), 5),
        (np.int32(3), 3),
        (np.float64(0.4), 0.4),
        (np.float32(0.5), 0.5),
        (Fraction(2, 5), 0.4),
        (Fraction(5), 5),
        (torch.tensor(5), 5),
        (torch.tensor(0.25), 0.25),
        (np.array(3), 3),
    ],
)
def test_numbers_are_accepted_as_numbers(value, expected):
    config = crossgate.TGateConfig(gate_step=value)
    assert config.gate_step == expected and type(config.gate_step) is type(expected)
    assert (
        crossgate.TGateConfig(gate_step=2, self_attention_interval=np.int64(3)).self_attention_interval == 3
    )
    assert crossgate.TGateConfig(
        gate_step="auto", auto_tolerance=np.float32(0.1)
    ).auto_tolerance == pytest.approx(0.1)


@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor([1, 2]), "5", np.float64("nan")])
def test_non_numbers_are_refused_without_contradiction(value):
    with pytest.raises(crossgate.ConfigError) as error:
        crossgate.TGateConfig(gate_step=value)
    assert "must be a number, got" not in str(error.value) or not isinstance(value, (np.floating, float))


def test_profile_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"gate_fraction": "half"}))
    with pytest.raises(crossgate.ConfigError, match=r"profile\.json.*gate_fraction"):
        crossgate.TGateConfig.from_profile(path)
    path.write_text(json.dumps({"gate_fraction": 1.7}))
    with pytest.raises(crossgate.ConfigError, match=r"profile\.json.*fraction"):
        crossgate.TGateConfig.from_profile(path)
    path.write_text(json.dumps({"gate_fraction": 0.4}))
    with pytest.raises(
        crossgate.ConfigError, match=r"profile\.json.*unknown TGATE option.*self_attention_interval"
    ):
        crossgate.TGateConfig.from_profile(path, self_atention_interval=3)
    with pytest.raises(crossgate.ConfigError, match=r"profile\.json.*self_attention_interval"):
        crossgate.TGateConfig.from_profile(path, self_attention_interval=0)
    assert crossgate.TGateConfig.from_profile(path, self_attention_interval=3).gate_step == 0.4


def test_a_pipeline_class_is_refused_with_what_to_do():
    with pytest.raises(crossgate.UnsupportedPipelineError, match=r"instance.*from_pretrained"):
        crossgate.apply(StableDiffusionPipeline)


def test_check_validates_without_touching(sd_pipe):
    config = crossgate.check(sd_pipe, gate_step=np.int64(3))
    assert config.gate_step == 3 and not crossgate.is_applied(sd_pipe)
    with pytest.raises(crossgate.ConfigError):
        crossgate.check(sd_pipe, gate_step=0)
    with pytest.raises(crossgate.UnsupportedPipelineError):
        crossgate.check(object())


def test_v2_self_attention_caches_are_dropped_when_nothing_reads_them(sd_pipe):
    """n=8, m=6, k=2, warm-up 2: plan C C S R S G C C. Only step 2's store is read (by step 3);
    step 4's store and the gate's store are never read (k_after=1), so they are never kept."""
    crossgate.apply(sd_pipe, gate_step=6, self_attention_interval=2)
    held: dict[int, int] = {}

    def count_at_step_start(module, args, kwargs):
        call = current_call()
        held[call.step] = sum(
            isinstance(r, SelfAttentionRecord) and r.cache is not None for r in call.records.values()
        )

    handle = sd_pipe.unet.register_forward_pre_hook(count_at_step_start, with_kwargs=True)
    try:
        run(sd_pipe, steps=8)
    finally:
        handle.remove()
    layers = len(crossgate.last_call(sd_pipe).self_attention_computed_steps)
    assert layers > 0
    assert held == {0: 0, 1: 0, 2: 0, 3: layers, 4: 0, 5: 0, 6: 0, 7: 0}
    assert live_call_records() == 0
