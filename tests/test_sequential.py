"""Sequential CFG (Wan's family): two named denoiser calls per step, the uncond one skipped after the gate.

Each case: gate >= steps is `torch.equal` to plain; before the gate both calls compute, after it one
(counted at a submodule that only runs when a block really computes); every cross-attention layer
computes only before the gate (two branches per step); the output equals an independent reference
(tests/sequential_cases.py) within atol 1e-5; no leakage; `remove()` exact.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from conftest import ProcessorCounter
from crossgate.adapters import cross_attention_modules
from sequential_cases import SEQUENTIAL, ManualSequentialTGate, SeqCase, wan22_two_experts, wan_t2v

# The single-expert families of the one registry (Wan 2.2's two experts have a test of their own).
CASES = {name: spec.build for name, spec in SEQUENTIAL.items() if spec.experts == 1}
# Main blocks: the VACE control blocks are skipped too, but the counter watches the first main block.


def call(case: SeqCase, seed: int = 0, **overrides):
    kwargs = dict(case.kwargs, num_inference_steps=case.steps, output_type="latent", **overrides)
    return case.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed)).frames


class BlockPasses:
    """Counts the denoiser passes whose first block really computes (its feed-forward runs)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.count = 0
        self._handle = transformer.blocks[0].ffn.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("family", list(CASES))
def test_sequential_family(family):
    case = CASES[family]()
    pipe = case.pipe
    plain = call(case)

    with crossgate.enabled(pipe, gate_step=case.steps):
        assert torch.equal(call(case), plain)

    crossgate.apply(pipe, gate_step=case.gate)
    counter = ProcessorCounter(cross_attention_modules(pipe.transformer))
    passes = BlockPasses(pipe.transformer)
    gated = call(case)
    passes.close()
    stats = crossgate.last_call(pipe)
    assert stats.gate == case.gate and stats.cfg is True
    assert set(counter.calls.values()) == {2 * case.gate}  # cond + uncond, steps before the gate
    assert passes.count == 2 * case.gate + (case.steps - case.gate)
    assert set(stats.cross_attention_replays.values()) == {case.steps - case.gate}
    assert stats.denoiser_batches == [1] * (2 * case.gate + case.steps - case.gate)
    assert not torch.equal(gated, plain)

    crossgate.remove(pipe)
    manual = ManualSequentialTGate([pipe.transformer], case.gate)
    try:
        expected = call(case)
    finally:
        manual.close()
    torch.testing.assert_close(gated, expected, atol=1e-5, rtol=1e-5)

    crossgate.apply(pipe, gate_step=case.gate)
    call(case, seed=1, prompt="a blue square")
    assert torch.equal(call(case), gated)
    crossgate.remove(pipe)
    assert torch.equal(call(case), plain)


def test_without_cfg_only_the_cond_call_runs_and_nothing_is_averaged():
    case = wan_t2v()
    pipe = case.pipe
    crossgate.apply(pipe, gate_step=2)
    gated = call(case, guidance_scale=1.0)
    assert crossgate.last_call(pipe).cfg is False
    crossgate.remove(pipe)
    manual = ManualSequentialTGate([pipe.transformer], 2, cfg=False)
    try:
        expected = call(case, guidance_scale=1.0)
    finally:
        manual.close()
    torch.testing.assert_close(gated, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate", [2, 4], ids=["gate-before-boundary", "gate-after-boundary"])
def test_wan22_two_experts(gate):
    """6 steps, boundary 0.87: steps 0-2 run `transformer`, 3-5 `transformer_2` (checked below).

    Gate 2 falls before the second expert ever ran: its cross-attention has nothing measured to
    replay, so it keeps computing (single cond pass) while the uncond call is still skipped.
    Gate 4 falls after it ran one step: both experts replay their own caches.
    """
    case = wan22_two_experts()
    pipe = case.pipe
    plain = call(case)
    first = ProcessorCounter(cross_attention_modules(pipe.transformer))
    second = ProcessorCounter(cross_attention_modules(pipe.transformer_2))
    call(case)
    assert set(first.calls.values()) == {6} and set(second.calls.values()) == {6}  # 3 steps x 2 each
    first.calls = dict.fromkeys(first.calls, 0)
    second.calls = dict.fromkeys(second.calls, 0)

    crossgate.apply(pipe, gate_step=gate)
    gated = call(case)
    stats = crossgate.last_call(pipe)
    if gate == 2:
        assert set(first.calls.values()) == {4}  # steps 0, 1 x 2 branches
        assert set(second.calls.values()) == {3}  # steps 3, 4, 5, cond only
    else:
        assert set(first.calls.values()) == {6}  # steps 0-2 x 2
        assert set(second.calls.values()) == {2}  # step 3 x 2; replayed at 4, 5
        assert set(v for k, v in stats.cross_attention_replays.items() if k.startswith("transformer_2.")) == {
            2
        }
    assert stats.denoiser_batches.count(1) == 2 * gate + (6 - gate)
    assert not torch.equal(gated, plain)

    crossgate.remove(pipe)
    manual = ManualSequentialTGate([pipe.transformer, pipe.transformer_2], gate)
    try:
        expected = call(case)
    finally:
        manual.close()
    torch.testing.assert_close(gated, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(call(case), plain)


def test_per_branch_pipeline_without_branch_names_is_refused():
    from diffusers import WanVideoToVideoPipeline

    components = dict(wan_t2v().pipe.components)
    components.pop("transformer_2")
    pipe = WanVideoToVideoPipeline(**components)
    with pytest.raises(crossgate.UnsupportedPipelineError, match="without naming the calls"):
        crossgate.apply(pipe, gate_step=2)
    assert not crossgate.is_applied(pipe)
    assert "cache_context" not in pipe.transformer.__dict__


def test_named_but_unverified_pipeline_is_refused():
    from diffusers import WanPipeline

    class MyWan(WanPipeline):
        def __call__(self, *args, **kwargs):  # the branches are named, the guidance is unknown
            with self.transformer.cache_context("cond"):
                cond = self.transformer(*args, **kwargs)
            with self.transformer.cache_context("uncond"):
                uncond = self.transformer(*args, **kwargs)
            return cond, uncond

    pipe = MyWan(**wan_t2v().pipe.components)
    # a subclass with its own __call__ inherits the name, not the verification
    with pytest.raises(crossgate.UnsupportedPipelineError):
        crossgate.apply(pipe, gate_step=2)


def _cache_config(name: str, pipe):
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    return {
        "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.2),
        "MagCache": lambda: MagCacheConfig(num_inference_steps=4, mag_ratios=[1.0] * 4, threshold=0.5),
        "TaylorSeer": lambda: TaylorSeerCacheConfig(),
        "PAB": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
    }[name]()


@pytest.mark.parametrize("cache", ["FirstBlockCache", "MagCache", "TaylorSeer", "PAB"])
@pytest.mark.parametrize("order", ["cache-first", "crossgate-first"])
def test_composes_with_diffusers_caches(cache, order):
    """diffusers' caches keep state per `cache_context`; crossgate's skipped uncond calls feed theirs
    nothing they read (the uncond outputs are discarded after the gate). Defined: an inactive gate is
    exactly the cache alone; an active one is stable across calls (no stale state)."""
    case = wan_t2v()
    pipe = case.pipe
    pipe.transformer.enable_cache(_cache_config(cache, pipe))
    cache_alone = call(case)
    pipe.transformer.disable_cache()

    def enable_both(gate):
        if order == "cache-first":
            pipe.transformer.enable_cache(_cache_config(cache, pipe))
            crossgate.apply(pipe, gate_step=gate)
        else:
            crossgate.apply(pipe, gate_step=gate)
            pipe.transformer.enable_cache(_cache_config(cache, pipe))

    def disable_both():
        crossgate.remove(pipe)
        pipe.transformer.disable_cache()

    enable_both(case.steps)
    assert torch.equal(call(case), cache_alone)
    disable_both()

    enable_both(case.gate)
    first = call(case)
    call(case, seed=1, prompt="a blue square")
    assert torch.equal(call(case), first)
    assert crossgate.last_call(pipe).denoiser_batches == [1] * (2 * case.gate + case.steps - case.gate)
    assert torch.isfinite(first).all() and not torch.equal(first, cache_alone)
    disable_both()


def test_v2_self_attention_caching_is_refused_for_sequential_cfg():
    pipe = wan_t2v().pipe
    with pytest.raises(crossgate.ConfigError, match="two denoiser calls"):
        crossgate.apply(pipe, gate_step=2, self_attention_interval=2)
    assert not crossgate.is_applied(pipe)
