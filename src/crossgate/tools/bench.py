"""Side-by-side latency benchmark: plain vs crossgate vs the peers a user would pick instead.

Every configuration runs on the same pipeline object in one process, after a warm-up, in an order
that rotates each round (so drift in machine load hits all configurations alike); the reported
time is the median over rounds. Each configuration's warm-up run also counts the linear/conv MACs
its denoiser really executed (:class:`~crossgate.tools.accounting.LinearConvCounter`), so every row gets
a MACs-predicted speed-up and an efficiency = measured speed-up / predicted speed-up. A peer that
is not installed or fails on this pipeline stays in the table with the reason.
"""

from __future__ import annotations

import csv
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import crossgate
from crossgate.tools.accounting import LinearConvCounter, bundled_config

PROMPT = "a photo of a red cat sitting on a blue sofa"

# Random-weight architectures for benchmarking: bundled config and default (CPU-friendly) size.
BENCH_MODELS: dict[str, tuple[str, int]] = {
    "sd15": ("sd15_unet.json", 256),
    "sd21": ("sd21_unet.json", 768),
    "sdxl": ("sdxl_unet.json", 512),
    "tiny": ("", 32),
    "tiny-sdxl": ("", 32),
    "embedded": ("", 32),  # the shipped trained model (crossgate.embedded), loaded by the CLI
}
PEERS = ("tgate", "tgate-v2", "deepcache", "tomesd", "pab")


class BenchError(ValueError):
    """A benchmark setting is invalid; the message says what to use."""


# --------------------------------------------------------------------------------------------------
# Pipelines


def random_pipeline(
    model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Any:
    """A full diffusers pipeline with the real denoiser architecture and random weights, offline.

    The text encoders are small random CLIP models of the hidden sizes the UNet expects (their cost
    is the same for every configuration); the VAE is the SD VAE architecture (scale factor 8).
    """
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from crossgate.testing import (
        _ddim,
        char_tokenizer,
        clip_text_config,
        tiny_sd_pipeline,
        tiny_sdxl_pipeline,
    )

    if model == "tiny":
        return tiny_sd_pipeline(seed).to(device, dtype)
    if model == "tiny-sdxl":
        return tiny_sdxl_pipeline(seed).to(device, dtype)
    if model not in BENCH_MODELS:
        raise BenchError(f"unknown bench model {model!r}; use one of {', '.join(BENCH_MODELS)}.")
    torch.manual_seed(seed)
    unet_config = bundled_config(BENCH_MODELS[model][0])
    tokenizer = char_tokenizer()
    init_device = device if device.startswith("cuda") else "cpu"
    with torch.device(init_device):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(bundled_config("sd_vae.json"))
        if unet_config.get("addition_embed_type") == "text_time":
            pooled = (
                unet_config["projection_class_embeddings_input_dim"]
                - 6 * unet_config["addition_time_embed_dim"]
            )
            second = unet_config["cross_attention_dim"] - 768
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=CLIPTextModel(clip_text_config(tokenizer, 768, heads=12)),
                text_encoder_2=CLIPTextModelWithProjection(
                    clip_text_config(tokenizer, second, pooled, heads=second // 64)
                ),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=unet,
                scheduler=_ddim(),
                force_zeros_for_empty_prompt=False,
            )
        else:
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=CLIPTextModel(
                    clip_text_config(
                        tokenizer,
                        unet_config["cross_attention_dim"],
                        heads=unet_config["cross_attention_dim"] // 64,
                    )
                ),
                tokenizer=tokenizer,
                unet=unet,
                scheduler=_ddim(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


# --------------------------------------------------------------------------------------------------
# Configurations


@dataclass
class Variant:
    """One configuration: how to switch it on and off, and how to call the pipeline under it."""

    name: str
    enable: Callable[[], None] = lambda: None
    disable: Callable[[], None] = lambda: None
    call: Callable[[dict[str, Any]], Any] | None = None
    unavailable: str | None = None


def _denoiser(pipe: Any) -> torch.nn.Module:
    return getattr(pipe, "unet", None) or pipe.transformer


def crossgate_variant(pipe: Any, gate: int) -> Variant:
    return Variant(
        f"crossgate m={gate}",
        enable=lambda: crossgate.apply(pipe, gate_step=gate),
        disable=lambda: crossgate.remove(pipe),
    )


def crossgate_v2_variant(pipe: Any, gate: int, interval: int) -> Variant:
    """crossgate with TGATE v2's self-attention caching (interval ``k`` before the gate)."""
    name = f"crossgate v2 m={gate},k={interval}"
    if "self_attention_interval" not in crossgate.TGateConfig.__dataclass_fields__:
        return Variant(name, unavailable="this crossgate engine has no self-attention schedule")
    return Variant(
        name,
        enable=lambda: crossgate.apply(pipe, gate_step=gate, self_attention_interval=interval),
        disable=lambda: crossgate.remove(pipe),
    )


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
        for module in _denoiser(pipe).modules():
            if type(module).__name__ == "Attention":
                module.__dict__.pop("forward", None)
                module.__dict__.pop("cache", None)
        pipe.__dict__.pop("tgate", None)

    return Variant(name, enable, disable, call=lambda kw: pipe.tgate(**kw, gate_step=gate, **schedule))


def deepcache_variant(pipe: Any, interval: int = 3, branch: int = 0) -> Variant:
    name = f"DeepCache N={interval}"
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError as error:
        return Variant(name, unavailable=f"`DeepCache` not installed ({error.name})")
    if not hasattr(pipe, "unet"):
        return Variant(name, unavailable="DeepCache caches UNet skip branches; this pipeline has no UNet")
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
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
    denoiser = _denoiser(pipe)
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
        for module in denoiser.modules():
            if hasattr(module, "_diffusers_hook"):
                registry: HookRegistry = module._diffusers_hook
                if "pyramid_attention_broadcast" in registry.hooks:
                    registry.remove_hook("pyramid_attention_broadcast", recurse=False)

    return Variant(name, enable, disable)


def build_variants(
    pipe: Any, gates: Sequence[int], peers: Sequence[str], v2_interval: int = 5
) -> list[Variant]:
    """plain, crossgate at each gate, the crossgate v2 placeholder, then the requested peers."""
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise BenchError(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(PEERS)}.")
    variants = [Variant("plain")]
    variants += [crossgate_variant(pipe, m) for m in gates]
    if "tgate-v2" in peers:
        variants.append(crossgate_v2_variant(pipe, gates[0], v2_interval))
    for peer in peers:
        if peer == "tgate":
            variants.append(official_tgate_variant(pipe, gates[0]))
        elif peer == "tgate-v2":
            variants.append(official_tgate_variant(pipe, gates[0], v2_interval))
        elif peer == "deepcache":
            variants.append(deepcache_variant(pipe))
        elif peer == "tomesd":
            variants.append(tomesd_variant(pipe))
        elif peer == "pab":
            variants.append(pab_variant(pipe))
    return variants


# --------------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    macs: int | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


@dataclass
class BenchReport:
    model: str
    setting: str
    results: list[Result]

    def baseline(self) -> Result:
        return self.results[0]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per configuration: times, speed-ups, MACs, efficiency (None where unknown)."""
        base = self.baseline()
        rows = []
        for r in self.results:
            speedup = base.median / r.median if base.median and r.median else None
            predicted = base.macs / r.macs if base.macs and r.macs else None
            rows.append(
                {
                    "model": self.model,
                    "config": r.name,
                    "median_s": r.median,
                    "min_s": min(r.times) if r.times else None,
                    "runs": len(r.times),
                    "speedup": speedup,
                    "gmacs": r.macs / 1e9 if r.macs else None,
                    "predicted_speedup": predicted,
                    "efficiency": speedup / predicted if speedup and predicted else None,
                    "note": r.error or "",
                }
            )
        return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_bench(
    pipe: Any,
    variants: Sequence[Variant],
    call_kwargs: dict[str, Any],
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    model: str = "",
    setting: str = "",
) -> BenchReport:
    """Warm up and count MACs per configuration, then time ``repeats`` rotating rounds.

    ``warmup=0`` (for slow CPU runs) skips the untimed runs and counts MACs in the first round.
    """
    results = {v.name: Result(v.name, error=v.unavailable) for v in variants}
    denoiser = _denoiser(pipe)

    def once(variant: Variant, count: bool = False) -> float:
        kwargs = dict(call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
        variant.enable()
        try:
            counter = LinearConvCounter(denoiser)
            _sync(device)
            start = time.perf_counter()
            if count:
                counter.__enter__()
            try:
                (variant.call or (lambda kw: pipe(**kw)))(kwargs)
            finally:
                counter.__exit__(None, None, None)
            _sync(device)
            elapsed = time.perf_counter() - start
        finally:
            variant.disable()
        if count:
            results[variant.name].macs = counter.total
        return elapsed

    live = [v for v in variants if v.unavailable is None]
    for variant in live:
        try:
            for i in range(warmup):
                seconds = once(variant, count=i == 0)
                log(f"  warm-up {variant.name}: {seconds:.2f} s")
        except Exception as error:  # a peer that breaks on this pipeline/diffusers stays in the table
            results[
                variant.name
            ].error = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            log(f"  {variant.name} failed:\n{traceback.format_exc(limit=3)}")
    live = [v for v in live if results[v.name].error is None]
    for round_ in range(repeats):
        shift = round_ % max(1, len(live))
        for variant in live[shift:] + live[:shift]:
            if results[variant.name].error is not None:
                continue
            try:
                # Without warm-up the first round also counts MACs (the hooks cost microseconds).
                seconds = once(variant, count=warmup == 0 and round_ == 0)
            except Exception as error:
                results[
                    variant.name
                ].error = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
                log(f"  {variant.name} failed:\n{traceback.format_exc(limit=3)}")
                continue
            results[variant.name].times.append(seconds)
            log(f"  round {round_ + 1}/{repeats} {variant.name}: {seconds:.2f} s")
    return BenchReport(model, setting, [results[v.name] for v in variants])


# --------------------------------------------------------------------------------------------------
# Output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(reports: Sequence[BenchReport]) -> str:
    lines = []
    for report in reports:
        lines += [
            f"### {report.model} ({report.setting})",
            "",
            "| config | median s | speed-up | GMACs per image (counted) | MACs speed-up | efficiency | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report.rows():
            lines.append(
                f"| {row['config']} | {_fmt(row['median_s'], '.3f')} | {_fmt(row['speedup'], '.3f')}x "
                f"| {_fmt(row['gmacs'], '.5g')} | {_fmt(row['predicted_speedup'], '.3f')}x "
                f"| {_fmt(row['efficiency'], '.3f')} | {row['note']} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_csv(reports: Sequence[BenchReport], path: Path) -> None:
    rows = [row for report in reports for row in report.rows()]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_chart(reports: Sequence[BenchReport], path: Path, title: str = "") -> bool:
    """Measured vs MACs-predicted speed-up per configuration; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4.5), squeeze=False)
    for ax, report in zip(axes[0], reports):
        rows = [r for r in report.rows() if r["speedup"] is not None]
        names = [r["config"] for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["speedup"] for r in rows], 0.4, label="measured")
        ax.bar([i + 0.2 for i in x], [r["predicted_speedup"] or 0 for r in rows], 0.4, label="MACs-predicted")
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("speed-up over plain")
        ax.set_title(f"{report.model} ({report.setting})", fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
