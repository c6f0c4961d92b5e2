"""The configurations a benchmark compares: crossgate's own rows and a registry of peer methods.

A peer is registered by name with :func:`register_peer`; its builder returns a :class:`Variant`
(how to switch it on and off on one pipeline), or one marked ``unavailable`` with the reason (not
installed, wrong pipeline family), so the table always says why a row is empty. Adding a peer is one
decorated function; :func:`build_variants` and the CLI's ``--peers`` choices read the registry. A
peer registered ``per_gate`` gets one row per crossgate gate (the official ``tgate`` package and the
CFG cutoff run at the same step as each crossgate row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import crossgate
from crossgate.adapters import denoiser_of

PAB_HOOK = "pyramid_attention_broadcast"  # the name diffusers registers its PAB hooks under


class BenchError(ValueError):
    """A benchmark setting is invalid; the message says what to use."""


@dataclass
class Variant:
    """One configuration: how to switch it on and off, and how to call the pipeline under it."""

    name: str
    enable: Callable[[], None] = lambda: None
    disable: Callable[[], None] = lambda: None
    call: Callable[[dict[str, Any]], Any] | None = None
    unavailable: str | None = None
    # Compiled rows: the row their speed-up is taken against ("plain compiled"), and the eager row
    # whose counted MACs they share (counting hooks inside a compiled model would change its graphs).
    versus: str | None = None
    macs_from: str | None = None


@dataclass(frozen=True)
class PeerRequest:
    """What a peer builder gets: the pipeline, crossgate's gate step (the first one, or each one in
    turn for a ``per_gate`` peer) and TGATE v2's ``k``."""

    pipe: Any
    gate: int
    v2_interval: int = 5


PeerBuilder = Callable[[PeerRequest], Variant]


@dataclass(frozen=True)
class Peer:
    """A registered peer; ``counterpart`` builds crossgate's own row doing the same work, if any;
    ``per_gate``: one row per crossgate gate instead of one at the first gate."""

    name: str
    build: PeerBuilder
    counterpart: PeerBuilder | None = None
    per_gate: bool = False


PEER_REGISTRY: dict[str, Peer] = {}


def register_peer(
    name: str, counterpart: PeerBuilder | None = None, per_gate: bool = False
) -> Callable[[PeerBuilder], PeerBuilder]:
    """Register the decorated builder as peer ``name`` (the name ``crossgate bench --peers`` takes)."""

    def decorator(build: PeerBuilder) -> PeerBuilder:
        if name in PEER_REGISTRY:
            raise ValueError(f"peer {name!r} is already registered")
        PEER_REGISTRY[name] = Peer(name, build, counterpart, per_gate)
        return build

    return decorator


# --------------------------------------------------------------------------------------------------
# crossgate's own rows


def crossgate_variant(pipe: Any, gate: int) -> Variant:
    return Variant(
        f"crossgate m={gate}",
        enable=lambda: crossgate.apply(pipe, gate_step=gate),
        disable=lambda: crossgate.remove(pipe),
    )


def crossgate_v2_variant(pipe: Any, gate: int, interval: int) -> Variant:
    """crossgate with TGATE v2's self-attention caching (interval ``k`` before the gate)."""
    return Variant(
        f"crossgate v2 m={gate},k={interval}",
        enable=lambda: crossgate.apply(pipe, gate_step=gate, self_attention_interval=interval),
        disable=lambda: crossgate.remove(pipe),
    )


# --------------------------------------------------------------------------------------------------
# Peers


def official_tgate_variant(pipe: Any, gate: int, interval: int | None = None) -> Variant:
    """The official ``tgate`` package (its forked ``pipe.tgate`` loop), v1 or v2 (``interval`` = k)."""
    name = f"tgate pkg m={gate}" if interval is None else f"tgate pkg v2 m={gate},k={interval}"
    try:
        import tgate
    except ImportError as error:
        return Variant(name, unavailable=f"`tgate` not installed ({error.name})")
    loaders = {
        "StableDiffusionPipeline": "TgateSDLoader",
        "StableDiffusionXLPipeline": "TgateSDXLLoader",
        "PixArtAlphaPipeline": "TgatePixArtAlphaLoader",
        "PixArtSigmaPipeline": "TgatePixArtSigmaLoader",
    }
    loader_name = loaders.get(type(pipe).__name__)
    if loader_name is None:
        return Variant(name, unavailable=f"tgate has no loader for {type(pipe).__name__}")
    # v1: self-attention always computed (interval 1, no warm-up); v2: the release's defaults.
    schedule = {"sp_interval": 1, "fi_interval": 1, "warm_up": 0}
    if interval is not None:
        schedule = {"sp_interval": interval, "fi_interval": 1, "warm_up": 2}

    def enable() -> None:
        getattr(tgate, loader_name)(pipe)

    def disable() -> None:
        # The package leaves its patched `forward` and its cache on every Attention module after a
        # call (a plain call would reuse them), so take them off here.
        for module in denoiser_of(pipe).modules():
            if type(module).__name__ == "Attention":
                module.__dict__.pop("forward", None)
                module.__dict__.pop("cache", None)
        pipe.__dict__.pop("tgate", None)

    return Variant(name, enable, disable, call=lambda kw: pipe.tgate(**kw, gate_step=gate, **schedule))


def _deepcache_helper(pipe: Any, interval: int, branch: int) -> Any:
    """A configured ``DeepCacheSDHelper`` for ``pipe``, or the reason it cannot have one (a str)."""
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError as error:
        return f"`DeepCache` not installed ({error.name})"
    if not hasattr(pipe, "unet"):
        return "DeepCache caches UNet skip branches; this pipeline has no UNet"
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    return helper


def deepcache_variant(pipe: Any, interval: int = 3, branch: int = 0) -> Variant:
    name = f"DeepCache N={interval}"
    helper = _deepcache_helper(pipe, interval, branch)
    if isinstance(helper, str):
        return Variant(name, unavailable=helper)
    return Variant(name, enable=helper.enable, disable=helper.disable)


def tomesd_variant(pipe: Any, ratio: float = 0.5) -> Variant:
    name = f"ToMe r={ratio}"
    try:
        import tomesd
    except ImportError as error:
        return Variant(name, unavailable=f"`tomesd` not installed ({error.name})")
    if not hasattr(pipe, "unet"):
        return Variant(name, unavailable="tomesd patches Stable Diffusion UNets only")
    return Variant(
        name, enable=lambda: tomesd.apply_patch(pipe, ratio=ratio), disable=lambda: tomesd.remove_patch(pipe)
    )


def pab_variant(pipe: Any, spatial: int = 2, cross: int = 6) -> Variant:
    """diffusers' Pyramid Attention Broadcast (made for video DiTs; its block regexes also match UNets)."""
    name = f"PAB s={spatial},c={cross}"
    try:
        from diffusers.hooks import (
            HookRegistry,
            PyramidAttentionBroadcastConfig,
            apply_pyramid_attention_broadcast,
        )
    except ImportError as error:
        return Variant(name, unavailable=f"this diffusers has no Pyramid Attention Broadcast ({error})")
    denoiser = denoiser_of(pipe)
    current: dict[str, int] = {"t": 1000}

    def remember_timestep(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        current["t"] = int(t.flatten()[0].item()) if isinstance(t, torch.Tensor) else int(t)

    handles: list[Any] = []

    def enable() -> None:
        handles.append(denoiser.register_forward_pre_hook(remember_timestep, with_kwargs=True))
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=spatial,
            cross_attention_block_skip_range=cross,
            current_timestep_callback=lambda: current["t"],
        )
        apply_pyramid_attention_broadcast(denoiser, config)

    def disable() -> None:
        for handle in handles:
            handle.remove()
        handles.clear()
        # The denoiser's registry removes the hook from every submodule that holds one (recurse).
        HookRegistry.check_if_exists_or_initialize(denoiser).remove_hook(PAB_HOOK, recurse=True)

    return Variant(name, enable, disable)


def crossgate_deepcache_variant(pipe: Any, gate: int, interval: int = 3, branch: int = 0) -> Variant:
    """crossgate and DeepCache together, composed (:func:`crossgate.compose_deepcache`: DeepCache
    refills its caches at the gate, where the batch halves)."""
    name = f"crossgate m={gate} + DeepCache N={interval}"
    helper = _deepcache_helper(pipe, interval, branch)
    if isinstance(helper, str):
        return Variant(name, unavailable=helper)
    crossgate.compose_deepcache(pipe, helper)

    def enable() -> None:
        helper.enable()
        crossgate.apply(pipe, gate_step=gate)

    def disable() -> None:
        crossgate.remove(pipe)
        helper.disable()

    return Variant(name, enable, disable)


# diffusers' own CFG-cutoff callbacks, by pipeline class (they keep the last prompt row: batch 1)
_CFG_CUTOFF_CALLBACKS = {
    "StableDiffusionPipeline": "SDCFGCutoffCallback",
    "StableDiffusionXLPipeline": "SDXLCFGCutoffCallback",
}
_CFG_CUTOFF_TENSORS = {
    "StableDiffusionPipeline": ("prompt_embeds",),
    "StableDiffusionXLPipeline": ("prompt_embeds", "add_text_embeds", "add_time_ids"),
}


def cfg_cutoff_variant(pipe: Any, gate: int) -> Variant:
    """Ablation: classifier-free guidance dropped after step ``gate`` - 1, cross-attention still computed.

    diffusers' CFG-cutoff callback (``callback_on_step_end``): after the step, ``pipe._guidance_scale
    = 0.0`` (the pipeline's ``do_classifier_free_guidance`` turns off) and the batched conditioning
    (``prompt_embeds``; SDXL also ``add_text_embeds``, ``add_time_ids``) keeps only its cond half, so
    steps ``gate ..`` run the denoiser at batch B on the cond branch, as crossgate's steps after its
    gate do, but with every cross-attention computed. Uses ``diffusers.callbacks``' class for the
    pipeline where it exists, else the same rule written out (the documented recipe).
    """
    name = f"CFG cutoff m={gate}"
    cls = type(pipe).__name__
    tensors = _CFG_CUTOFF_TENSORS.get(cls)
    if tensors is None:
        return Variant(
            name,
            unavailable=f"{cls} has no callback_on_step_end CFG cutoff (CFG is decided once per call)",
        )
    callback: Any
    try:
        import diffusers.callbacks as callbacks

        cutoff = getattr(callbacks, _CFG_CUTOFF_CALLBACKS[cls])
        callback = cutoff(cutoff_step_ratio=None, cutoff_step_index=gate - 1)
        tensor_inputs: list[str] = list(callback.tensor_inputs)
    except (ImportError, AttributeError):

        def callback(pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if step_index == gate - 1:
                pipeline._guidance_scale = 0.0
                for key in tensors:
                    kwargs[key] = kwargs[key].chunk(2)[-1]
            return kwargs

        tensor_inputs = list(tensors)

    def call(kwargs: dict[str, Any]) -> Any:
        return pipe(**kwargs, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=tensor_inputs)

    return Variant(name, call=call)


def _crossgate_v2_counterpart(request: PeerRequest) -> Variant:
    return crossgate_v2_variant(request.pipe, request.gate, request.v2_interval)


@register_peer("tgate", per_gate=True)
def _tgate_package(request: PeerRequest) -> Variant:
    return official_tgate_variant(request.pipe, request.gate)


@register_peer("tgate-v2", counterpart=_crossgate_v2_counterpart)
def _tgate_package_v2(request: PeerRequest) -> Variant:
    return official_tgate_variant(request.pipe, request.gate, request.v2_interval)


@register_peer("deepcache")
def _deepcache(request: PeerRequest) -> Variant:
    return deepcache_variant(request.pipe)


@register_peer("tomesd")
def _tomesd(request: PeerRequest) -> Variant:
    return tomesd_variant(request.pipe)


@register_peer("pab")
def _pab(request: PeerRequest) -> Variant:
    return pab_variant(request.pipe)


@register_peer("crossgate+deepcache")
def _crossgate_deepcache(request: PeerRequest) -> Variant:
    return crossgate_deepcache_variant(request.pipe, request.gate)


@register_peer("cfg-cutoff", per_gate=True)
def _cfg_cutoff(request: PeerRequest) -> Variant:
    return cfg_cutoff_variant(request.pipe, request.gate)


PEERS: tuple[str, ...] = tuple(PEER_REGISTRY)  # the built-in peers, in table order


def compiled_variants(
    pipe: Any, gates: Sequence[int], backend: str, mode: str | None = None, split: bool = False
) -> list[Variant]:
    """Plain and crossgate at each gate with the denoiser compiled: ``torch.compile(denoiser)``
    (``fullgraph=True``) assigned to the pipeline while the row runs, the eager denoiser put back
    after it. One compiled module serves every row, so its graphs are made once (in the warm-ups,
    whose first run is reported as the first-call time) and the timed rounds reuse them. With
    ``split``, each gate gets a second row with ``compile_split_cfg=True``."""
    attr = next(a for a in ("unet", "transformer") if isinstance(getattr(pipe, a, None), torch.nn.Module))
    eager = getattr(pipe, attr)
    compiled = torch.compile(eager, backend=backend, mode=mode, fullgraph=True)

    def use(model: torch.nn.Module) -> None:
        setattr(pipe, attr, model)

    def gated(gate: int, split: bool) -> Variant:
        def enable() -> None:
            use(compiled)
            crossgate.apply(pipe, gate_step=gate, compile_split_cfg=split)

        def disable() -> None:
            crossgate.remove(pipe)
            use(eager)

        name = f"crossgate m={gate} compiled" + (", split" if split else "")
        return Variant(name, enable, disable, versus="plain compiled", macs_from=f"crossgate m={gate}")

    plain = Variant("plain compiled", lambda: use(compiled), lambda: use(eager), macs_from="plain")
    return [plain, *(gated(gate, s) for gate in gates for s in ((False, True) if split else (False,)))]


def build_variants(
    pipe: Any, gates: Sequence[int], peers: Sequence[str], v2_interval: int = 5
) -> list[Variant]:
    """plain, crossgate at each gate, crossgate's counterpart of each requested peer that has one
    (crossgate v2 for the tgate package's v2), then the requested peers in the order given (a
    ``per_gate`` peer once per gate)."""
    unknown = set(peers) - set(PEER_REGISTRY)
    if unknown:
        raise BenchError(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(PEER_REGISTRY)}.")
    request = PeerRequest(pipe, gates[0], v2_interval)
    variants = [Variant("plain")]
    variants += [crossgate_variant(pipe, m) for m in gates]
    for name in dict.fromkeys(peers):
        counterpart = PEER_REGISTRY[name].counterpart
        if counterpart is not None:
            variants.append(counterpart(request))
    for name in peers:
        peer = PEER_REGISTRY[name]
        if peer.per_gate:
            variants += [peer.build(PeerRequest(pipe, m, v2_interval)) for m in gates]
        else:
            variants.append(peer.build(request))
    return variants
