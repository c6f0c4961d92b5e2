"""crossgate composed with DeepCache (PyPI `DeepCache`, `DeepCacheSDHelper`) on SD and SDXL."""

from __future__ import annotations

import pytest
import torch

import crossgate
from conftest import run

DeepCache = pytest.importorskip("DeepCache")


def _deepcache(pipe, interval):
    helper = DeepCache.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    return helper


def _count_full_passes(unet):
    """The mid block runs only in DeepCache's full passes; count its calls."""
    calls = []
    unet.mid_block.resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_deepcache_alone_breaks_at_the_gate_without_composition(sd_pipe):
    crossgate.apply(sd_pipe, gate_step=4)
    _deepcache(sd_pipe, interval=3)  # step 4 reuses 2B-batch features from step 3
    with pytest.raises(RuntimeError):
        run(sd_pipe, steps=8)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_composed_deepcache_refills_at_the_gate(sd_pipe, sdxl_pipe, family):
    pipe = sd_pipe if family == "sd" else sdxl_pipe
    helper = _deepcache(pipe, interval=3)
    crossgate.apply(pipe, gate_step=4)
    crossgate.compose_deepcache(pipe, helper)
    full = _count_full_passes(pipe.unet)
    out = run(pipe, steps=8)
    assert torch.isfinite(out).all()
    # DeepCache's own full passes are steps 0, 3, 6; the gate adds step 4.
    assert len(full) == 4
    stats = crossgate.last_call(pipe)
    assert stats.denoiser_batches == [2, 2, 2, 2, 1, 1, 1, 1]
    # Second call: nothing leaks (DeepCache and crossgate both reset).
    assert torch.equal(run(pipe, steps=8), out)


def test_deepcache_every_step_is_exactly_crossgate_alone(sd_pipe, _sd_template):
    import copy

    alone = copy.deepcopy(_sd_template)
    crossgate.apply(alone, gate_step=3)
    expected = run(alone, steps=6)

    helper = _deepcache(sd_pipe, interval=1)  # DeepCache never reuses: must change nothing
    crossgate.compose_deepcache(sd_pipe, helper)
    crossgate.apply(sd_pipe, gate_step=3)
    assert torch.equal(run(sd_pipe, steps=6), expected)


def test_compose_rejects_non_helpers(sd_pipe):
    with pytest.raises(TypeError, match="DeepCache helper"):
        crossgate.compose_deepcache(sd_pipe, object())
