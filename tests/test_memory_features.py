"""Memory and precision features users combine with crossgate, in either order, on tiny SD.

* group offloading (``enable_group_offload``, block and leaf level): it only moves weights, so the
  output is exactly crossgate's alone (on CPU onload and offload are the same device);
* layerwise casting (fp8 storage, fp32 compute) and torchao int8 weight-only quantization change the
  weights, so the output cannot equal fp32 crossgate. Checked instead: it equals the independent
  hand-patched TGATE (tests/manual_tgate.py) under the same feature exactly, and differs from fp32
  crossgate by no more than twice the feature's own error on the plain pipeline (gating does not
  amplify it).

Every case also checks the gate itself (cross-attention computed only before the gate, denoiser batch
halved after it) and that ``remove()`` gives back the feature's plain output exactly.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from crossgate.testing import tiny_sd_pipeline
from manual_tgate import ManualTGate

STEPS, GATE = 4, 2


def run(pipe) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe("a red circle", num_inference_steps=STEPS, output_type="latent", generator=generator).images


def _enable(pipe, feature: str) -> None:
    unet, cpu = pipe.unet, torch.device("cpu")
    if feature == "group offload (block)":
        unet.enable_group_offload(cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    elif feature == "group offload (leaf)":
        unet.enable_group_offload(cpu, offload_device=cpu, offload_type="leaf_level")
    elif feature == "layerwise casting (fp8 storage)":
        unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    elif feature == "torchao int8 weight-only":
        quantization = pytest.importorskip("torchao.quantization")
        quantization.quantize_(unet, quantization.Int8WeightOnlyConfig())
    else:
        raise AssertionError(feature)


EXACT = ("group offload (block)", "group offload (leaf)")
FEATURES = (*EXACT, "layerwise casting (fp8 storage)", "torchao int8 weight-only")


@pytest.fixture(scope="module")
def reference():
    """fp32 plain and crossgate outputs, without any feature."""
    pipe = tiny_sd_pipeline()
    plain = run(pipe)
    with crossgate.enabled(pipe, gate_step=GATE):
        gated = run(pipe)
    return plain, gated


@pytest.mark.parametrize("order", ["feature first", "crossgate first"])
@pytest.mark.parametrize("feature", FEATURES)
def test_feature_composes_with_crossgate(feature, order, reference):
    ref_plain, ref_gated = reference
    pipe = tiny_sd_pipeline()
    if order == "feature first":
        _enable(pipe, feature)
        crossgate.apply(pipe, gate_step=GATE)
    else:
        crossgate.apply(pipe, gate_step=GATE)
        _enable(pipe, feature)
    gated = run(pipe)
    stats = crossgate.last_call(pipe)
    assert set(stats.cross_attention_computed_steps.values()) == {GATE}
    assert stats.denoiser_batches == [2] * GATE + [1] * (STEPS - GATE)

    crossgate.remove(pipe)
    plain = run(pipe)  # the feature alone
    manual = ManualTGate(pipe.unet, GATE, cfg=True)
    try:
        expected = run(pipe)
    finally:
        manual.close()
    assert torch.equal(gated, expected)
    assert torch.equal(run(pipe), plain), "remove() leaves the feature's plain pipeline"
    if feature in EXACT:
        assert torch.equal(gated, ref_gated) and torch.equal(plain, ref_plain)
    else:
        own_error = (plain - ref_plain).abs().max()
        assert (gated - ref_gated).abs().max() <= 2 * own_error + 1e-4
