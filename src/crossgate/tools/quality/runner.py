"""``crossgate eval``'s engine: generate held-out captions under several configurations and score them.

Every configuration generates the same (caption, seed) pairs, so the plain pipeline's image at a seed
is the reference for PSNR/SSIM, and accuracy differences are differences of configuration only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import crossgate
from crossgate.adapters import denoiser_of
from crossgate.embedded import scenes
from crossgate.tools.accounting import LinearConvCounter
from crossgate.tools.quality.ablations import (
    GuidanceSchedule,
    cache_only,
    cfg_cutoff,
    deepcache,
    kept_guidance,
    pass_log,
)
from crossgate.tools.quality.judge import Judge, score_images
from crossgate.tools.quality.metrics import frechet_distance, mse, psnr_from_mse, ssim
from crossgate.tools.quality.outputs import finite
from crossgate.tools.quality.sampling import Generation, StepTracker, generate_images, null_text

KINDS = (
    "plain",
    "tgate",
    "null-before",
    "null-after",
    "auto",
    "profile",
    "cfg-cutoff",
    "cache-only",
    "deepcache",
)
SPEC_HELP = (
    "plain, tgate:M[:k=K][:late=K][:w=W][:d=D][:ws=eps][:dc=N][:dca=N][:ts=live|frozen_mean][:kc=1], "
    "null-before:M, null-after:M, "
    "cfg-cutoff:M[:w=W][:d=D][:ws=eps], cache-only:M, deepcache:N, auto:TOL or profile:PATH "
    "(M, K, N ints >= 1; W >= 0, D in (0, 1] and TOL > 0 floats)"
)
GATED_KINDS = ("tgate", "null-before", "null-after", "cfg-cutoff", "cache-only")
_INT_OPTIONS = {
    "k": "interval",
    "late": "late",
    "dc": "deepcache",
    "dca": "deepcache_after",
    "kc": "keep_cfg",
}
_TEXT_OPTIONS = {"ws": "schedule", "ts": "text_stream"}
_FLOAT_OPTIONS = {"w": "guidance", "d": "decay"}


@dataclass(frozen=True)
class RunConfig:
    """One way of sampling.

    ``plain``; ``tgate`` at gate ``m`` (optionally TGATE v2: self-attention reused with interval
    ``interval`` before the gate, ``late`` after it; ``guidance``/``decay``: the engine's
    ``guidance_after_gate``/``guidance_after_gate_decay``); null text before/after step ``m``;
    ``auto`` (gate chosen from convergence at ``tolerance``); ``profile`` (a calibrated JSON).

    Study configurations (:mod:`crossgate.tools.quality.ablations`, not engine options):
    ``cfg-cutoff`` (CFG dropped from ``m`` on, cross-attention still computed), ``cache-only``
    (cross-attention frozen per CFG branch from ``m`` on, both branches still run), ``deepcache``
    (plain sampling under DeepCache with interval ``deepcache``); ``deepcache`` on ``tgate`` composes
    the two; ``schedule="eps"`` keeps guidance with the noise-level-rescaled weights of
    :class:`~crossgate.tools.quality.ablations.GuidanceSchedule` (a study hook, not the engine).
    """

    kind: str
    gate: int | None = None
    interval: int | None = None
    late: int = 1
    tolerance: float | None = None
    profile: str | None = None
    guidance: float = 0.0
    decay: float = 1.0
    schedule: str = "const"
    deepcache: int | None = None
    deepcache_after: int | None = None
    text_stream: str = "frozen"  # joint-attention models (crossgate.joint): ts=live|frozen_mean
    keep_cfg: int = 0  # joint-attention models: kc=1 keeps both CFG branches (text freeze alone)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown configuration kind {self.kind!r}; use one of {KINDS}")
        takes_gate = self.kind in GATED_KINDS
        if takes_gate == (self.gate is None):
            raise ValueError(f"{self.kind!r} {'needs a' if takes_gate else 'takes no'} gate step")
        if self.gate is not None and self.gate < 1:
            raise ValueError(f"gate step must be >= 1, got {self.gate}")
        if (self.interval is not None or self.late != 1) and self.kind != "tgate":
            raise ValueError("k=/late= (self-attention caching) apply to tgate:M only")
        if (self.interval is not None and self.interval < 1) or self.late < 1:
            raise ValueError("self-attention intervals k= and late= must be ints >= 1")
        if self.auto != (self.tolerance is not None):
            raise ValueError(f"{self.kind!r} {'needs a' if self.auto else 'takes no'} tolerance")
        if self.tolerance is not None and not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a positive number, got {self.tolerance}")
        if (self.kind == "profile") != bool(self.profile):
            raise ValueError("profile:PATH needs a path (and only profile takes one)")
        keeps = self.guidance != 0.0 or self.decay != 1.0 or self.schedule != "const"
        if keeps and self.kind not in ("tgate", "cfg-cutoff"):
            raise ValueError(
                "w=/d=/ws= (guidance kept after the gate) apply to tgate:M and cfg-cutoff:M only"
            )
        if not (math.isfinite(self.guidance) and self.guidance >= 0 and 0 < self.decay <= 1):
            raise ValueError(f"w= must be >= 0 and d= in (0, 1], got {self.guidance} and {self.decay}")
        if self.schedule not in ("const", "eps"):
            raise ValueError(f"ws= must be 'eps' (or absent), got {self.schedule!r}")
        if self.schedule == "eps" and self.guidance == 0.0:
            raise ValueError("ws=eps rescales the kept guidance: give its weight w= too")
        if self.deepcache is not None and self.kind not in ("tgate", "deepcache"):
            raise ValueError("dc= (DeepCache) applies to tgate:M only; plain DeepCache is deepcache:N")
        if (self.kind == "deepcache" and self.deepcache is None) or (
            self.deepcache is not None and self.deepcache < 1
        ):
            raise ValueError("deepcache:N needs a cache interval N >= 1 (dc=N on tgate:M)")
        if self.deepcache_after is not None and (self.kind != "tgate" or self.deepcache_after < 1):
            raise ValueError("dca=N (DeepCache interval after the gate) applies to tgate:M only, N >= 1")
        if (self.text_stream != "frozen" or self.keep_cfg) and self.kind != "tgate":
            raise ValueError("ts=/kc= (joint-attention text stream options) apply to tgate:M only")
        if self.keep_cfg not in (0, 1):
            raise ValueError(f"kc= must be 0 or 1, got {self.keep_cfg}")
        if self.deepcache_after is not None and self.deepcache is None:
            object.__setattr__(self, "deepcache", 1)  # no caching before the gate

    @property
    def auto(self) -> bool:
        return self.kind == "auto"

    @property
    def data_dependent(self) -> bool:
        """The gate depends on the images being generated (so MACs are counted on the real batch)."""
        return self.auto

    @property
    def study_hook(self) -> bool:
        """The kept guidance runs through the study hook (any non-engine schedule, or cfg-cutoff)."""
        return self.guidance > 0 and (self.schedule != "const" or self.kind == "cfg-cutoff")

    @property
    def name(self) -> str:
        if self.kind == "plain":
            return "plain"
        if self.auto:
            return f"{self.kind} tol={self.tolerance:g}"
        if self.kind == "profile":
            return f"profile {Path(str(self.profile)).name}"
        if self.kind == "deepcache":
            return f"deepcache dc={self.deepcache}"
        extra = (f" k={self.interval}" if self.interval else "") + (
            f" late={self.late}" if self.late > 1 else ""
        )
        if self.guidance or self.decay != 1.0:
            extra += f" w={self.guidance:g}" + (f" d={self.decay:g}" if self.decay != 1.0 else "")
        if self.schedule != "const":
            extra += f" ws={self.schedule}"
        if self.deepcache is not None and (self.deepcache > 1 or self.deepcache_after is None):
            extra += f" dc={self.deepcache}"
        if self.deepcache_after is not None:
            extra += f" dca={self.deepcache_after}"
        if self.text_stream != "frozen":
            extra += f" ts={self.text_stream}"
        if self.keep_cfg:
            extra += " kc=1"
        return f"{self.kind} m={self.gate}{extra}"

    def tgate_config(self) -> crossgate.TGateConfig:
        """The :class:`crossgate.TGateConfig` of a ``tgate``/``auto``/``profile`` configuration."""
        if self.kind == "profile":
            return crossgate.TGateConfig.from_profile(str(self.profile))
        if self.auto:
            return crossgate.TGateConfig(gate_step="auto", auto_tolerance=self.tolerance)
        if self.kind != "tgate":
            raise ValueError(f"{self.name!r} is not a TGATE configuration")
        engine_guidance = 0.0 if self.study_hook else self.guidance
        return crossgate.TGateConfig(
            gate_step=self.gate,
            self_attention_interval=self.interval,
            self_attention_interval_after=self.late,
            guidance_after_gate=engine_guidance,
            guidance_after_gate_decay=self.decay if engine_guidance else 1.0,
            text_stream=self.text_stream,  # type: ignore[arg-type]  # validated by TGateConfig
            keep_cfg=bool(self.keep_cfg),
        )

    def guidance_schedule(self) -> GuidanceSchedule | None:
        """The study hook's schedule, or None when the engine (or nothing) keeps guidance."""
        return GuidanceSchedule(self.guidance, self.decay, self.schedule) if self.study_hook else None

    @classmethod
    def parse(cls, spec: str) -> RunConfig:
        """``plain``, ``tgate:10``, ``tgate:10:k=3``, ``tgate:10:late=3``, ``tgate:10:w=1:d=0.9``,
        ``tgate:10:w=1:ws=eps``, ``tgate:10:dc=3``, ``null-before:6``, ``null-after:6``,
        ``cfg-cutoff:10``, ``cache-only:10``, ``deepcache:3``, ``auto:0.05``, ``profile:PATH``
        (``10`` alone means ``tgate:10``)."""
        text = spec.strip()
        bad = f"bad configuration {spec!r}; use {SPEC_HELP}"
        if text.lower() == "plain":
            return cls("plain")
        if text.lower().startswith("profile:"):
            return cls("profile", profile=text[len("profile:") :])
        parts = text.lower().split(":")
        if len(parts) == 1:
            parts = ["tgate", *parts]
        kind, value, options = parts[0], parts[1], parts[2:]
        try:
            if kind == "auto":
                if options:
                    raise ValueError(bad)
                return cls(kind, tolerance=float(value))
            if kind == "deepcache":
                if options:
                    raise ValueError(bad)
                return cls(kind, deepcache=int(value))
            fields: dict[str, Any] = {}
            for option in options:
                key, sep, number = option.partition("=")
                name = _INT_OPTIONS.get(key) or _FLOAT_OPTIONS.get(key) or _TEXT_OPTIONS.get(key)
                if not sep or name is None or name in fields:
                    raise ValueError(bad)
                if key in _INT_OPTIONS:
                    fields[name] = int(number)
                elif key in _FLOAT_OPTIONS:
                    fields[name] = float(number)
                else:
                    fields[name] = number
            return cls(kind, int(value), **fields)
        except ValueError as error:
            raise ValueError(
                bad if "invalid literal" in str(error) or "could not" in str(error) else str(error)
            ) from None


@dataclass
class ConfigResult:
    """Scores of one configuration (accuracies are fractions; MACs are per image, denoiser only)."""

    name: str
    kind: str
    gate: int | None
    images: int
    object_accuracy: float
    relation_accuracy: float
    relation_flipped: float
    relation_margin: float
    caption_accuracy: float
    located: float
    frechet: float
    psnr: float
    ssim: float
    macs_per_image: int
    macs_vs_plain: float
    seconds: float
    seconds_per_image: float
    denoiser_batches: list[int] = field(default_factory=list)
    gate_used: str = ""  # the gate(s) the engine used, one per pipeline call (auto: chosen live)


@dataclass
class EvalReport:
    steps: int
    guidance_scale: float | None
    per_caption: int
    captions: list[str]
    seed: int
    reference_frechet: float
    results: list[ConfigResult]
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "samples"}
        return finite(data)


def reference_images(captions: Sequence[str], per_caption: int, seed: int, size: int = 32) -> np.ndarray:
    """Real procedural images of ``captions`` (``per_caption`` each), the FD's reference set."""
    rng = np.random.default_rng(seed)
    comps = [scenes.parse_caption(c) for c in captions]
    return np.stack(
        [scenes.render(scenes.sample_scene(rng, comp), size) for comp in comps for _ in range(per_caption)]
    )


def count_macs_per_image(pipe: Any, prompt: str, run: Callable[..., Generation]) -> tuple[int, Any]:
    """Linear/conv MACs the denoiser executes for one image under a configuration, and its CallStats.

    ``run(prompts, seeds)`` generates under the configuration. Counted live
    (:class:`crossgate.tools.accounting.LinearConvCounter`, the paper's calflops convention) on a separate
    one-image call, so the timed calls carry no counting hooks; a replayed cross-attention runs no
    layers and costs nothing.
    """
    with LinearConvCounter(denoiser_of(pipe)) as counter:
        generation = run([prompt], [0])
    return counter.total, (generation.stats[-1] if generation.stats else None)


def count_macs_live(pipe: Any, call: Callable[[], Generation]) -> tuple[int, Generation]:
    """Linear/conv MACs per image executed by ``call()`` itself (for data-dependent gates)."""
    with LinearConvCounter(denoiser_of(pipe)) as counter:
        generation = call()
    return round(counter.total / len(generation.images)), generation


def evaluate(
    pipe: Any,
    captions: Sequence[str],
    configs: Sequence[RunConfig],
    per_caption: int = 4,
    steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 32,
    judge: Judge | None = None,
    keep_samples: int = 8,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Generate ``per_caption`` images per caption under each configuration and score them.

    The plain configuration runs first (added when missing): it is the reference for PSNR/SSIM and
    for the MACs ratio. Image ``k`` of caption ``i`` uses seed ``seed + i * per_caption + k`` in
    every configuration. Wall time counts the pipeline calls only, after a warm-up call.
    """

    log = log or (lambda line: print(line, flush=True))
    if not captions:
        raise ValueError("no captions to evaluate")
    if per_caption < 1:
        raise ValueError(f"per_caption must be >= 1, got {per_caption}")
    bad = [c.name for c in configs if c.kind.startswith("null") and c.gate is not None and c.gate > steps]
    if bad:
        raise ValueError(f"null-text gate steps beyond --steps {steps}: {bad}")
    judge = judge or Judge()
    configs = list(dict.fromkeys([RunConfig("plain"), *configs]))
    comps = [judge.parse(c) for c in captions]
    prompts = [c for c in captions for _ in range(per_caption)]
    targets = [comp for comp in comps for _ in range(per_caption)]
    seeds = [seed + i for i in range(len(prompts))]
    reference = reference_images(captions, per_caption, seed + 1_000_003)
    floor = reference_images(captions, per_caption, seed + 2_000_003)
    ref_features = np.stack([judge.features(im) for im in reference])
    reference_fd = frechet_distance(ref_features, np.stack([judge.features(im) for im in floor]))
    # Warm-up (allocations, lazy imports) so the first configuration's wall time is not inflated.
    generate_images(pipe, prompts[:1], seeds[:1], 1, guidance_scale, batch_size)

    plain_images: np.ndarray | None = None
    plain_macs = 0
    results: list[ConfigResult] = []
    samples: dict[str, np.ndarray] = {}
    for config in configs:
        log(f"[eval] {config.name}: {len(prompts)} images, {steps} steps")

        def run(ps: Sequence[str], ss: Sequence[int], config: RunConfig = config):
            return run_config(pipe, config, ps, ss, steps, guidance_scale, batch_size)

        if config.data_dependent:
            # The gate is chosen from the batch's own convergence, so a separate one-image call
            # could gate elsewhere: count the real calls (their wall time then includes the hooks).
            macs, generation = count_macs_live(pipe, lambda: run(prompts, seeds))
            stats = generation.stats[-1] if generation.stats else None
        else:
            generation = run(prompts, seeds)
            macs, stats = count_macs_per_image(pipe, prompts[0], run)
        images = generation.images
        judged = _resize(images, 32) if images.shape[1:3] != (32, 32) else images
        gate_used = ",".join(str(s.gate) for s in generation.stats if s is not None)
        if plain_images is None:
            plain_images, plain_macs = images, macs
        acc = score_images(judge, judged, targets)
        features = np.stack([judge.features(im) for im in judged])
        errors = mse(images, plain_images)
        results.append(
            ConfigResult(
                name=f"{config.name} (gate {gate_used})"
                if config.kind in ("auto", "profile")
                else config.name,
                kind=config.kind,
                gate=config.gate,
                images=len(images),
                object_accuracy=acc.object_accuracy,
                relation_accuracy=acc.relation_accuracy,
                relation_flipped=acc.relation_flipped_accuracy,
                relation_margin=acc.relation_margin,
                caption_accuracy=acc.caption_accuracy,
                located=acc.located,
                frechet=frechet_distance(features, ref_features),
                psnr=psnr_from_mse(float(errors.mean())),
                ssim=float(ssim(images, plain_images).mean()),
                macs_per_image=int(macs),
                macs_vs_plain=macs / plain_macs if plain_macs else float("nan"),
                seconds=generation.seconds,
                seconds_per_image=generation.seconds / len(images),
                denoiser_batches=list(stats.denoiser_batches) if stats is not None else [],
                gate_used=gate_used,
            )
        )
        samples[config.name] = images[::per_caption][:keep_samples]
        log(
            f"[eval] {config.name}: objects {acc.object_accuracy:.3f} relation {acc.relation_accuracy:.3f} "
            f"(flipped {acc.relation_flipped_accuracy:.3f}) FD {results[-1].frechet:.3f} "
            f"{generation.seconds:.1f}s"
        )
    return EvalReport(
        steps=steps,
        guidance_scale=guidance_scale,
        per_caption=per_caption,
        captions=list(captions),
        seed=seed,
        reference_frechet=reference_fd,
        results=results,
        samples=samples,
    )


def run_config(
    pipe: Any,
    config: RunConfig,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float | None,
    batch_size: int,
) -> Generation:
    """The images ``config`` generates for ``prompts`` (seed ``seeds[i]`` each), with its step counts."""
    if config.kind == "plain":
        return generate_images(pipe, prompts, seeds, steps, guidance_scale, batch_size)
    tracker = StepTracker()
    schedule = config.guidance_schedule()
    with contextlib.ExitStack() as stack:
        if config.deepcache is not None:
            stack.enter_context(
                deepcache(
                    pipe,
                    config.deepcache,
                    composed=config.kind == "tgate",
                    after=config.deepcache_after,
                    gate=config.gate,
                )
            )
        if config.kind == "deepcache":
            return generate_images(pipe, prompts, seeds, steps, guidance_scale, batch_size)
        if config.kind in ("tgate", "auto", "profile"):
            stack.enter_context(crossgate.enabled(pipe, config.tgate_config()))
            if schedule is not None:
                stack.enter_context(kept_guidance(pipe, int(config.gate or 0), schedule, tracker))
            return generate_images(
                pipe,
                prompts,
                seeds,
                steps,
                guidance_scale,
                batch_size,
                tracker=tracker if schedule is not None else None,
                after_call=lambda: crossgate.last_call(pipe),
            )
        if config.kind in ("cfg-cutoff", "cache-only"):
            gate = int(config.gate or 0)
            if config.kind == "cfg-cutoff":
                stack.enter_context(cfg_cutoff(pipe, gate, tracker))
                if schedule is not None:
                    stack.enter_context(kept_guidance(pipe, gate, schedule, tracker))
            else:
                stack.enter_context(cache_only(pipe, gate, tracker))
            log = stack.enter_context(pass_log(pipe, gate))
            return generate_images(
                pipe, prompts, seeds, steps, guidance_scale, batch_size, tracker=tracker, after_call=log.take
            )
    window = "before" if config.kind == "null-before" else "after"
    with null_text(pipe, window, config.gate, tracker):
        return generate_images(pipe, prompts, seeds, steps, guidance_scale, batch_size, tracker=tracker)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in images]
    )


def default_captions(which: str = "held-out", limit: int | None = None) -> list[str]:
    """Captions of the embedded scenes: ``held-out`` (never trained on), ``train`` or ``all``."""
    pick = {
        "held-out": scenes.held_out_compositions,
        "train": scenes.training_compositions,
        "all": scenes.all_compositions,
    }
    if which not in pick:
        raise ValueError(f"unknown caption set {which!r}; use one of {sorted(pick)}")
    captions = [scenes.composition_caption(c) for c in pick[which]()]
    return captions[:limit] if limit else captions
