"""Accelerators users stack on crossgate, on tiny models: diffusers' caches and attention backends.

(Wan with FirstBlockCache / MagCache / TaylorSeer / PAB: tests/test_sequential.py; group offloading,
layerwise casting, torchao: tests/test_memory_features.py; torch.compile: tests/test_compile.py.)

* Batched-CFG pipelines (a UNet, tiny SD; a DiT, tiny PixArt) halve their batch after the gate. A
  diffusers cache that keeps tensors of the batch from step to step (FirstBlockCache, MagCache, PAB,
  FasterCache, SeaCache, TaylorSeer) is refused, in either order, naming the cache: left alone PAB
  raises a shape error after the gate and MagCache silently drops its residual. Caches diffusers
  itself refuses on a model are recorded with diffusers' reason.
* TextKVCache keeps nothing of the batch the gated passes read: it composes with both families in
  both orders. Gate past the end: the cache alone exactly; gate active: crossgate alone exactly (the
  cache is lossless), repeated calls identical, the denoiser batches crossgate promises.
* Per-branch CFG (Wan) keeps its batch, so SeaCache and TextKVCache compose there too (gate past the
  end: the cache alone exactly; active: stable, one call per step after the gate).
* ``set_attention_backend``: the backends that run on CPU ("native", "_native_math",
  "_native_flash", "flex") on Wan, whose processor dispatches through diffusers' attention
  dispatcher: gate past the end equals the backend's plain output exactly, and the gated output
  equals crossgate under the default backend within atol 1e-5.
"""

from __future__ import annotations

import pytest
import torch

import crossgate
from families import pixart_alpha, sd
from sequential_cases import wan_t2v

STEPS, GATE = 4, 2


def _hooks():
    from diffusers import hooks

    return hooks


def _config(name: str):
    h = _hooks()
    return {
        "FirstBlockCache": lambda: h.FirstBlockCacheConfig(threshold=0.2),
        "MagCache": lambda: h.MagCacheConfig(
            num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS, threshold=0.5
        ),
        "PAB": lambda: h.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: 500,
        ),
        "FasterCache": lambda: h.FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: 500,
            attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=False,
        ),
        "SeaCache": lambda: h.SeaCacheConfig(),
        "TextKVCache": lambda: h.TextKVCacheConfig(),
    }[name]()


def _apply_cache(model, name: str) -> None:
    h = _hooks()
    apply = {
        "FirstBlockCache": h.apply_first_block_cache,
        "MagCache": h.apply_mag_cache,
        "PAB": h.apply_pyramid_attention_broadcast,
        "FasterCache": h.apply_faster_cache,
        "SeaCache": h.apply_sea_cache,
        "TextKVCache": h.apply_text_kv_cache,
    }[name]
    apply(model, _config(name))


def _hook_names(model) -> set[str]:
    return {n for m in model.modules() if "_diffusers_hook" in m.__dict__ for n in m._diffusers_hook.hooks}


FAMILIES = {"sd": (sd, "unet"), "pixart": (pixart_alpha, "transformer")}


def _build(family: str):
    build, attr = FAMILIES[family]
    case = build()
    return case, getattr(case.pipe, attr)


def _run(case, seed: int = 0, **overrides) -> torch.Tensor:
    kwargs = dict(case.kwargs, num_inference_steps=STEPS, output_type="latent", **overrides)
    return case.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed)).images


# What each cache does to each batched family: "hooks" (its hooks go on), or diffusers' own refusal.
REFUSED = [
    ("sd", "PAB"),  # PAB finds the UNet's attention layers
    ("pixart", "FirstBlockCache"),
    ("pixart", "MagCache"),
    ("pixart", "PAB"),
    ("pixart", "SeaCache"),
    ("pixart", "FasterCache"),
]


_REPORTED = {"PAB": "PyramidAttentionBroadcast"}


@pytest.mark.parametrize(("family", "cache"), REFUSED)
@pytest.mark.parametrize("order", ["cache-first", "crossgate-first"])
def test_batch_stateful_caches_are_refused_on_batched_cfg(family, cache, order):
    case, model = _build(family)
    if order == "cache-first":
        _apply_cache(model, cache)
        with pytest.raises(
            crossgate.UnsupportedPipelineError, match=f"{_REPORTED.get(cache, cache)}.*halves after the gate"
        ):
            crossgate.apply(case.pipe, gate_step=GATE)
        assert not crossgate.is_applied(case.pipe)
    else:
        crossgate.apply(case.pipe, gate_step=GATE)
        _apply_cache(model, cache)
        with pytest.raises(
            crossgate.UnsupportedPipelineError, match=f"{_REPORTED.get(cache, cache)}.*halves after the gate"
        ):
            _run(case)
        crossgate.remove(case.pipe)


def test_pab_breaks_without_the_refusal(monkeypatch):
    """Why the refusal: with the check taken out, PAB's attention kept at the full batch meets the
    halved batch after the gate."""
    monkeypatch.setattr("crossgate.pipeline._check_diffusers_caches", lambda *_: None)
    case, model = _build("pixart")
    _apply_cache(model, "PAB")
    crossgate.apply(case.pipe, gate_step=1)  # step 1 reuses step 0's attention (PAB's skip range 2)
    with pytest.raises(RuntimeError, match="size of tensor"):
        _run(case)
    crossgate.remove(case.pipe)


@pytest.mark.parametrize(
    ("family", "cache", "error"),
    [
        ("sd", "FirstBlockCache", IndexError),  # no transformer block list on a UNet
        ("sd", "SeaCache", ValueError),  # "found no repeated transformer blocks"
    ],
)
def test_caches_diffusers_refuses_on_a_unet(family, cache, error):
    _, model = _build(family)
    with pytest.raises(error):
        _apply_cache(model, cache)


def test_magcache_hooks_nothing_on_a_unet():
    """MagCache finds no transformer block list on a UNet: nothing is hooked, crossgate applies."""
    case, model = _build("sd")
    _apply_cache(model, "MagCache")
    assert not _hook_names(model)
    with crossgate.enabled(case.pipe, gate_step=GATE):
        _run(case)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("order", ["cache-first", "crossgate-first"])
def test_text_kv_cache_composes_on_batched_cfg(family, order):
    case, model = _build(family)
    with crossgate.enabled(case.pipe, gate_step=GATE):
        gated_alone = _run(case)
    if order == "crossgate-first":
        crossgate.apply(case.pipe, gate_step=STEPS)
    _apply_cache(model, "TextKVCache")
    assert _hook_names(model)
    crossgate.apply(case.pipe, gate_step=STEPS)  # re-applying changes the config, not the hooks
    past_end = _run(case)

    crossgate.apply(case.pipe, gate_step=GATE)
    first = _run(case)
    _run(case, seed=1)
    assert torch.equal(_run(case), first)
    full = 2 * first.shape[0]
    assert crossgate.last_call(case.pipe).denoiser_batches == [full] * GATE + [full // 2] * (STEPS - GATE)
    assert torch.equal(first, gated_alone)
    crossgate.remove(case.pipe)
    assert torch.equal(_run(case), past_end)  # the cache alone


def _wan_call(case, seed: int = 0, **overrides) -> torch.Tensor:
    kwargs = dict(case.kwargs, num_inference_steps=case.steps, output_type="latent", **overrides)
    return case.pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed)).frames


@pytest.mark.parametrize("cache", ["SeaCache", "TextKVCache"])
@pytest.mark.parametrize("order", ["cache-first", "crossgate-first"])
def test_newer_caches_compose_with_sequential_cfg(cache, order):
    case = wan_t2v()
    pipe = case.pipe
    if order == "crossgate-first":
        crossgate.apply(pipe, gate_step=case.steps)
    _apply_cache(pipe.transformer, cache)
    crossgate.apply(pipe, gate_step=case.steps)
    past_end = _wan_call(case)

    crossgate.apply(pipe, gate_step=case.gate)
    first = _wan_call(case)
    _wan_call(case, seed=1, prompt="a blue square")
    assert torch.equal(_wan_call(case), first)
    assert crossgate.last_call(pipe).denoiser_batches == [1] * (2 * case.gate + case.steps - case.gate)
    crossgate.remove(pipe)
    cache_alone = _wan_call(case)
    assert torch.equal(past_end, cache_alone)
    assert torch.isfinite(first).all() and not torch.equal(first, cache_alone)


CPU_BACKENDS = ["native", "_native_math", "_native_flash", "flex"]


@pytest.fixture(scope="module")
def wan_default():
    case = wan_t2v()
    with crossgate.enabled(case.pipe, gate_step=case.gate):
        return _wan_call(case)


@pytest.fixture
def restore_active_backend():
    """``set_attention_backend`` also sets diffusers' process-wide active backend, which
    ``reset_attention_backend`` does not put back: without this, later tests (meta-device accounting
    models) would run on the last backend set here."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry.get_active_backend()
    yield
    _AttentionBackendRegistry.set_active_backend(active[0] if isinstance(active, tuple) else active)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_backends(backend, wan_default, restore_active_backend):
    case = wan_t2v()
    pipe = case.pipe
    pipe.transformer.set_attention_backend(backend)
    plain = _wan_call(case)
    with crossgate.enabled(pipe, gate_step=case.steps):
        assert torch.equal(_wan_call(case), plain)
    with crossgate.enabled(pipe, gate_step=case.gate):
        gated = _wan_call(case)
        assert torch.equal(_wan_call(case), gated)
    torch.testing.assert_close(gated, wan_default, atol=1e-5, rtol=1e-5)
    assert torch.equal(_wan_call(case), plain)


# Executed denoiser linear/conv MACs on tiny Wan (4 steps, gate 2), the cache alone and with crossgate
# (the README's table): crossgate never adds work, and saves where the cache still runs the uncond blocks.
WAN_CACHES = ["none", "FirstBlockCache", "MagCache", "PAB", "SeaCache", "TextKVCache"]


def _wan_with(cache: str):
    from test_sequential import _cache_config

    case = wan_t2v()
    if cache in ("FirstBlockCache", "MagCache", "PAB"):
        case.pipe.transformer.enable_cache(_cache_config(cache, case.pipe))
    elif cache != "none":
        _apply_cache(case.pipe.transformer, cache)
    return case


@pytest.mark.parametrize("cache", WAN_CACHES)
def test_executed_macs_on_wan(cache):
    from crossgate.tools.accounting.meter import CallMeter

    case = _wan_with(cache)
    with CallMeter(case.pipe) as meter:
        _wan_call(case)
    alone = meter.denoiser_executed
    with crossgate.enabled(case.pipe, gate_step=case.gate), CallMeter(case.pipe) as meter:
        _wan_call(case)
    both = meter.denoiser_executed
    if cache == "MagCache":  # it already skips every uncond pass crossgate would skip
        assert both == alone
    else:
        assert both < alone


# (SD3 with FirstBlockCache is left out: diffusers' FirstBlockCache needs the denoiser calls inside a
# cache_context, which SD3's pipeline never opens; it fails without crossgate.)
@pytest.mark.parametrize(
    ("family", "cache"),
    [
        ("SD3", "MagCache"),
        ("SD3", "PAB"),
        ("FLUX.1", "FirstBlockCache"),
        ("FLUX.1", "MagCache"),
        ("FLUX.1", "PAB"),
    ],
)
@pytest.mark.parametrize("order", ["cache-first", "crossgate-first"])
def test_block_caches_are_refused_on_joint_attention(family, cache, order):
    """The text-stream freeze needs every joint block to run at the step before the gate; a block cache
    decides that at run time, so it is refused before anything runs, in either order, also where CFG
    runs per branch (FLUX) and the batch never halves."""
    from joint_cases import JOINT_CASES
    from test_joint import _run as run_joint

    case = JOINT_CASES[family]
    pipe = case.build()
    message = f"joint block.*{_REPORTED.get(cache, cache)}"
    if order == "cache-first":
        _apply_cache(pipe.transformer, cache)
        with pytest.raises(crossgate.UnsupportedPipelineError, match=message):
            crossgate.apply(pipe, gate_step=GATE)
        # nothing was changed: no crossgate state, and the cached pipeline still runs (SD3's pipeline
        # opens no cache_context, so these caches carry their own state from call to call: not compared)
        assert not crossgate.is_applied(pipe) and "progress_bar" not in vars(pipe)
        assert torch.isfinite(run_joint(pipe, case)).all()
    else:
        crossgate.apply(pipe, gate_step=GATE)
        _apply_cache(pipe.transformer, cache)
        with pytest.raises(crossgate.UnsupportedPipelineError, match=message):
            run_joint(pipe, case)
        crossgate.remove(pipe)
