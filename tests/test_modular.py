"""Modular Diffusers pipelines (crossgate.adapters.modular): the loop block's progress bar and the
guider's unnamed cond / uncond calls, followed without forking the loop.

For each case (tests/modular_cases.py: the modular pipeline built on a tiny classic pipeline's
components, so the two share every model):
1. the two plain pipelines agree (the comparison below means something);
2. gate >= steps is `torch.equal` to the plain modular pipeline;
3. after the gate one call per step computes (a module inside the denoiser counts real passes) and
   the text side computes nothing (cross-attention processors / text-side projections, counted);
4. modular + crossgate equals classic + crossgate (itself checked against independent references in
   test_families.py, test_sequential.py and test_joint.py): exactly where both run the same calls,
   within float32 reassociation where the classic pipeline batches [uncond; cond];
5. no state leaks between calls; `remove()` is exact.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from crossgate import UnsupportedPipelineError
from crossgate.adapters.modular import TWO_BRANCH_GUIDERS
from modular_cases import MODULAR_CASES, ModularCase


class PassLog:
    """What ran in each denoiser pass: real compute (``probe``) and text-side work (``text``).

    ``text`` counts forward calls of the joint blocks' text projections, or the attention processor
    calls (the real compute, not the module call crossgate stands in for) of the cross-attention
    modules.
    """

    def __init__(self, denoisers: list[torch.nn.Module], probe: str, text: str, joint: bool) -> None:
        self.passes: list[dict[str, int]] = []
        self._undo: list = []
        for denoiser in denoisers:
            self._undo.append(denoiser.register_forward_pre_hook(lambda *_: self.passes.append({})).remove)
            for name, module in denoiser.named_modules():
                if name == probe or name.endswith("." + probe):
                    self._undo.append(module.register_forward_hook(lambda *_: self._tick("probe")).remove)
                if name.endswith(text):
                    if joint:
                        self._undo.append(module.register_forward_hook(lambda *_: self._tick("text")).remove)
                    elif hasattr(module, "processor"):
                        self._count_processor(module)

    def _tick(self, what: str) -> None:
        self.passes[-1][what] = self.passes[-1].get(what, 0) + 1

    def _count_processor(self, module: torch.nn.Module) -> None:
        original = module.processor

        def processor(*args, **kwargs):
            self._tick("text")
            return original(*args, **kwargs)

        module.processor = processor
        self._undo.append(lambda: setattr(module, "processor", original))

    def count(self, what: str) -> list[int]:
        return [p.get(what, 0) for p in self.passes]

    def close(self) -> None:
        for undo in self._undo:
            undo()


def _denoisers(case: ModularCase) -> list[torch.nn.Module]:
    found = [getattr(case.modular, n, None) for n in ("unet", "transformer", "transformer_2")]
    return [d for d in found if isinstance(d, torch.nn.Module)]


@pytest.fixture(scope="module", params=list(MODULAR_CASES))
def case(request) -> ModularCase:
    spec = MODULAR_CASES[request.param]
    built = spec.build()
    assert type(built.modular).__name__ == spec.pipeline
    built.modular.set_progress_bar_config(disable=True)
    return built


def test_modular_pipeline_against_plain_and_classic(case):
    pipe = case.modular
    plain = case.run_modular()
    classic_plain = case.run_classic()
    assert plain.shape == classic_plain.shape
    assert (plain - classic_plain).abs().max() <= case.tolerance

    with crossgate.enabled(pipe, gate_step=case.steps):
        assert torch.equal(case.run_modular(), plain)

    crossgate.apply(pipe, gate_step=case.gate)
    log = PassLog(_denoisers(case), case.probe, case.text, case.joint)
    try:
        gated = case.run_modular()
    finally:
        log.close()
    stats = crossgate.last_call(pipe)
    assert stats.num_steps == case.steps and stats.gate == case.gate and stats.cfg is case.cfg
    branches = 2 if case.cfg else 1
    before, after = case.gate * branches, (case.steps - case.gate) * branches  # denoiser calls
    assert len(log.passes) == before + after
    assert stats.denoiser_batches == [1] * (before + case.steps - case.gate)
    # before the gate every call computes, text side included; after it only the cond call computes
    # (the uncond one is skipped), and nothing of the text side
    assert log.count("probe") == [1] * before + ([1, 0] if case.cfg else [1]) * (case.steps - case.gate)
    assert all(log.count("text")[:before]) and not any(log.count("text")[before:])
    assert not torch.equal(gated, plain)

    crossgate.apply(case.classic, gate_step=case.gate, **case.classic_config)
    try:
        classic_gated = case.run_classic()
    finally:
        crossgate.remove(case.classic)
    assert (gated - classic_gated).abs().max() <= case.tolerance

    case.run_modular(seed=1)  # another call in between leaves nothing behind
    assert torch.equal(case.run_modular(), gated)
    crossgate.remove(pipe)
    assert torch.equal(case.run_modular(), plain)
    assert not any("progress_bar" in block.__dict__ for block in _loop_blocks(pipe))


def _loop_blocks(pipe):
    from crossgate.pipeline import _loop_blocks

    return _loop_blocks(pipe)


@pytest.mark.parametrize("name", TWO_BRANCH_GUIDERS)
def test_followed_guiders_return_the_cond_prediction_when_both_branches_agree(name):
    """What the skipped uncond call relies on: the guider's combination of cond with itself is cond,
    at every step (no state carried from earlier steps), and it names the cond call first."""
    import diffusers.guiders

    guider = getattr(diffusers.guiders, name)(guidance_scale=5.0)
    torch.manual_seed(0)
    for step in range(4):
        guider.set_state(step=step, num_inference_steps=6, timestep=torch.tensor(900 - 100 * step))
        assert guider.num_conditions == 2
        guider.prepare_models(torch.nn.Identity())
        assert guider.is_conditional
        guider.prepare_models(torch.nn.Identity())
        assert not guider.is_conditional
        cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        if step >= 2:  # after "the gate": the uncond call hands back the cond prediction
            assert torch.equal(guider.forward(pred_cond=cond, pred_uncond=cond.clone()).pred, cond)
        else:
            assert not torch.equal(guider.forward(pred_cond=cond, pred_uncond=uncond).pred, cond)


@pytest.fixture(scope="module")
def sdxl_case() -> ModularCase:
    return MODULAR_CASES["SDXL modular"].build()


@pytest.mark.parametrize(
    "guider, match",
    [
        ("PerturbedAttentionGuidance", "3 predictions per step"),
        ("SkipLayerGuidance", "3 predictions per step"),
        ("APG momentum", "momentum"),
        ("CFG stop", "from 0.0 to 0.5"),
    ],
)
def test_a_guider_crossgate_cannot_follow_is_refused_before_anything_changes(sdxl_case, guider, match):
    from diffusers import AdaptiveProjectedGuidance, ClassifierFreeGuidance
    from diffusers.guiders import PerturbedAttentionGuidance, SkipLayerGuidance

    pipe = sdxl_case.modular
    plain = sdxl_case.run_modular()
    unet_class = type(pipe.unet)
    made = {
        "PerturbedAttentionGuidance": lambda: PerturbedAttentionGuidance(
            guidance_scale=5.0, perturbed_guidance_scale=2.0, perturbed_guidance_layers=[0]
        ),
        "SkipLayerGuidance": lambda: SkipLayerGuidance(guidance_scale=5.0, skip_layer_guidance_layers=[0]),
        "APG momentum": lambda: AdaptiveProjectedGuidance(
            guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5
        ),
        "CFG stop": lambda: ClassifierFreeGuidance(guidance_scale=5.0, stop=0.5),
    }[guider]()
    original = pipe.guider
    pipe.update_components(guider=made)
    try:
        with pytest.raises(UnsupportedPipelineError, match=match):
            crossgate.apply(pipe, gate_step=2)
        assert not crossgate.is_applied(pipe) and type(pipe.unet) is unet_class
        assert not any("progress_bar" in block.__dict__ for block in _loop_blocks(pipe))

        # swapped in after apply(): refused when the call starts, and the pipeline stays usable
        pipe.update_components(guider=original)
        crossgate.apply(pipe, gate_step=2)
        pipe.update_components(guider=made)
        with pytest.raises(UnsupportedPipelineError, match=match):
            sdxl_case.run_modular()
        pipe.update_components(guider=original)
        crossgate.remove(pipe)
        assert torch.equal(sdxl_case.run_modular(), plain)
    finally:
        pipe.update_components(guider=original)
        crossgate.remove(pipe)


def test_modular_and_classic_pipelines_sharing_a_denoiser_each_keep_their_own_gate(sdxl_case):
    """A modular pipeline built from a classic one's components shares its UNet; in either order of
    apply() each pipeline runs its own layout (classic: one batch halved; modular: the uncond call
    skipped) and its own gate."""
    case = sdxl_case
    for modular_gate, classic_gate, modular_first in ((4, 2, False), (2, 4, True)):
        order = [(case.modular, modular_gate, None), (case.classic, classic_gate, "cond")]
        for pipe, gate, inputs in order if modular_first else reversed(order):
            crossgate.apply(pipe, gate_step=gate, post_gate_inputs=inputs)
        try:
            modular, classic = case.run_modular(), case.run_classic()
            steps = case.steps
            assert crossgate.last_call(case.modular).denoiser_batches == [1] * (
                2 * modular_gate + steps - modular_gate
            )
            assert crossgate.last_call(case.classic).denoiser_batches == [2] * classic_gate + [1] * (
                steps - classic_gate
            )
        finally:
            crossgate.remove(case.modular)
            crossgate.remove(case.classic)
        with crossgate.enabled(case.modular, gate_step=modular_gate):
            assert torch.equal(case.run_modular(), modular)
        with crossgate.enabled(case.classic, gate_step=classic_gate, post_gate_inputs="cond"):
            assert torch.equal(case.run_classic(), classic)


def test_post_gate_inputs_uncond_is_refused_for_per_branch_cfg(sdxl_case):
    with pytest.raises(crossgate.ConfigError, match="post_gate_inputs='uncond'"):
        crossgate.apply(sdxl_case.modular, gate_step=2, post_gate_inputs="uncond")
    assert not crossgate.is_applied(sdxl_case.modular)


def test_other_modular_pipelines_are_refused_with_the_reason():
    from diffusers import ZImageModularPipeline

    from crossgate.adapters import support

    verdict = support.classify(ZImageModularPipeline)
    assert verdict is not None and verdict.status == support.REFUSED_STATUS
    assert "modular pipeline crossgate has not tested" in verdict.reason
