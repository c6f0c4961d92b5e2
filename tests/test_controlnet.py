"""ControlNets after the gate: batch B, cross-attention replayed, for single, Multi and guess mode.

Counted independently of crossgate: each ControlNet's batch by a plain forward pre-hook registered
after crossgate's (so it sees what the ControlNet really ran) and its cross-attention work by the
calls of each cross-attention layer's ``to_q``. Outputs are compared with the hand-patched reference
in tests/manual_tgate.py (ControlNets and UNet patched by hand) within the family tolerance.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import crossgate
from crossgate import testing as rp
from families import _controlnet, _image
from manual_tgate import ManualControlGate, ManualTGate
from test_families import controlnets

STEPS, GATE = 6, 3


def _pipe(xl: bool, nets: int):
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    base = rp.tiny_sdxl_pipeline() if xl else rp.tiny_sd_pipeline()
    cls = StableDiffusionXLControlNetPipeline if xl else StableDiffusionControlNetPipeline
    control = [_controlnet(base, seed=2 + k) for k in range(nets)]
    pipe = cls(**base.components, controlnet=control if nets > 1 else control[0])
    return rp.ready(pipe)


def _call(pipe, nets: int, guess_mode: bool = False, seed: int = 0, **extra):
    images = [_image(seed=k) for k in range(nets)]
    return pipe(
        prompt=["a red circle", "a blue square"],
        image=images if nets > 1 else images[0],
        num_inference_steps=STEPS,
        guess_mode=guess_mode,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed),
        **extra,
    ).images


class Watch:
    """Each ControlNet's batch per pass and the to_q calls of its cross-attention layers."""

    def __init__(self, nets: dict[str, torch.nn.Module]) -> None:
        self.batches: dict[str, list[int]] = {path: [] for path in nets}
        self.queries: Counter[str] = Counter()
        self._handles = []
        for path, net in nets.items():
            self._handles.append(net.register_forward_pre_hook(self._batch(path), with_kwargs=True))
            for name, module in net.named_modules():
                if name.endswith("attn2") and hasattr(module, "to_q"):
                    self._handles.append(module.to_q.register_forward_hook(self._query(f"{path}.{name}")))

    def _batch(self, path):
        def hook(module, args, kwargs):
            self.batches[path].append((args[0] if args else kwargs["sample"]).shape[0])

        return hook

    def _query(self, key):
        def hook(module, args, output):
            self.queries[key] += 1

        return hook

    def close(self):
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize(
    "xl,nets,guess_mode",
    [(False, 1, False), (False, 2, False), (True, 2, False), (False, 1, True), (True, 1, True)],
    ids=["sd", "sd-multi", "sdxl-multi", "sd-guess", "sdxl-guess"],
)
def test_controlnet_runs_one_half_after_the_gate(xl, nets, guess_mode):
    pipe = _pipe(xl, nets)
    plain = _call(pipe, nets, guess_mode)
    found = controlnets(pipe)
    assert len(found) == nets

    with crossgate.enabled(pipe, gate_step=STEPS):
        assert torch.equal(_call(pipe, nets, guess_mode), plain)

    crossgate.apply(pipe, gate_step=GATE)
    watch = Watch(found)
    try:
        gated = _call(pipe, nets, guess_mode)
    finally:
        watch.close()
    stats = crossgate.last_call(pipe)
    full, half = 4, 2  # two prompts under CFG
    expected = [half] * STEPS if guess_mode else [full] * GATE + [half] * (STEPS - GATE)
    assert watch.batches == {path: expected for path in found}
    assert stats.control_batches == watch.batches
    assert stats.denoiser_batches == [full] * GATE + [half] * (STEPS - GATE)
    assert watch.queries and set(watch.queries.values()) == {GATE}  # cross-attention only before the gate
    for key in watch.queries:
        assert stats.cross_attention_computed_steps[key] == GATE
        assert stats.cross_attention_replays[key] == STEPS - GATE
    crossgate.remove(pipe)

    manuals = [ManualTGate(pipe.unet, GATE, True, guess_mode=guess_mode)]
    manuals += [ManualControlGate(n, GATE, True, "uncond", guess_mode) for n in found.values()]
    try:
        expected_out = _call(pipe, nets, guess_mode)
    finally:
        for manual in manuals:
            manual.close()
    torch.testing.assert_close(gated, expected_out, atol=1e-4, rtol=1e-5)

    crossgate.apply(pipe, gate_step=GATE)
    _call(pipe, nets, guess_mode, seed=1)
    assert torch.equal(_call(pipe, nets, guess_mode), gated)  # no leakage
    crossgate.remove(pipe)
    assert torch.equal(_call(pipe, nets, guess_mode), plain)


def test_guess_mode_keeps_the_control_after_the_gate():
    """The uncond half of a guess-mode ControlNet's residuals is zeros; the UNet must not take it."""
    pipe = _pipe(xl=False, nets=1)
    seen: list[torch.Tensor] = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["mid_block_additional_residual"]), with_kwargs=True
    )
    try:
        crossgate.apply(pipe, gate_step=GATE)
        with_control = _call(pipe, 1, guess_mode=True)
        without = _call(pipe, 1, guess_mode=True, controlnet_conditioning_scale=0.0)
    finally:
        handle.remove()
        crossgate.remove(pipe)
    after_gate = seen[GATE:STEPS]
    assert all(t.shape[0] == 2 and t.abs().sum() > 0 for t in after_gate)
    assert not torch.equal(with_control, without)


def test_controlnet_shared_with_a_plain_pipeline():
    """from_pipe shares the ControlNet: the gated pipeline's hooks leave the plain one's passes alone."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = _pipe(xl=False, nets=1)
    twin = StableDiffusionControlNetPipeline.from_pipe(pipe)
    rp.ready(twin)
    assert twin.controlnet is pipe.controlnet
    plain = _call(twin, 1)
    crossgate.apply(pipe, gate_step=GATE)
    gated = _call(pipe, 1)
    assert torch.equal(_call(twin, 1), plain)
    assert crossgate.last_call(twin) is None
    assert crossgate.last_call(pipe).control_batches["controlnet"] == [4] * GATE + [2] * (STEPS - GATE)
    crossgate.remove(pipe)
    assert not torch.equal(gated, plain)
    assert "_crossgate_installation" not in pipe.controlnet.__dict__


def test_replaced_controlnet_is_rehooked():
    pipe = _pipe(xl=False, nets=1)
    crossgate.apply(pipe, gate_step=GATE)
    old = pipe.controlnet
    pipe.controlnet = _controlnet(rp.tiny_sd_pipeline(seed=1))
    _call(pipe, 1)
    assert crossgate.last_call(pipe).control_batches["controlnet"][-1] == 2
    assert "_crossgate_installation" not in old.__dict__
    assert "_crossgate_installation" in pipe.controlnet.__dict__
    crossgate.remove(pipe)
    assert "_crossgate_installation" not in pipe.controlnet.__dict__


def test_multi_controlnet_union():
    """SDXL ControlNet-Union with two union nets (MultiControlNetUnionModel): both gated like the UNet."""
    import copy

    from diffusers import StableDiffusionXLControlNetUnionPipeline

    from families import sdxl_controlnet_union

    base = sdxl_controlnet_union().pipe
    second = copy.deepcopy(base.controlnet)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    pipe = rp.ready(
        StableDiffusionXLControlNetUnionPipeline(
            **{**base.components, "controlnet": [base.controlnet, second]}
        )
    )
    kwargs = {
        "prompt": "a red circle",
        "control_image": [_image(), _image(seed=3)],
        "control_mode": [1, 2],
        "height": 32,
        "width": 32,
        "num_inference_steps": STEPS,
        "output_type": "latent",
    }

    def run():
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0)).images

    plain = run()
    found = controlnets(pipe)
    assert type(pipe.controlnet).__name__ == "MultiControlNetUnionModel" and len(found) == 2
    crossgate.apply(pipe, gate_step=GATE)
    watch = Watch(found)
    try:
        gated = run()
    finally:
        watch.close()
    assert watch.batches == {path: [2] * GATE + [1] * (STEPS - GATE) for path in found}
    assert set(watch.queries.values()) == {GATE}
    crossgate.remove(pipe)
    manuals = [ManualTGate(pipe.unet, GATE, True)]
    manuals += [ManualControlGate(n, GATE, True, "uncond", False) for n in found.values()]
    try:
        expected = run()
    finally:
        for manual in manuals:
            manual.close()
    torch.testing.assert_close(gated, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(run(), plain)


def test_auto_gate_watches_the_denoiser_only():
    """The auto rule's statistic is the UNet's layers (its tolerance is calibrated on them).

    With conditioning scale 0 the ControlNet adds exact zeros, so the UNet computes what the plain SD
    pipeline built from the same parts computes: the convergence curves must be equal.
    """
    from diffusers import StableDiffusionPipeline

    pipe = _pipe(xl=False, nets=1)
    sd = rp.ready(StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "controlnet"}))
    curves = []
    for target, extra in ((pipe, {"image": _image(), "controlnet_conditioning_scale": 0.0}), (sd, {})):
        crossgate.apply(target, gate_step="auto")
        target(
            prompt=["a red circle", "a blue square"],
            num_inference_steps=STEPS,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(0),
            **extra,
        )
        curves.append(crossgate.last_call(target).convergence)
        crossgate.remove(target)
    assert curves[0] and curves[0] == curves[1]
