"""crossgate under ``torch.compile``: every idiom, either order, no graph break, a bounded set of graphs.

The backend is ``aot_eager`` (dynamo tracing + AOT autograd, no C++ codegen), so each test takes
seconds on CPU; inductor goes through the same dynamo graphs and guards (one inductor test below).
Every compile uses ``fullgraph=True``: a graph break would raise, and dynamo's own counters are read
as well. The sequence checked is the one users run: a plain call, a gated call, a gated call with
another prompt, another step count and another gate, and a plain call after ``remove()``.

Graph bound, per model compiled whole: one graph per kind of pass the model really runs, plain's
included. Batched CFG: plain (2B), before the gate (2B, keeping the cross-attention outputs), after
it (B, replaying them) = 3. Sequential CFG (Wan): plain, before the gate, the cond pass after it and
the skipped uncond pass after it = 4. Regional compilation: the same per distinct block shape.
"""

from __future__ import annotations

import copy
import sys
import threading
from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import crossgate
from conftest import run
from families import _PIXART_CALL, Case, _controlnet, _image
from sequential_cases import wan_t2v
from test_families import call as family_call
from test_sequential import call as sequential_call

TOL = {"atol": 1e-4, "rtol": 1e-4}  # aot_eager's decompositions against eager, tiny fp32 models


@pytest.fixture(scope="module")
def _small_sd_template():
    """A one-level tiny SD UNet: dynamo traces it in about half the time of the two-level one."""
    from crossgate.testing import tiny_sd_pipeline

    one_level = {
        "block_out_channels": (16,),
        "down_block_types": ("CrossAttnDownBlock2D",),
        "up_block_types": ("CrossAttnUpBlock2D",),
    }
    return tiny_sd_pipeline(seed=0, **one_level)


@pytest.fixture
def sd_pipe(_small_sd_template):
    return copy.deepcopy(_small_sd_template)


def _compile(pipe, attr: str, idiom: str, backend: Any = "aot_eager") -> None:
    model = getattr(pipe, attr)
    if idiom == "assign":
        setattr(pipe, attr, torch.compile(model, backend=backend, fullgraph=True))
    elif idiom == "inplace":
        model.compile(backend=backend, fullgraph=True)
    elif getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(backend=backend, fullgraph=True)
    else:  # no `_repeated_blocks` declared (Lumina2): its repeated blocks, the unified layers
        from crossgate.joint import joint_blocks

        for _, block, kind in joint_blocks(model):
            if kind.stream == "joint":
                block.compile(backend=backend, fullgraph=True)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _breaks() -> int:
    return sum(counters["graph_break"].values())


def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()


def _sequence(
    pipe,
    attr: str,
    idiom: str,
    order: str,
    call,
    eager: dict[str, torch.Tensor],
    backend="aot_eager",
    **options,
) -> dict[str, int]:
    """Run the user sequence on ``pipe`` compiled by ``idiom`` in ``order``; check it against ``eager``."""
    _fresh_dynamo()
    graphs: dict[str, int] = {}
    if order == "compile-first":
        _compile(pipe, attr, idiom, backend)
        torch.testing.assert_close(call(pipe), eager["plain"], **TOL)
        graphs["plain"] = _graphs()
        crossgate.apply(pipe, gate_step=3, **options)
    else:
        crossgate.apply(pipe, gate_step=3, **options)
        _compile(pipe, attr, idiom, backend)
    torch.testing.assert_close(call(pipe), eager["gated"], **TOL)
    graphs["gated"] = _graphs()
    crossgate.apply(pipe, gate_step=4, **options)
    torch.testing.assert_close(call(pipe, prompt="a blue square", steps=7), eager["other"], **TOL)
    graphs["other"] = _graphs()
    crossgate.remove(pipe)
    torch.testing.assert_close(call(pipe), eager["plain"], **TOL)
    graphs["removed"] = _graphs()
    assert _breaks() == 0, dict(counters["graph_break"])
    return graphs


def _eager_reference(pipe, call, **options) -> dict[str, torch.Tensor]:
    plain = call(pipe)
    with crossgate.enabled(pipe, gate_step=3, **options):
        gated = call(pipe)
    with crossgate.enabled(pipe, gate_step=4, **options):
        other = call(pipe, prompt="a blue square", steps=7)
    return {"plain": plain, "gated": gated, "other": other}


def _sd_call(pipe, prompt: str = "a red circle", steps: int = 6):
    return run(pipe, prompt=prompt, steps=steps)


def _family_caller(case: Case):
    """A ``call(pipe, prompt, steps)`` for ``_sequence`` that runs ``case`` (its pipe) as the families test does."""

    def call(pipe, prompt: str = "a red circle", steps: int = 6):
        case.steps = steps
        return family_call(case, prompt=prompt)

    return call


@pytest.mark.parametrize(
    "idiom, order",
    [
        ("regional", "apply-first"),
        # the rest run with the slow tests (make test-slow): each is ~20 s of dynamo tracing (assign,
        # compile-first runs in the default suite as test_compile_split_cfg_...[assign-True], split)
        pytest.param("assign", "compile-first", marks=pytest.mark.slow),
        pytest.param("assign", "apply-first", marks=pytest.mark.slow),
        pytest.param("inplace", "compile-first", marks=pytest.mark.slow),
        pytest.param("inplace", "apply-first", marks=pytest.mark.slow),
        pytest.param("regional", "compile-first", marks=pytest.mark.slow),
    ],
)
def test_unet_every_idiom_either_order(sd_pipe, idiom, order):
    eager = _eager_reference(sd_pipe, _sd_call)
    graphs = _sequence(sd_pipe, "unet", idiom, order, _sd_call, eager)
    shapes = 1  # one resolution level: each block kind runs at one shape
    assert graphs["other"] == graphs["gated"], graphs  # nothing new after the first gated call
    if order == "compile-first":  # plain, before the gate (2B), after it (B); plain's reused after remove
        assert graphs == {"plain": shapes, "gated": 3 * shapes, "other": 3 * shapes, "removed": 3 * shapes}
    else:  # plain's graph is first made after remove()
        assert graphs == {"gated": 2 * shapes, "other": 2 * shapes, "removed": 3 * shapes}
    assert crossgate.last_call(sd_pipe) is None  # removed


def _latent_batches(batches: list[set[int]], latent: tuple[int, ...]):
    """``aot_eager``, recording for each graph it is given the batches of its latent-shaped inputs."""
    from torch._dynamo.backends.registry import lookup_backend

    aot_eager = lookup_backend("aot_eager")

    def backend(gm, inputs):
        batches.append(
            {t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and tuple(t.shape[1:]) == latent}
        )
        return aot_eager(gm, inputs)

    return backend


@pytest.mark.parametrize(
    "idiom, split",
    [
        ("assign", True),
        pytest.param("inplace", True, marks=pytest.mark.slow),
        pytest.param("assign", False, marks=pytest.mark.slow),
    ],
)
def test_compile_split_cfg_builds_the_graphs_on_both_sides_of_the_gate_at_one_batch(sd_pipe, idiom, split):
    """``compile_split_cfg``: around a UNet compiled whole, each pass before the gate runs as two B-row
    passes, so the graph before the gate and the graph after it both take a B-row latent (inductor
    then builds their kernels once). Without it: 2B before, B after. Eager crossgate is unchanged by
    the option; the compiled output stays within tolerance of it, with no new graph or break."""
    options = {"compile_split_cfg": split}
    eager = _eager_reference(sd_pipe, _sd_call, **options)
    with crossgate.enabled(sd_pipe, gate_step=3, compile_split_cfg=not split):
        assert torch.equal(_sd_call(sd_pipe), eager["gated"])  # eager: the option changes nothing
    batches: list[set[int]] = []
    latent = (sd_pipe.unet.config.in_channels, 16, 16)
    backend = _latent_batches(batches, latent)
    graphs = _sequence(sd_pipe, "unet", idiom, "compile-first", _sd_call, eager, backend, **options)
    assert graphs == {"plain": 1, "gated": 3, "other": 3, "removed": 3}, graphs
    assert batches == [{2}, {1}, {1}] if split else [{2}, {2}, {1}], batches  # plain, before, after


@pytest.mark.slow
def test_compile_split_cfg_keeps_the_auto_gate_and_the_kept_guidance(sd_pipe):
    """The joined halves are what the auto gate measures and what ``guidance_after_gate`` keeps: the
    compiled split call closes at eager crossgate's gate and matches its output."""
    # a tolerance the changes cross between the earliest gate (2 of 8 steps) and the latest (6)
    options = {"gate_step": "auto", "guidance_after_gate": 1.0, "auto_tolerance": 0.004}
    with crossgate.enabled(sd_pipe, **options):
        expected = _sd_call(sd_pipe, steps=8)
        gate = crossgate.last_call(sd_pipe).gate
    _fresh_dynamo()
    crossgate.apply(sd_pipe, **options, compile_split_cfg=True)
    _compile(sd_pipe, "unet", "assign")
    torch.testing.assert_close(_sd_call(sd_pipe, steps=8), expected, **TOL)
    stats = crossgate.last_call(sd_pipe)
    assert stats.gate == gate and 2 < gate < 6, gate
    assert stats.denoiser_batches == [2] * gate + [1] * (8 - gate)
    assert _breaks() == 0


def test_compile_split_cfg_bad_uses_are_refused_before_anything_changes():
    from crossgate import ConfigError
    from joint_cases import JOINT_CASES

    with pytest.raises(ConfigError, match="compile_split_cfg must be True or False"):
        crossgate.TGateConfig(compile_split_cfg="yes")
    with pytest.raises(ConfigError, match="self-attention caching"):
        crossgate.TGateConfig(compile_split_cfg=True, self_attention_interval=2)
    for pipe, message in (
        (JOINT_CASES["SD3"].build(), "not available for StableDiffusion3Pipeline"),
        (wan_t2v().pipe, "already runs CFG as one denoiser call per branch"),
    ):
        with pytest.raises(ConfigError, match=message):
            crossgate.apply(pipe, compile_split_cfg=True)
        assert not crossgate.is_applied(pipe)


@pytest.mark.parametrize("idiom", ["assign", "regional"])
def test_wan_sequential_cfg(idiom):
    case = wan_t2v()

    def call(pipe, prompt: str = "a red circle", steps: int = 6):
        case.steps = steps
        return sequential_call(case, prompt=prompt)

    eager = _eager_reference(case.pipe, call)
    graphs = _sequence(case.pipe, "transformer", idiom, "compile-first", call, eager)
    assert graphs == {"plain": 1, "gated": 4, "other": 4, "removed": 4}, graphs


@pytest.mark.parametrize("split", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pixart_transformer(split):
    from families import pixart_alpha

    case = pixart_alpha()

    call = _family_caller(case)
    assert case.kwargs["height"] == _PIXART_CALL["height"]
    options = {"compile_split_cfg": split}
    eager = _eager_reference(case.pipe, call, **options)
    graphs = _sequence(case.pipe, "transformer", "assign", "apply-first", call, eager, **options)
    assert graphs == {"gated": 2, "other": 2, "removed": 3}, graphs


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True])
def test_panorama_interleaved_cfg(split):
    """SD Panorama batches CFG per sample ([u, c] for each view window) and runs one pass per window:
    the windows share the compiled graphs, and the split takes the interleaved rows apart and back."""
    from families import sd_panorama

    case = sd_panorama()

    call = _family_caller(case)
    options = {"compile_split_cfg": split}
    eager = _eager_reference(case.pipe, call, **options)
    batches: list[set[int]] = []
    backend = _latent_batches(batches, (case.pipe.unet.config.in_channels, 4, 64))  # one view window
    graphs = _sequence(case.pipe, "unet", "assign", "apply-first", call, eager, backend, **options)
    assert graphs == {"gated": 2, "other": 2, "removed": 3}, graphs
    assert batches == ([{1}, {1}, {2}] if split else [{2}, {1}, {2}]), batches  # before, after, plain


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True])
def test_controlnet_and_unet_both_compiled(sd_pipe, split):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(**sd_pipe.components, controlnet=_controlnet(sd_pipe))
    pipe.set_progress_bar_config(disable=True)
    case = Case(pipe, {"prompt": "a red circle", "image": _image()})

    call = _family_caller(case)
    options = {"compile_split_cfg": split}  # the UNet's passes split; the ControlNet's run at 2B
    eager = _eager_reference(pipe, call, **options)
    _fresh_dynamo()
    pipe.controlnet = torch.compile(pipe.controlnet, backend="aot_eager", fullgraph=True)
    graphs = _sequence(pipe, "unet", "inplace", "compile-first", call, eager, **options)
    # plain: UNet + ControlNet; gated adds each one's before-gate and after-gate graphs
    assert graphs == {"plain": 2, "gated": 6, "other": 6, "removed": 6}, graphs
    crossgate.apply(pipe, gate_step=3, **options)
    call(pipe)
    assert crossgate.last_call(pipe).control_batches == {"controlnet": [2, 2, 2, 1, 1, 1]}


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True])
def test_threads_on_one_compiled_unet_are_serialised_and_each_gets_its_own_output(sd_pipe, split):
    """Two pipelines share one compiled UNet, each in its own thread, one gated and one plain: the
    model's gate runs their passes one at a time (the hooks inside read one lane), so each output
    equals its own eager result; with ``compile_split_cfg`` too (both halves of a split pass run
    under the one lock)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # each thread its own scheduler and tokenizer (both keep per-call state); the UNet is shared
    own = {"scheduler": DDIMScheduler.from_config(sd_pipe.scheduler.config)}
    twin = StableDiffusionPipeline(
        **{**sd_pipe.components, **own, "tokenizer": copy.deepcopy(sd_pipe.tokenizer)}
    )
    twin.set_progress_bar_config(disable=True)
    expected_plain = _sd_call(twin)
    with crossgate.enabled(sd_pipe, gate_step=3):
        expected_gated = _sd_call(sd_pipe)
    crossgate.apply(sd_pipe, gate_step=3, compile_split_cfg=split)
    _fresh_dynamo()
    sd_pipe.unet.compile(backend="aot_eager", fullgraph=True)
    _sd_call(sd_pipe), _sd_call(twin)  # compile outside the race
    results: dict[str, torch.Tensor] = {}

    def work(name, pipe):
        for _ in range(2):
            results[name] = _sd_call(pipe)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=a) for a in (("gated", sd_pipe), ("plain", twin))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    torch.testing.assert_close(results["gated"], expected_gated, **TOL)
    torch.testing.assert_close(results["plain"], expected_plain, **TOL)
    assert _breaks() == 0


@pytest.mark.slow
@pytest.mark.parametrize("split", [False, True])
def test_inductor_compiled_unet_matches_eager(sd_pipe, split):
    """One real codegen run (inductor, C++ on CPU): the same graphs, the same outputs."""
    eager = _eager_reference(sd_pipe, _sd_call)
    _fresh_dynamo()
    crossgate.apply(sd_pipe, gate_step=3, compile_split_cfg=split)
    sd_pipe.unet.compile(backend="inductor", fullgraph=True)
    torch.testing.assert_close(_sd_call(sd_pipe), eager["gated"], atol=1e-3, rtol=1e-3)
    assert _graphs() == 2 and _breaks() == 0


@pytest.mark.parametrize("split", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bench_compiled_rows(sd_pipe, split):
    """`crossgate bench --compile`: plain and crossgate compiled rows, each against plain compiled,
    with their eager twin's MACs and the first call (compile included) kept apart from the rounds;
    with ``--compile-split-cfg`` a split row per gate too."""
    from crossgate.tools.bench import build_variants, compiled_variants, run_bench

    _fresh_dynamo()
    variants = build_variants(sd_pipe, [2], []) + compiled_variants(sd_pipe, [2], "aot_eager", split=split)
    kwargs = {"prompt": "a red circle", "num_inference_steps": 4, "output_type": "latent"}
    report = run_bench(sd_pipe, variants, kwargs, repeats=1, warmup=1, log=lambda _: None)
    rows = {row["config"]: row for row in report.rows()}
    compiled = ["crossgate m=2 compiled", *(["crossgate m=2 compiled, split"] if split else [])]
    assert list(rows) == ["plain", "crossgate m=2", "plain compiled", *compiled]
    assert all(rows[name]["versus"] == "plain compiled" for name in compiled)
    assert rows["plain compiled"]["versus"] == "plain"
    assert all(
        rows[name]["gmacs"] == rows["crossgate m=2"]["gmacs"] < rows["plain"]["gmacs"] for name in compiled
    )
    assert all(row["first_s"] is not None and row["note"] == "" for row in rows.values())
    # plain (2B), before the gate (2B; split: B) and after it (B, shared by both crossgate rows)
    assert _breaks() == 0 and _graphs() == (4 if split else 3)
    assert not crossgate.is_applied(sd_pipe) and not isinstance(sd_pipe.unet, torch._dynamo.OptimizedModule)


@pytest.mark.parametrize(
    "family",
    [
        "SD3",
        # the rest run with the slow tests (make test-slow): ~18 s of dynamo tracing each
        *(
            pytest.param(f, marks=pytest.mark.slow)
            for f in (
                "FLUX.1",
                "FLUX.1 img2img",
                "Qwen-Image",
                "HunyuanVideo, true CFG",
                "CogVideoX",
                "CogView4",
                "Chroma",
                "AuraFlow",
                "Lumina2",
                "Z-Image",
            )
        ),
    ],
)
def test_joint_attention_transformers(family):
    """Joint attention: the text-stream freeze traces cleanly too (0 breaks, a bounded set of graphs)."""
    from joint_cases import JOINT_CASES
    from test_joint import _run

    case = JOINT_CASES[family]
    pipe = case.build()

    def call(pipe, prompt: str = "a red circle", steps: int = 6):
        return _run(pipe, case, prompt=prompt, num_inference_steps=steps)

    eager = _eager_reference(pipe, call)
    # Lumina2's model reads its prompts' lengths into Python (`tolist`), so the whole model breaks
    # fullgraph plain; its blocks compile (regional)
    idiom = "regional" if family == "Lumina2" else "assign"
    graphs = _sequence(pipe, "transformer", idiom, "compile-first", call, eager)
    # plain; before the gate (2B, or each named branch at B); the step that keeps the text stream;
    # after the gate (image rows against the frozen text stream); true CFG adds the skipped uncond
    # call. Qwen-Image's plain call already makes 2: its prompt and negative prompt are encoded to
    # lengths of their own, so dynamo's second graph has a dynamic text length (no more after that)
    plain, gated, *other = {
        "SD3": (1, 4),
        "FLUX.1": (1, 5),
        "FLUX.1 img2img": (1, 5),  # unnamed true-CFG calls (cond, then uncond)
        "Qwen-Image": (2, 6),
        "HunyuanVideo, true CFG": (1, 5),
        "CogVideoX": (1, 4),  # batched [uncond; cond], like SD3
        "CogView4": (1, 5),
        "Chroma": (1, 5),  # unnamed CFG calls; single blocks read the text length the gate wrote
        "AuraFlow": (1, 4),  # batched [uncond; cond], like SD3
        # blocks compiled (regional); prompts joined unpadded: the plain call's two lengths make 2, and a
        # prompt of another length keeps its text rows (a length the gate writes) in 2 more graphs
        "Lumina2": (2, 8, 10),
        # [cond; uncond] in lists: the captions' lengths are in the graph, so a prompt of another
        # length recompiles each kind of gated pass once
        "Z-Image": (1, 4, 7),
    }[family]
    after = other[0] if other else gated
    assert graphs == {"plain": plain, "gated": gated, "other": after, "removed": after}, graphs


@pytest.mark.parametrize(
    "family, idiom",
    [
        # with the slow tests (make test-slow): the modular loop calls the same compiled denoiser as
        # the classic one, whose idioms the default suite checks (test_wan_sequential_cfg, ...)
        pytest.param("Wan 2.1 modular", "assign", marks=pytest.mark.slow),  # ~14 s of dynamo tracing
        pytest.param("SDXL modular", "inplace", marks=pytest.mark.slow),  # ~30 s
        pytest.param("Wan 2.1 modular", "regional", marks=pytest.mark.slow),
    ],
)
def test_modular_pipelines(family, idiom):
    """Modular Diffusers (the guider's two calls of B rows): compile-clean, one graph per kind of pass."""
    from modular_cases import MODULAR_CASES

    case = MODULAR_CASES[family].build()
    attr = "unet" if hasattr(case.modular, "unet") and case.modular.unet is not None else "transformer"

    def call(pipe, prompt: str = "a red circle", steps: int = 6):
        case.steps, case.call["prompt"] = steps, prompt
        return case.run_modular()

    eager = _eager_reference(case.modular, call)
    graphs = _sequence(case.modular, attr, idiom, "compile-first", call, eager)
    # plain; before the gate; after it the cond call (replay) and the skipped uncond call: as for
    # classic Wan (test_wan_sequential_cfg), nothing new after the first gated call
    assert graphs == {"plain": 1, "gated": 4, "other": 4, "removed": 4}, graphs


@pytest.mark.slow
def test_hidream_blocks_break_fullgraph_without_crossgate():
    """Why HiDream has no graph count above: its mixture-of-experts feed-forward reads the routing
    counts into Python (diffusers' `moe_infer`), so its blocks do not compile with fullgraph=True even
    plain."""
    from joint_cases import JOINT_CASES
    from test_joint import _run

    case = JOINT_CASES["HiDream"]
    pipe = case.build()
    _fresh_dynamo()
    for block in [*pipe.transformer.double_stream_blocks, *pipe.transformer.single_stream_blocks]:
        block.compile(backend="aot_eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.UserError, match="data-dependent"):
        _run(pipe, case, num_inference_steps=1)
