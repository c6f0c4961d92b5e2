"""Joint-attention TGATE (crossgate.joint): SD3 and FLUX.1 pipelines built tiny from configs.

Each case is checked like the cross-attention families: ``gate >= steps`` is bit-identical to plain;
after the gate the denoiser runs one branch and no text-side module runs (forward hooks on the real
modules); the output equals an independent reference (tests/reference_joint.py) within 1e-4; calls do
not leak into each other; ``remove()`` gives plain back bit for bit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import crossgate
from crossgate import ConfigError
from crossgate.joint import joint_blocks, kind_of, text_tokens
from joint_cases import JOINT_CASES, JointCase, _image
from reference_joint import JointReference

STEPS, GATE = 5, 2
TOLERANCE = (
    1e-4  # float32 on CPU: the reference concatenates and slices where crossgate runs image rows alone
)


def _run(pipe: Any, case: JointCase, **extra: Any) -> torch.Tensor:
    kwargs = {
        "prompt": "a red circle",
        "num_inference_steps": STEPS,
        "height": 32,
        "width": 32,
        "max_sequence_length": 16,
        "output_type": "latent",
        "generator": torch.Generator().manual_seed(0),
        **case.call,
        **extra,
    }
    return pipe(**kwargs)[0]  # images, or a video pipeline's frames


_TEXT_SIDE = (
    *("norm1_context", "norm2_context", "ff_context", "txt_mod", "txt_norm1", "txt_norm2", "txt_mlp"),
    *("norm1_t", "norm3_t", "ff_t"),  # HiDream
)
_TEXT_ATTN = (
    *("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_added_qkv"),
    *("to_q_t", "to_k_t", "to_v_t", "to_out_t", "q_rms_norm_t", "k_rms_norm_t"),  # HiDream
)


def _text_side_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    found = []
    for _, block, _kind in joint_blocks(transformer):
        if _kind.stream == "text":  # a block of the text alone (Lumina2's context refiner): all of it
            found += list(block.children())
        inner = getattr(block, "block", block)  # HiDream wraps each block
        found += [getattr(inner, n) for n in _TEXT_SIDE if getattr(inner, n, None) is not None]
        attn = _kind.attention(block)
        found += [getattr(attn, n) for n in _TEXT_ATTN if getattr(attn, n, None) is not None]
    return found


@pytest.fixture(scope="module", params=list(JOINT_CASES))
def case_and_plain(request):
    case = JOINT_CASES[request.param]
    pipe = case.build()
    return request.param, case, pipe, _run(pipe, case)


def test_gate_at_or_after_the_last_step_is_bit_identical_to_plain(case_and_plain):
    _, case, pipe, plain = case_and_plain
    with crossgate.enabled(pipe, gate_step=STEPS):
        assert torch.equal(_run(pipe, case), plain)
        assert not crossgate.last_call(pipe).text_stream_replays or not any(
            crossgate.last_call(pipe).text_stream_replays.values()
        )


def test_after_the_gate_one_branch_runs_and_no_text_side_module_runs(case_and_plain):
    _name, case, pipe, plain = case_and_plain
    calls = {"after": 0, "before": 0}
    state = {"after": False}

    def count(module, args, output):
        calls["after" if state["after"] else "before"] += 1

    def on_step_end(p, i, t, kwargs):
        state["after"] = i + 1 >= GATE
        return {}

    text_side = _text_side_modules(pipe.transformer)  # none in shared-weight blocks (CogVideoX)
    handles = [m.register_forward_hook(count) for m in text_side]
    # every joint attention's key projection must see the block's image rows only (shared-weight
    # single-stream blocks included): rows seen vs the image stream the block was handed
    rows: list[tuple[int, int]] = []
    image_rows: list[int] = [0]

    def block_input(module, args, kwargs):
        # [text; image] blocks: the double blocks' count holds (Lumina2, Z-Image: their image refiner's)
        kind = kind_of(module, names.get(id(module), ""))
        if kind is None or not kind.concatenated:
            image_rows[0] = (args[0] if args else kwargs["hidden_states"]).shape[1]

    names = {id(block): name for name, block, _ in joint_blocks(pipe.transformer)}

    def key_rows(module, args, output):
        if state["after"]:
            rows.append((args[0].shape[1], image_rows[0]))

    for _, block, kind in joint_blocks(pipe.transformer):
        if kind.stream != "text":
            handles.append(block.register_forward_pre_hook(block_input, with_kwargs=True))
        handles.append(kind.attention(block).to_k.register_forward_hook(key_rows))
    for block in getattr(pipe.transformer, "noise_refiner", []):  # Z-Image's is not gated: the image alone
        if id(block) not in names:
            handles.append(block.register_forward_pre_hook(block_input, with_kwargs=True))
    try:
        with crossgate.enabled(pipe, gate_step=GATE):
            gated = _run(pipe, case, callback_on_step_end=on_step_end)
            stats = crossgate.last_call(pipe)
    finally:
        for h in handles:
            h.remove()
    assert calls["after"] == 0 and (calls["before"] > 0 or not text_side), calls
    assert stats.cfg is case.cfg
    batch = 1
    if case.sequential:
        per_step = 2 if case.cfg else 1
        assert stats.denoiser_batches == [batch] * (GATE * per_step + (STEPS - GATE))
    elif not case.cfg:  # Z-Image-Turbo: one batch, no CFG to drop
        assert stats.denoiser_batches == [batch] * STEPS
    else:
        assert stats.denoiser_batches == [2 * batch] * GATE + [batch] * (STEPS - GATE)
    assert set(stats.text_stream_replays.values()) == {STEPS - GATE}
    assert rows and all(seen == image for seen, image in rows), rows
    assert not torch.equal(gated, plain)


@pytest.mark.parametrize("variant", ["frozen", "frozen_mean", "live", "keep_cfg"])
def test_equals_the_independent_reference(case_and_plain, variant):
    _name, case, pipe, plain = case_and_plain
    if variant in ("frozen_mean", "keep_cfg", "live") and not case.cfg:
        pytest.skip("one branch: frozen_mean and keep_cfg are the default, live is plain")
    config = {
        "text_stream": "frozen" if variant == "keep_cfg" else variant,
        "keep_cfg": variant == "keep_cfg",
    }
    if variant == "frozen_mean" and not case.mean:  # the branches' texts differ in length
        with pytest.raises(ConfigError, match="frozen_mean"):
            crossgate.apply(pipe, gate_step=GATE, **config)
        assert not crossgate.is_applied(pipe) and torch.equal(_run(pipe, case), plain)
        return
    with crossgate.enabled(pipe, gate_step=GATE, **config):
        gated = _run(pipe, case)
    reference = JointReference(
        pipe,
        GATE,
        text_first=case.text_first,
        sequential=case.sequential,
        mean=variant == "frozen_mean",
        live=variant == "live",
        keep_cfg=variant == "keep_cfg",
        text_output=case.text_output,
        named=case.named,
        cond_first=case.cond_first,
    )
    with reference:
        expected = _run(pipe, case, callback_on_step_end=reference.on_step_end)
    assert not torch.equal(expected, plain)
    torch.testing.assert_close(gated, expected, rtol=0, atol=TOLERANCE)


def test_calls_do_not_leak_and_remove_is_exact(case_and_plain):
    _, case, pipe, plain = case_and_plain
    crossgate.apply(pipe, gate_step=GATE)
    try:
        first = _run(pipe, case)
        other = _run(pipe, case, prompt="a green triangle")
        again = _run(pipe, case)
    finally:
        crossgate.remove(pipe)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(_run(pipe, case), plain)


def test_pipelines_sharing_a_transformer_stay_isolated():
    case = JOINT_CASES["SD3"]
    pipe = case.build()
    plain = _run(pipe, case)
    other = type(pipe)(**pipe.components)
    crossgate.apply(pipe, gate_step=GATE)
    try:
        gated = _run(pipe, case)
        assert torch.equal(_run(other, case), plain)  # the sibling is not gated
        assert torch.equal(_run(pipe, case), gated)
    finally:
        crossgate.remove(pipe)


def test_skip_layer_guidance_pass_runs_plain_beside_the_gate():
    case = JOINT_CASES["SD3"]
    pipe = case.build()
    slg = {"skip_guidance_layers": [0], "skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0}
    plain = _run(pipe, case, **slg)
    with crossgate.enabled(pipe, gate_step=STEPS):
        assert torch.equal(_run(pipe, case, **slg), plain)
    with crossgate.enabled(pipe, gate_step=GATE):
        gated = _run(pipe, case, **slg)
    assert torch.isfinite(gated).all() and not torch.equal(gated, plain)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"gate_step": "auto"}, "auto"),
        ({"self_attention_interval": 2}, "self-attention"),
    ],
)
def test_options_joint_families_do_not_support_are_refused_before_anything_changes(overrides, message):
    pipe = JOINT_CASES["SD3"].build()
    with pytest.raises(ConfigError, match=message):
        crossgate.apply(pipe, **overrides)
    assert not crossgate.is_applied(pipe)


def test_joint_options_are_refused_on_cross_attention_families():
    from crossgate.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    for overrides in ({"text_stream": "live"}, {"keep_cfg": True}):
        with pytest.raises(ConfigError, match="joint-attention"):
            crossgate.apply(pipe, **overrides)
    assert not crossgate.is_applied(pipe)


def test_bad_joint_options_name_the_choices():
    with pytest.raises(ConfigError, match="frozen_mean"):
        crossgate.TGateConfig(text_stream="mean")
    with pytest.raises(ConfigError, match="keep_cfg"):
        crossgate.TGateConfig(keep_cfg="yes")


def test_a_custom_attention_processor_is_refused_at_apply():
    pipe = JOINT_CASES["SD3"].build()

    class Custom:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
            raise AssertionError("never called")

    pipe.transformer.transformer_blocks[0].attn.set_processor(Custom())
    with pytest.raises(crossgate.UnsupportedPipelineError, match="stock processor"):
        crossgate.apply(pipe)
    assert not crossgate.is_applied(pipe)


def test_flux_fused_qkv_projections_are_gated_like_the_separate_ones():
    case = JOINT_CASES["FLUX.1"]
    pipe = case.build()
    with crossgate.enabled(pipe, gate_step=GATE):
        separate = _run(pipe, case)
    pipe.transformer.fuse_qkv_projections()
    assert all(block.attn.fused_projections for _, block, _ in joint_blocks(pipe.transformer))
    with crossgate.enabled(pipe, gate_step=GATE):
        fused = _run(pipe, case)
    torch.testing.assert_close(fused, separate, rtol=0, atol=TOLERANCE)


def test_analyze_records_the_text_stream_convergence_of_each_joint_block():
    """The curve of block 0 equals the change of its text keys, values and output, captured directly."""
    from crossgate.tensors import cfg_mean, relative_change
    from crossgate.tools.quality.convergence import record_convergence

    case = JOINT_CASES["SD3"]
    pipe = case.build()
    result = record_convergence(pipe, ["a red circle", "a blue square"], 4, 5.0, batch_size=2)
    assert result.layers == [name for name, _, _ in joint_blocks(pipe.transformer)] and result.cfg
    block = pipe.transformer.transformer_blocks[0]
    seen: dict[str, list[torch.Tensor]] = {"k": [], "v": [], "out": []}
    handles = [
        block.attn.add_k_proj.register_forward_hook(lambda m, a, o: seen["k"].append(o)),
        block.attn.add_v_proj.register_forward_hook(lambda m, a, o: seen["v"].append(o)),
        block.register_forward_hook(lambda m, a, o: seen["out"].append(o[0])),
    ]
    try:
        pipe(
            ["a red circle", "a blue square"],
            num_inference_steps=4,
            guidance_scale=5.0,
            output_type="latent",
            generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        )
    finally:
        for h in handles:
            h.remove()
    rows = [torch.cat([seen[p][t].reshape(4, -1) for p in ("k", "v", "out")], dim=1) for t in range(4)]
    expected = [relative_change(cfg_mean(rows[t]), cfg_mean(rows[t - 1])) for t in range(1, 4)]
    assert result.relative_change["mean"]["transformer_blocks.0"] == pytest.approx(expected, rel=1e-5)


def test_after_the_gate_each_block_holds_one_frozen_row_per_image_and_the_capture_is_freed():
    """Memory: blocks x (3, or 2 for SD3's last block) x rows x text_tokens x hidden elements."""
    from crossgate.gate import current_call
    from crossgate.hooks import JointRecord

    case = JOINT_CASES["SD3"]
    pipe = case.build()
    held: list[tuple[int, int]] = []

    def on_step_end(p, i, t, kwargs):
        records = [r for r in current_call().records.values() if isinstance(r, JointRecord)]
        if i + 1 > GATE:  # after the first gated pass
            captured = sum(s.key.numel() + s.value.numel() for r in records for s in r.latest.values())
            frozen = sum(
                s.key.numel() + s.value.numel() + (0 if s.output is None else s.output.numel())
                for r in records
                for s in r.frozen.values()
            )
            held.append((captured, frozen))
        return {}

    with crossgate.enabled(pipe, gate_step=GATE):
        _run(pipe, case, callback_on_step_end=on_step_end)
    config = pipe.transformer.config
    hidden = config.num_attention_heads * config.attention_head_dim
    text_tokens = 77 + 16  # CLIP + T5 at max_sequence_length=16
    blocks = config.num_layers
    expected = (3 * (blocks - 1) + 2) * 1 * text_tokens * hidden  # the last block hands no text on
    assert held and set(held) == {(0, expected)}


@pytest.mark.parametrize(
    "name",
    [
        "FLUX.1",
        "HunyuanVideo",
        "CogVideoX",
        "AuraFlow",
        "Chroma",
        "Qwen-Image",
        "Lumina2",
        "Z-Image",
        "HiDream",
    ],
)
def test_each_frozen_tensor_owns_its_storage(name):
    """A frozen text stream sliced from a block's whole [text; image] output would keep the image rows
    alive until the call ends: every frozen tensor holds exactly its own elements."""
    from crossgate.gate import current_call
    from crossgate.hooks import JointRecord

    case = JOINT_CASES[name]
    pipe = case.build()
    seen: list[tuple[int, int]] = []

    def after_pass(*_: Any) -> None:
        call = current_call()
        if call is None or not call.gated:
            return
        for record in call.records.values():
            if isinstance(record, JointRecord):
                for stream in record.frozen.values():
                    for tensor in (stream.key, stream.value, stream.output):
                        if tensor is not None:
                            held = tensor.untyped_storage().nbytes()
                            seen.append((held, tensor.numel() * tensor.element_size()))

    handle = pipe.transformer.register_forward_hook(after_pass)
    try:
        with crossgate.enabled(pipe, gate_step=GATE):
            _run(pipe, case)
    finally:
        handle.remove()
    assert seen and all(held == own for held, own in seen), [s for s in seen if s[0] != s[1]][:3]


def test_a_processor_swapped_after_apply_is_refused_when_the_call_starts():
    case = JOINT_CASES["SD3"]
    pipe = case.build()
    plain = _run(pipe, case)
    crossgate.apply(pipe, gate_step=GATE)
    original = pipe.transformer.transformer_blocks[0].attn.processor

    class Custom:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
            return original(attn, hidden_states, encoder_hidden_states, **kwargs)

    pipe.transformer.transformer_blocks[0].attn.set_processor(Custom())
    with pytest.raises(crossgate.UnsupportedPipelineError, match="stock processor"):
        _run(pipe, case)
    pipe.transformer.transformer_blocks[0].attn.set_processor(original)
    crossgate.remove(pipe)
    assert torch.equal(_run(pipe, case), plain)  # the pipeline stays usable


# one build per transformer class: every JointKind (SD3's last, context_pre_only block included)
@pytest.mark.parametrize(
    "name",
    [
        "SD3.5 (dual attention, qk-norm)",
        "FLUX.1",
        "Chroma",
        "AuraFlow",
        "Qwen-Image",
        "HunyuanVideo",
        "CogVideoX",
        "CogView4",
        "Lumina2",
        "Z-Image",
        "HiDream",
    ],
)
def test_each_block_kind_image_side_against_its_own_text_stream_equals_the_stock_block(name):
    """The identity the method rests on: at one step, every block's ``image_only`` run against the
    ``text_stream`` it returns reproduces the stock block's image output (and hands its text on)."""
    case = JOINT_CASES[name]
    pipe = case.build()
    seen: list[tuple[torch.nn.Module, Any, tuple, dict, Any, int]] = []
    tokens = [0]  # the text length the gate would hand a concatenated block in this denoiser call

    def call_hook(module, args, kwargs):
        tokens[0] = text_tokens(module, args, kwargs)

    handles = [pipe.transformer.register_forward_pre_hook(call_hook, with_kwargs=True)]
    for _, block, kind in joint_blocks(pipe.transformer):

        def hook(module, args, kwargs, output, kind=kind):
            if len(seen) < 64:
                seen.append((module, kind, args, dict(kwargs), output, tokens[0]))

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        _run(pipe, case, num_inference_steps=1)
    finally:
        for h in handles:
            h.remove()
    kinds = {type(kind).__name__ for _, kind, _, _, _, _ in seen}
    assert seen and kinds == {type(k).__name__ for _, _, k in joint_blocks(pipe.transformer)}
    with torch.no_grad():
        for module, kind, args, kwargs, output, length in seen:
            named = kind.bind(args, kwargs)
            if kind.concatenated:  # one [text; image] sequence: the text length the gate hands in
                named["text_tokens"] = length
            frozen = kind.text_stream(module, named, output)
            replayed = kind.image_only(module, frozen, named)
            if kind.stream == "text":  # nothing reads it after the gate: handed on as it came
                assert replayed is named[kind.arg_names[0]]
                continue
            if kind.concatenated and not kind.text_first:  # [image; text] (Z-Image): the text rows last
                image = output.shape[1] - length
                torch.testing.assert_close(replayed[:, :image], output[:, :image], rtol=0, atol=1e-5)
                assert torch.equal(replayed[:, image:], output[:, image:])
                continue
            if kind.stream == "image":  # the image alone: the stock block
                torch.testing.assert_close(replayed, output, rtol=0, atol=1e-5)
                continue
            if kind.concatenated:
                torch.testing.assert_close(replayed[:, length:], output[:, length:], rtol=0, atol=1e-5)
                assert torch.equal(replayed[:, :length], output[:, :length])
                continue
            image = 1 - kind.text_output
            torch.testing.assert_close(replayed[image], output[image], rtol=0, atol=1e-5)
            assert replayed[kind.text_output] is output[kind.text_output]


def test_cogview4_text_mask_is_applied_to_the_image_queries_as_the_stock_processor_does():
    pipe = JOINT_CASES["CogView4"].build()
    _, block, kind = joint_blocks(pipe.transformer)[0]
    torch.manual_seed(0)
    dim = block.norm2.normalized_shape[0]
    hidden, text = torch.randn(2, 9, dim), torch.randn(2, 6, dim)
    temb = torch.randn(2, block.norm1.linear.in_features)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        stock = block(hidden, text, temb, None, mask)
        named = kind.bind((hidden, text, temb, None, mask), {})
        replayed = kind.image_only(block, kind.text_stream(block, named, stock), named)
        unmasked = block(hidden, text, temb, None, None)
    torch.testing.assert_close(replayed[0], stock[0], rtol=0, atol=1e-5)
    assert not torch.allclose(unmasked[0], stock[0])  # the mask matters for these inputs


def test_sd3_controlnet_runs_the_cond_half_after_the_gate():
    case = JOINT_CASES["SD3 ControlNet"]
    pipe = case.build()
    with crossgate.enabled(pipe, gate_step=GATE):
        _run(pipe, case)
        stats = crossgate.last_call(pipe)
    assert stats.denoiser_batches == [2] * GATE + [1] * (STEPS - GATE)
    assert list(stats.control_batches.values()) == [[2] * GATE + [1] * (STEPS - GATE)]


def test_chroma_inpainting_is_refused_because_it_fails_without_crossgate():
    """The refusal's reason holds: the plain pipeline fails in diffusers itself."""
    import diffusers

    from crossgate.testing import tiny_chroma_pipeline

    pipe = tiny_chroma_pipeline(cls=diffusers.ChromaInpaintPipeline)
    case = JOINT_CASES["Chroma"]
    image = _image(1)
    with pytest.raises(AttributeError, match="guidance_embeds"):
        _run(pipe, case, image=image, mask_image=image.convert("L"), strength=1.0)
    with pytest.raises(crossgate.UnsupportedPipelineError, match="guidance_embeds"):
        crossgate.apply(pipe)


def test_lumina2_prompts_of_different_lengths_are_gated_each_as_alone():
    """Lumina2 joins each prompt unpadded, so a batch of prompts of different lengths puts each
    sample's image rows at its own offset (a mask pads the batch): gated together, each image equals
    that prompt gated alone."""
    case = JOINT_CASES["Lumina2"]
    pipe = case.build()
    prompts = ["a red circle", "a green triangle on a long table"]
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    masks: list[Any] = []
    _, block, _ = joint_blocks(pipe.transformer)[-1]
    handle = block.register_forward_pre_hook(lambda m, a, kw: masks.append(a[1]), with_kwargs=True)
    with crossgate.enabled(pipe, gate_step=GATE):
        together = _run(pipe, case, prompt=prompts, negative_prompt=["", "a blue square"], latents=latents)
        handle.remove()
        alone = [
            _run(pipe, case, prompt=p, negative_prompt=n, latents=latents[i : i + 1])
            for i, (p, n) in enumerate(zip(prompts, ["", "a blue square"]))
        ]
    assert masks and all(m is not None for m in masks)  # the batch was padded: rows at two offsets
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("truncation, batches", [(0.5, [2, 2, 1, 1, 1]), (0.1, [2, 1, 1, 1, 1])])
def test_z_image_cfg_truncation_after_and_before_the_gate(truncation, batches):
    """Z-Image's `cfg_truncation` leaves CFG out of late passes itself (batch B): those replay the cond
    half's frozen stream as they are. After the gate that is what the gate feeds anyway, so the image
    is the untruncated gated one; before it, the captured stream is the cond half's already."""
    case = JOINT_CASES["Z-Image"]
    pipe = case.build()
    with crossgate.enabled(pipe, gate_step=GATE):
        untruncated = _run(pipe, case)
        truncated = _run(pipe, case, cfg_truncation=truncation)
        stats = crossgate.last_call(pipe)
    assert stats.denoiser_batches == batches  # the gate's halves, the pipeline's own cond-only passes
    if truncation > 0.4:  # the pipeline's own cut comes after the gate (t_norm of step 3 is 0.6)
        assert torch.equal(truncated, untruncated)
    reference = JointReference(pipe, GATE, text_first=False, sequential=False, cond_first=True)
    with reference:
        expected = _run(pipe, case, cfg_truncation=truncation, callback_on_step_end=reference.on_step_end)
    torch.testing.assert_close(truncated, expected, rtol=0, atol=TOLERANCE)


def test_z_image_refuses_guidance_after_the_gate_before_anything_changes():
    """Its transformer returns a list (one tensor per sample), which the kept guidance does not follow."""
    pipe = JOINT_CASES["Z-Image"].build()
    with pytest.raises(ConfigError, match="guidance_after_gate"):
        crossgate.apply(pipe, gate_step=GATE, guidance_after_gate=0.5)
    assert not crossgate.is_applied(pipe)


def test_lumina2_noise_refiner_is_skipped_with_the_uncond_call():
    """The image refiner runs as written, once per denoiser call: after the gate only the cond call's."""
    case = JOINT_CASES["Lumina2"]
    pipe = case.build()
    calls = {"before": 0, "after": 0}
    state = {"after": False}

    def on_step_end(p, i, t, kwargs):
        state["after"] = i + 1 >= GATE
        return {}

    def count(module, args, output):
        calls["after" if state["after"] else "before"] += 1

    handle = pipe.transformer.noise_refiner[0].attn.to_q.register_forward_hook(count)
    try:
        with crossgate.enabled(pipe, gate_step=GATE):
            _run(pipe, case, callback_on_step_end=on_step_end)
    finally:
        handle.remove()
    assert calls == {"before": 2 * GATE, "after": STEPS - GATE}, calls
