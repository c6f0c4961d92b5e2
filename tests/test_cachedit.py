"""cache-dit (PyPI ``cache-dit``, the ``cachedit`` extra) stacked with crossgate, in both orders.

cache-dit's DBCache (F1B0 here: the first block always computes, the rest are skipped while the first
block's residual changes little) keeps its buffers per CFG branch and compares shapes before reusing:
on a batched-CFG pipeline the first step after the gate sees the halved batch, finds no match and
computes in full, refilling its buffers at the new batch. So the two stack:

* gate past the end (``gate_step >= steps``): the output is cache-dit alone exactly;
* gate active: repeated calls identical (no stale state), the denoiser batches crossgate promises;
  with cache-dit set never to reuse (threshold 0: every block computes, through cache-dit's own block
  loop) the output equals crossgate alone within 1e-5, so what cache-dit adds is only its reuse;
* ``remove()`` gives back cache-dit alone exactly, ``cache_dit.disable_cache`` the plain pipeline.

cache-dit itself refuses a UNet pipeline (it has no DiT block list): recorded.
The executed block rows and MACs per combination are in docs/accelerators.md.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from families import pixart_alpha, sd
from joint_cases import JOINT_CASES
from sequential_cases import wan_t2v

cache_dit = pytest.importorskip(
    "cache_dit", reason="cache-dit is not installed (pip install crossgate[cachedit])"
)

GATE = 2
JOINT = {"sd3": "SD3", "flux": "FLUX.1"}  # FLUX.1 with true CFG: two named calls per step
FAMILIES = ["wan", "pixart"]


class Family:
    def __init__(self, name: str) -> None:
        if name == "wan":
            case = wan_t2v()
            self.pipe, self.kwargs, self.steps = case.pipe, case.kwargs, case.steps
            self.model, self.out = case.pipe.transformer, "frames"
            self.feed_forwards = [block.ffn for block in self.model.blocks]
        elif name in JOINT:  # joint attention: the text-stream freeze under cache-dit's block loop
            joint = JOINT_CASES[JOINT[name]]
            self.pipe, self.steps, self.out = joint.build(), 5, "images"
            self.kwargs = {"prompt": "a red circle", "height": 32, "width": 32, "max_sequence_length": 16}
            self.kwargs.update(joint.call)
            self.model = self.pipe.transformer
            self.feed_forwards = [block.ff for block in self.model.transformer_blocks]
            self.feed_forwards += [
                block.proj_mlp for block in getattr(self.model, "single_transformer_blocks", [])
            ]
        else:
            case = pixart_alpha()
            self.pipe, self.kwargs, self.steps = case.pipe, case.kwargs, 4
            self.model, self.out = case.pipe.transformer, "images"
            self.feed_forwards = [block.ff for block in self.model.transformer_blocks]
        self.sequential = name in ("wan", "flux")

    def __call__(self, seed: int = 0, **overrides) -> torch.Tensor:
        kwargs = dict(self.kwargs, num_inference_steps=self.steps, output_type="latent", **overrides)
        out = self.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed))
        return getattr(out, self.out)

    def enable_cache(self, threshold: float = 0.5) -> None:
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=0,
            residual_diff_threshold=threshold,
            max_warmup_steps=1,
            num_inference_steps=self.steps,
        )
        cache_dit.enable_cache(self.pipe, cache_config=config)

    def expected_batches(self, first: torch.Tensor) -> list[int]:
        if self.sequential:
            return [1] * (2 * GATE + self.steps - GATE)
        full = 2 * first.shape[0]
        return [full] * GATE + [full // 2] * (self.steps - GATE)


def _quiet():
    cache_dit.disable_print() if hasattr(cache_dit, "disable_print") else None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("order", ["cache-dit-first", "crossgate-first"])
def test_stacks_with_cache_dit(family, order):
    f = Family(family)
    plain = f()
    if order == "crossgate-first":
        crossgate.apply(f.pipe, gate_step=f.steps)
    f.enable_cache()
    crossgate.apply(f.pipe, gate_step=f.steps)  # past the end
    past_end = f()

    crossgate.apply(f.pipe, gate_step=GATE)
    first = f()
    f(seed=1, prompt="a blue square")
    assert torch.equal(f(), first)
    assert crossgate.last_call(f.pipe).denoiser_batches == f.expected_batches(first)

    crossgate.remove(f.pipe)
    cache_alone = f()
    assert torch.equal(past_end, cache_alone)
    assert torch.isfinite(first).all() and not torch.equal(first, cache_alone)
    cache_dit.disable_cache(f.pipe)
    assert torch.equal(f(), plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_dit_never_reusing_adds_nothing_to_crossgate(family):
    """The stacked output checked against crossgate alone: with cache-dit computing every block
    (threshold 0) through its own block loop, the stack is crossgate's output."""
    f = Family(family)
    with crossgate.enabled(f.pipe, gate_step=GATE):
        crossgate_alone = f()
    f.enable_cache(threshold=0.0)
    with crossgate.enabled(f.pipe, gate_step=GATE):
        stacked = f()
    torch.testing.assert_close(stacked, crossgate_alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(JOINT))
def test_joint_attention_with_cache_dit_is_refused_before_anything_runs(family):
    """A skipped block at the step before the gate would leave its text stream uncaptured mid-call:
    refused at apply() (cache-dit first) or when the call starts (crossgate first), naming cache-dit;
    the pipeline stays usable."""
    f = Family(family)
    f.enable_cache()
    cache_alone = f()
    with pytest.raises(crossgate.UnsupportedPipelineError, match="cache-dit"):
        crossgate.apply(f.pipe, gate_step=GATE)
    assert not crossgate.is_applied(f.pipe) and torch.equal(f(), cache_alone)
    cache_dit.disable_cache(f.pipe)
    plain = f()
    crossgate.apply(f.pipe, gate_step=GATE)  # crossgate first, cache-dit after
    f.enable_cache()
    with pytest.raises(crossgate.UnsupportedPipelineError, match="cache-dit"):
        f()
    crossgate.remove(f.pipe)
    cache_dit.disable_cache(f.pipe)
    assert torch.equal(f(), plain)


def test_cache_dit_refuses_a_unet_pipeline():
    case = sd()
    with pytest.raises(ValueError, match="not officially supported by cache-dit"):
        cache_dit.enable_cache(
            case.pipe, cache_config=cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0)
        )
    with crossgate.enabled(case.pipe, gate_step=GATE):  # crossgate is unaffected
        case.pipe(**case.kwargs, num_inference_steps=4, output_type="latent")


class BlockRows:
    """Rows (samples) through each block's feed-forward: it runs only when the block really computes."""

    def __init__(self, modules) -> None:
        self.rows = 0
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, _module, args) -> None:
        self.rows += args[0].shape[0]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure(f: Family) -> tuple[int, int]:
    from crossgate.tools.accounting.meter import CallMeter

    rows = BlockRows(f.feed_forwards)
    try:
        with CallMeter(f.pipe) as meter:
            f()
    finally:
        rows.close()
    return rows.rows, meter.denoiser_executed


def table(family: str) -> dict[str, tuple[int, int]]:
    """Executed block rows and denoiser MACs: plain, crossgate, cache-dit, both (docs/accelerators.md)."""
    f = Family(family)
    result = {"plain": measure(f)}
    with crossgate.enabled(f.pipe, gate_step=GATE):
        result["crossgate"] = measure(f)
    f.enable_cache()
    result["cache-dit"] = measure(f)
    with crossgate.enabled(f.pipe, gate_step=GATE):
        result["cache-dit + crossgate"] = measure(f)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_savings_stack(family):
    t = table(family)
    assert t["cache-dit + crossgate"][0] < t["cache-dit"][0] < t["plain"][0]
    assert t["cache-dit + crossgate"][1] < t["cache-dit"][1] < t["plain"][1]
    assert t["cache-dit + crossgate"][1] <= t["crossgate"][1]


if __name__ == "__main__":  # the table in docs/accelerators.md
    _quiet()
    for name in FAMILIES:
        rows = table(name)
        for combination, (blocks, macs) in rows.items():
            print(f"| {name} | {combination} | {blocks} | {macs:,} | {macs / rows['plain'][1]:.2f} |")
