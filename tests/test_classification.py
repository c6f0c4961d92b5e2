"""Every pipeline class the installed diffusers exports is classified, and `apply()` obeys the table.

The table is crossgate/adapters/support.py. A diffusers release that adds a class nobody has
classified fails `test_every_exported_pipeline_is_classified`; a class marked supported must name a
tests/families.py case that builds it; every other class is refused at `apply()` with its reason,
before anything on the pipeline is touched.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import typing
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

import crossgate
from crossgate.adapters import cross_attention_modules, support
from crossgate.adapters.registry import batches_more_than_two_branches, calls_denoiser_per_cfg_branch
from crossgate.adapters.sequential import SEQUENTIAL_ADAPTERS, names_cfg_branches, per_branch_refusal
from crossgate.hooks import hooked
from crossgate.testing import tiny_sd_pipeline
from families import CASES
from joint_cases import JOINT_CASES


def _exported_pipeline_names() -> list[str]:
    """Every name diffusers exports that is a pipeline class: each ``DiffusionPipeline`` subclass whatever
    its name, and (modular pipelines, placeholders for missing backends) each name ending in "Pipeline".
    Found here by itself, not with crossgate's own finder (``support.exported_pipelines``)."""
    names = []
    for name in dir(diffusers):
        if name.startswith("_"):
            continue
        obj = getattr(diffusers, name)
        if name.endswith("Pipeline") or (isinstance(obj, type) and issubclass(obj, DiffusionPipeline)):
            names.append(name)
    return sorted(names)


EXPORTED = _exported_pipeline_names()
BUCKETS = {
    "supported": set(support.SUPPORTED),
    "sequential CFG": set(support.SEQUENTIAL_CFG),
    "refused": set(support.REFUSED),
    "not applicable": set(support.NOT_APPLICABLE),
}


def _cls(name: str) -> type:
    return getattr(diffusers, name)  # resolves diffusers' lazy import


def _classification_counts() -> dict[str, int]:
    spec = importlib.util.spec_from_file_location(
        "support_matrix", Path(__file__).resolve().parents[1] / "scripts" / "support_matrix.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.classification_counts()


def test_every_exported_pipeline_is_classified():
    """Classified as itself: a class whose name does not end in "Pipeline" used to resolve to its base,
    ``DiffusionPipeline``, and be told it is "a custom pipeline" (StableDiffusionPipelineSafe)."""
    unclassified = [
        n
        for n in EXPORTED
        if "not in crossgate's classification" in (support.classify(_cls(n)) or _none()).reason
        or support.classify(_cls(n)).name != _cls(n).__name__
    ]
    assert not unclassified, (
        f"diffusers {diffusers.__version__} exports pipelines nobody has classified: {unclassified}; add each "
        "to crossgate/adapters/support.py (supported with a tests/families.py case, refused with the "
        "reason, or not applicable)"
    )
    if diffusers.__version__ == support.CLASSIFIED_FOR:
        named = set().union(*BUCKETS.values())
        assert named == set(EXPORTED) - {n for n in EXPORTED if _is_modular(_cls(n))}, (
            f"classified but not exported by diffusers {diffusers.__version__}: {sorted(named - set(EXPORTED))}"
        )


def _none() -> support.Verdict:
    return support.Verdict("", "", "not in crossgate's classification")


def _is_modular(cls: type) -> bool:
    return any(c.__name__ == "ModularPipeline" for c in cls.__mro__)


def test_crossgates_finder_sees_every_exported_pipeline_class():
    assert sorted(support.exported_pipelines()) == EXPORTED
    assert {"StableDiffusionPipelineSafe", "LEditsPPPipelineStableDiffusion", "SanaWMLTX2Refiner"} <= set(
        EXPORTED
    )


def test_buckets_are_disjoint_and_counts_add_up():
    names = [n for bucket in BUCKETS.values() for n in bucket]
    assert len(names) == len(set(names)), "a class is in two buckets"
    counts = _classification_counts()
    assert sum(counts.values()) == len(EXPORTED)
    assert counts["supported"] >= len(support.SUPPORTED)


def test_every_supported_class_has_a_family_case_that_builds_it():
    for name, entry in support.SUPPORTED.items():
        cases = JOINT_CASES if entry.adapter.joint else CASES
        assert entry.case in cases, f"{name}: no tests/families.py (joint_cases.py) case {entry.case!r}"
        assert cases[entry.case].pipeline == name
    for case, spec in [*CASES.items(), *JOINT_CASES.items()]:
        verdict = support.classify(_cls(spec.pipeline))
        assert verdict is not None and verdict.status == support.SUPPORTED_STATUS, (
            f"case {case!r} tests {spec.pipeline}, which the classification does not support"
        )


def test_every_supported_modular_class_has_a_modular_case_that_builds_it():
    from modular_cases import MODULAR_CASES

    cased = {spec.pipeline for spec in MODULAR_CASES.values()}
    assert cased == set(support.MODULAR)
    for name in support.MODULAR:
        verdict = support.classify(_cls(name))
        assert verdict is not None and verdict.status == support.SUPPORTED_STATUS
        assert verdict.adapter is support.MODULAR[name] and verdict.adapter.modular


def test_sequential_family_status_comes_from_the_sequential_module():
    assert set(SEQUENTIAL_ADAPTERS) <= set(support.SEQUENTIAL_CFG)
    for name in support.SEQUENTIAL_CFG:
        cls = _cls(name)
        assert calls_denoiser_per_cfg_branch(cls, "transformer"), f"{name} does not call per CFG branch"
        verdict = support.classify(cls)
        if name in SEQUENTIAL_ADAPTERS:
            assert verdict.status == support.SUPPORTED_STATUS and verdict.adapter is SEQUENTIAL_ADAPTERS[name]
        else:
            assert verdict.status == support.REFUSED_STATUS and verdict.reason == per_branch_refusal(cls)


def test_no_supported_batched_class_calls_its_denoiser_per_branch():
    for name, entry in support.SUPPORTED.items():
        if entry.adapter.cfg_layout == "sequential" and entry.adapter.branch_order:
            # unnamed calls: the adapter's order must be the loop's (cond call first, then uncond)
            if calls_denoiser_per_cfg_branch(_cls(name), entry.adapter.denoiser_attr):
                source = inspect.getsource(_cls(name).__call__)
                calls = re.findall(r"(\w+)\s*=\s*self\.transformer\(", source)  # in source order
                assert entry.adapter.branch_order == ("cond", "uncond"), name
                assert calls[0] in ("noise_pred", "noise_pred_cond"), (name, calls)  # Lumina2: _cond
                assert "neg" in calls[1] or "uncond" in calls[1], (name, calls)
            continue
        if entry.adapter.cfg_layout == "sequential":
            assert names_cfg_branches(_cls(name)), name
            continue
        if calls_denoiser_per_cfg_branch(_cls(name), entry.adapter.denoiser_attr):
            # SD3's second call is skip-layer guidance, which crossgate runs as a plain pass
            assert entry.adapter.joint and "skip_layers=" in inspect.getsource(_cls(name).__call__), name


@pytest.mark.parametrize("name", [n for n in EXPORTED if support.classify(_cls(n)).status != "supported"])
def test_unsupported_class_is_refused_at_apply_with_its_reason(name):
    cls = _cls(name)
    pipe = cls.__new__(cls)  # no weights, no __init__: the refusal must come from the class alone
    verdict = support.classify(cls)
    with pytest.raises(crossgate.UnsupportedPipelineError) as error:
        crossgate.apply(pipe, gate_step=2)
    assert support.refusal(cls, verdict) == str(error.value)
    assert not crossgate.is_applied(pipe) and "progress_bar" not in vars(pipe)


def _denoiser_types(cls: type) -> list[type] | None:
    """The model classes ``cls.__init__`` annotates for its ``unet`` / ``transformer``, or None."""
    params = inspect.signature(cls.__init__).parameters
    for attr in ("unet", "transformer"):
        if attr in params:
            hint = typing.get_type_hints(cls.__init__).get(attr)
            return [t for t in (typing.get_args(hint) or (hint,)) if isinstance(t, type)]
    return None


# Denoisers whose default config does not build (they need sizes); their claim is checked by reading.
_NO_DEFAULT_BUILD = {
    "EasyAnimateTransformer3DModel",
    "HiDreamImageTransformer2DModel",
    "OmniGenTransformer2DModel",
    "UniDiffuserModel",
}


def test_not_applicable_claims_hold():
    """ "No cross-attention": the denoiser, built on the meta device, has none. "No denoiser": the
    class takes no `unet` / `transformer`."""
    built: dict[type, bool] = {}
    for name, reason in support.NOT_APPLICABLE.items():
        cls = getattr(diffusers, name, None)
        if cls is None or "dummy" in cls.__module__ or name == "DiffusionPipeline":
            continue  # not installed here (ONNX, note-seq, opencv extras), or the base class
        types = _denoiser_types(cls)
        if (
            reason == support.NOT_APPLICABLE["MochiPipeline"]
            or reason == support.NOT_APPLICABLE["DDPMPipeline"]
        ):
            assert types, f"{name}: expected a unet/transformer to inspect"
            for model_cls in types:
                if model_cls not in built:
                    try:
                        with torch.device("meta"):
                            model = model_cls()
                    except Exception:
                        assert model_cls.__name__ in _NO_DEFAULT_BUILD, (
                            f"{name}: {model_cls.__name__} did not build"
                        )
                        built[model_cls] = False
                        continue
                    built[model_cls] = bool(cross_attention_modules(model))
                assert not built.get(model_cls, False), f"{name}: {model_cls.__name__} has cross-attention"
        elif reason == support.NOT_APPLICABLE["KandinskyPriorPipeline"]:
            assert types is None, f"{name} takes a unet/transformer"


def test_pag_and_three_way_batches_are_refused_before_anything_changes():
    """PAG ([uncond, cond, perturbed]) and InstructPix2Pix ([text+image, image, none]) used to reach
    the gate and raise mid-call; they are refused at apply() and keep working plainly."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPAGPipeline

    parts = {k: v for k, v in tiny_sd_pipeline().components.items() if k != "image_encoder"}
    pag = StableDiffusionPAGPipeline(**parts, pag_applied_layers=["mid"])
    pag.set_progress_bar_config(disable=True)
    ip2p = StableDiffusionInstructPix2PixPipeline(**{**parts, "unet": tiny_sd_pipeline(in_channels=8).unet})
    ip2p.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    for pipe, kwargs, match in (
        (pag, {"pag_scale": 2.0}, "perturbed-attention guidance"),
        (ip2p, {"image": image}, "three guidance branches"),
    ):
        generator = torch.Generator().manual_seed(0)
        plain = pipe(
            "a red circle", num_inference_steps=3, output_type="latent", generator=generator, **kwargs
        )
        with pytest.raises(crossgate.UnsupportedPipelineError, match=match):
            crossgate.apply(pipe, gate_step=2)
        assert not crossgate.is_applied(pipe) and "progress_bar" not in vars(pipe)
        assert not any(hooked(m) for m in pipe.unet.modules())
        generator = torch.Generator().manual_seed(0)
        again = pipe(
            "a red circle", num_inference_steps=3, output_type="latent", generator=generator, **kwargs
        )
        assert torch.equal(again.images, plain.images)


def test_subclasses_keep_their_parents_verdict_unless_they_override_call(monkeypatch):
    monkeypatch.setattr(support, "_ALLOWED", set())

    class Plain(StableDiffusionPipeline):  # no __call__ of its own: the tested loop runs
        pass

    class Custom(StableDiffusionPipeline):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    components = tiny_sd_pipeline().components
    crossgate.apply(Plain(**components), gate_step=2)
    custom = Custom(**components)
    custom.set_progress_bar_config(disable=True)
    with pytest.raises(
        crossgate.UnsupportedPipelineError, match=r"Custom overrides StableDiffusionPipeline.__call__"
    ):
        crossgate.apply(custom, gate_step=2)
    support.allow_untested(Custom)  # the user vouches for its loop
    crossgate.apply(custom, gate_step=2)
    custom("a red circle", num_inference_steps=4, output_type="latent")
    stats = crossgate.last_call(custom)
    assert stats.engaged and stats.denoiser_batches == [2, 2, 1, 1]


def test_allow_untested_admits_untested_classes_only(monkeypatch):
    monkeypatch.setattr(support, "_ALLOWED", set())
    with pytest.raises(crossgate.UnsupportedPipelineError, match="perturbed-attention"):
        support.allow_untested(diffusers.StableDiffusionPAGPipeline)
    with pytest.raises(crossgate.UnsupportedPipelineError, match="joint"):
        support.allow_untested(diffusers.MochiPipeline)
    untested = _cls(sorted(support.UNTESTED)[0])
    assert support.allow_untested(untested) is untested and support.is_allowed(untested)


def test_custom_and_unclassified_pipelines_are_refused():
    class MyPipeline(DiffusionPipeline):
        def __call__(self):
            return None

    with pytest.raises(
        crossgate.UnsupportedPipelineError, match="custom pipeline deriving from DiffusionPipeline"
    ):
        crossgate.apply(MyPipeline(), gate_step=2)

    # what a newer diffusers release adding a class looks like to the classification
    brand_new = type(
        "BrandNewPipeline", (DiffusionPipeline,), {"__module__": "diffusers.pipelines.brand_new"}
    )
    verdict = support.classify(brand_new)
    assert verdict.status == support.REFUSED_STATUS and "not in crossgate's classification" in verdict.reason
    with pytest.raises(crossgate.UnsupportedPipelineError, match="not in crossgate's classification"):
        crossgate.apply(brand_new.__new__(brand_new), gate_step=2)


def test_added_kv_attention_mixes_self_and_cross_attention():
    """Why DeepFloyd IF and Kandinsky 2.x are refused: their `SimpleCrossAttn` layers (the ones
    crossgate would cache) project the latents into keys and values next to the conditioning."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=32,
        encoder_hid_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    layers = cross_attention_modules(unet)
    assert layers and all(m.added_kv_proj_dim and not m.only_cross_attention for _, m in layers)
    assert all(
        support.classify(_cls(n)).reason == support.REFUSED["IFPipeline"]
        for n in ("IFPipeline", "KandinskyV22Pipeline", "KandinskyPipeline")
    )


# ---------------------------------------------------------------- verdicts pinned, reasons checkable

_SUPPORTED, _REFUSED, _NA = support.SUPPORTED_STATUS, support.REFUSED_STATUS, support.NOT_APPLICABLE_STATUS
_KANDINSKY_COMBINED = (
    "KandinskyCombinedPipeline",
    "KandinskyImg2ImgCombinedPipeline",
    "KandinskyInpaintCombinedPipeline",
    "KandinskyV22CombinedPipeline",
    "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintCombinedPipeline",
)
_VERSATILE = (
    "VersatileDiffusionPipeline",
    "VersatileDiffusionTextToImagePipeline",
    "VersatileDiffusionDualGuidedPipeline",
    "VersatileDiffusionImageVariationPipeline",
)
# class -> (status, a key phrase of the reason, whether allow_untested may admit it)
PINNED: dict[str, tuple[str, str, bool]] = {
    "LEditsPPPipelineStableDiffusion": (_REFUSED, "one branch per editing prompt", False),
    "LEditsPPPipelineStableDiffusionXL": (_REFUSED, "one branch per editing prompt", False),
    "SanaWMLTX2Refiner": (_REFUSED, "its progress bar counts blocks", False),
    "StableDiffusionInpaintPipelineLegacy": (_REFUSED, "StableDiffusionInpaintPipeline (supported)", True),
    "StableDiffusionPipelineSafe": (_REFUSED, "three branches [uncond, cond, safety concept]", False),
    "PRXPipeline": (_NA, "concatenates the text and image keys", False),
    "PRXPixelPipeline": (_NA, "concatenates the text and image keys", False),
    **dict.fromkeys(_KANDINSKY_COMBINED, (_REFUSED, "neither can be gated", False)),
    "VersatileDiffusionPipeline": (_REFUSED, "temporary pipeline it builds per call", False),
    "VersatileDiffusionTextToImagePipeline": (_REFUSED, "`_swap_unet_attention_blocks`", False),
    "VersatileDiffusionDualGuidedPipeline": (_REFUSED, "`DualTransformer2DModel`", False),
    "VersatileDiffusionImageVariationPipeline": (_REFUSED, "denoiser `image_unet`", False),
    "DreamLitePipeline": (_REFUSED, "[uncond, image only, text+image] in edit mode", False),
    "StableDiffusionDiffEditPipeline": (
        _REFUSED,
        "before the editing call. Its denoising loop has cross-attention",
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_verdicts(name, monkeypatch):
    monkeypatch.setattr(support, "_ALLOWED", set())
    status, phrase, admissible = PINNED[name]
    cls = _cls(name)
    verdict = support.classify(cls)
    assert (verdict.name, verdict.status) == (name, status), verdict
    assert phrase in verdict.reason, verdict.reason
    if status == _REFUSED and admissible:
        assert support.allow_untested(cls) is cls
    else:
        with pytest.raises(crossgate.UnsupportedPipelineError):
            support.allow_untested(cls)


def test_reasons_read_as_sentences():
    """A reason is one or more whole sentences: DiffEdit's ran "...before the loop; has cross-attention"."""
    reasons = set(support.REFUSED.values()) | set(support.NOT_APPLICABLE.values())
    assert not [r for r in reasons if "; has cross-attention" in r or not r.rstrip(")").endswith(".")]


def _source(obj) -> str:
    return inspect.getsource(obj)


def test_reasons_hold_in_the_pipelines_source():
    """Each pinned reason names something the installed diffusers' source shows."""
    from diffusers.models.transformers.transformer_prx import PRXAttnProcessor2_0

    # PRX: the image queries attend to [text keys; image keys] at once (joint attention)
    assert "torch.cat((txt_k, img_k)" in _source(PRXAttnProcessor2_0)
    for name in ("PRXPipeline", "PRXPixelPipeline"):
        assert _denoiser_types(_cls(name))[0].__name__ == "PRXTransformer2DModel"
    # Safe Latent Diffusion: three-way batch while safety guidance is on (the default)
    safe = diffusers.StableDiffusionPipelineSafe
    assert "[latents] * (3 if enable_safety_guidance else 2)" in _source(safe.__call__)
    assert inspect.signature(safe.__call__).parameters["sld_guidance_scale"].default == 1000
    # LEDITS++: 1 + one branch per editing prompt, and an attention store
    for name in ("LEditsPPPipelineStableDiffusion", "LEditsPPPipelineStableDiffusionXL"):
        call = _source(_cls(name).__call__)
        assert "[latents] * (1 + self.enabled_editing_prompts)" in call and "LeditsAttentionStore" in call
    # SANA-WM refiner: the bar counts blocks, each with its own schedule
    refiner = _source(diffusers.SanaWMLTX2Refiner.__call__)
    assert "progress_bar(total=num_blocks)" in refiner and "self.scheduler.set_timesteps" in refiner
    # Inpaint legacy: deprecated in favour of the supported inpainting pipeline; a plain batched loop
    legacy = diffusers.StableDiffusionInpaintPipelineLegacy
    assert "`StableDiffusionInpaintPipeline` instead" in _source(legacy.__init__)
    assert "torch.cat([latents] * 2) if do_classifier_free_guidance" in _source(legacy.__call__)
    # DreamLite: two branches to generate, three to edit (an image is given)
    dreamlite = _source(diffusers.DreamLitePipeline.__call__)
    assert 'task = "generate" if image is None else "edit"' in dreamlite
    assert "torch.cat([latents] * 2)" in dreamlite and "torch.cat([latents] * 3)" in dreamlite
    # DiffEdit: inversion and mask are methods of their own, run before the editing call
    assert all(hasattr(diffusers.StableDiffusionDiffEditPipeline, m) for m in ("invert", "generate_mask"))
    # Versatile Diffusion: the denoiser is `image_unet`, rebuilt per task; the umbrella runs temporary pipelines
    for name in _VERSATILE[1:]:
        params = inspect.signature(_cls(name).__init__).parameters
        assert "image_unet" in params and "unet" not in params and "transformer" not in params
        assert "self.image_unet(" in _source(_cls(name).__call__)
    assert "_swap_unet_attention_blocks" in _source(diffusers.VersatileDiffusionTextToImagePipeline)
    assert "DualTransformer2DModel(" in _source(diffusers.VersatileDiffusionDualGuidedPipeline)
    assert "VersatileDiffusionTextToImagePipeline(**components)" in _source(
        diffusers.VersatileDiffusionPipeline
    )


@pytest.mark.parametrize("name", _KANDINSKY_COMBINED)
def test_combined_kandinsky_reason_leads_somewhere(name):
    """The reason used to send users to `pipe.decoder_pipe`, itself refused. Now: both stages are
    refused or not applicable (as the source builds them), and the alternative it names is supported."""
    init = _source(_cls(name).__init__)
    decoder = re.search(r"self\.decoder_pipe = (\w+)\(", init).group(1)
    prior = re.search(r"self\.prior_pipe = (\w+)\(", init).group(1)
    assert support.classify(_cls(decoder)).reason == support.REFUSED["KandinskyV22Pipeline"]
    assert support.classify(_cls(prior)).status == _NA
    reason = support.classify(_cls(name)).reason
    assert "apply crossgate to the decoder" not in reason
    assert support.classify(diffusers.Kandinsky3Pipeline).status == _SUPPORTED
    assert "Kandinsky3Pipeline (supported)" in reason


def test_more_than_two_branches_are_found_in_the_source():
    """The check before the call: every class that stacks three or more copies of the latents is found,
    and no supported class is."""
    for name in support.SUPPORTED:
        assert batches_more_than_two_branches(_cls(name)) is None, name
    for name in (
        "StableDiffusionPipelineSafe",
        "StableDiffusionInstructPix2PixPipeline",
        "StableDiffusionXLInstructPix2PixPipeline",
        "DreamLitePipeline",
        "LEditsPPPipelineStableDiffusion",
        "LEditsPPPipelineStableDiffusionXL",
        "SemanticStableDiffusionPipeline",
        "CycleDiffusionPipeline",
        *(n for n in support.REFUSED if support.REFUSED[n] == support.REFUSED["StableDiffusionPAGPipeline"]),
    ):
        assert batches_more_than_two_branches(_cls(name)), name


def test_the_opt_in_cannot_start_a_call_that_would_fail_midway(monkeypatch):
    """StableDiffusionPipelineSafe used to be "a custom pipeline": allow_untested() admitted it, apply()
    accepted it, and the call failed midway. Now the opt-in refuses it, and even a class admitted by
    hand (here Safe itself, and a custom pipeline whose loop batches three ways) is refused at apply()."""
    monkeypatch.setattr(support, "_ALLOWED", set())
    safe_cls = diffusers.StableDiffusionPipelineSafe
    with pytest.raises(crossgate.UnsupportedPipelineError, match="safety concept"):
        support.allow_untested(safe_cls)
    parts = tiny_sd_pipeline().components
    safe = safe_cls(
        **{k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with pytest.raises(crossgate.UnsupportedPipelineError, match="safety concept"):
        crossgate.apply(safe, gate_step=2)
    monkeypatch.setattr(support, "_ALLOWED", {safe_cls})  # as if the opt-in had let it through
    with pytest.raises(crossgate.UnsupportedPipelineError, match="more than the two CFG branches"):
        crossgate.apply(safe, gate_step=2)
    assert not crossgate.is_applied(safe) and "progress_bar" not in vars(safe)

    class ThreeWay(DiffusionPipeline):
        def __init__(self, unet):
            super().__init__()
            self.register_modules(unet=unet)

        def __call__(self, latents, embeds):
            with self.progress_bar(total=2) as bar:
                for t in range(2):
                    out = self.unet(torch.cat([latents] * 3), t, encoder_hidden_states=embeds).sample
                    latents = out.chunk(3)[0]
                    bar.update()
            return latents

    support.allow_untested(ThreeWay)  # a custom pipeline: the opt-in is for these
    pipe = ThreeWay(parts["unet"])
    with pytest.raises(crossgate.UnsupportedPipelineError, match=r"torch\.cat\(\[latents\] \* 3\)"):
        crossgate.apply(pipe, gate_step=1)
    assert not crossgate.is_applied(pipe)
