"""One comparison: the plain pipeline and crossgate on the same seed, timed and counted.

Pure logic, no Gradio: the page (:mod:`crossgate.app.ui`) turns a :class:`Comparison` into pictures
and tables, and tests drive :class:`ComparisonRunner` directly.

How each number is made, and why:

* Wall time: timed by ``crossgate bench``'s runner (:func:`crossgate.tools.bench.run_bench`):
  ``Settings.rounds`` rounds of one plain and one crossgate call in alternating order, after one
  untimed warm-up per loaded pipeline; the page shows the medians, the speed-up of the medians and
  the min-max of the per-round speed-ups, and marks fewer than 3 rounds as indicative. Timed calls
  carry no counting hooks (only the progress callback, on both sides).
* Executed MACs (denoiser, linear+conv, the TGATE paper's convention): :func:`executed_macs` of
  ``crossgate.tools.accounting`` applied to each call's denoiser passes (one image a call). The per-sample
  counts come from a :class:`CallMeter` on the warm-up call. With DeepCache composed, the crossgate
  call is counted live by the meter instead, because DeepCache skips blocks that ``CallStats`` does
  not see.
* Convergence curve: the engine's own statistic (the one ``gate_step="auto"`` decides on). For a
  fixed gate the call runs the ``"auto"`` policy pinned at that very gate (minimum = maximum), so the
  curve is this call's, costs no extra call, and the gate and the image are exactly the fixed gate's.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import crossgate
from crossgate.config import DEFAULT_GATE_STEP, ConfigError, TGateConfig, fraction_to_steps, parse_gate_step
from crossgate.tools.bench.runner import Timing

Gate = int | float | Literal["auto"]
Progress = Callable[[float, str], None]

MAX_STEPS = 500  # a typo such as 2500 steps should be refused, not run for an hour
MAX_ROUNDS = 20
DEFAULT_ROUNDS = 3  # the fewest the bench quotes a median from
MAX_SEED = 2**63 - 1


class InputError(ValueError):
    """Input the page should refuse with this message (the app keeps serving)."""


@dataclass(frozen=True)
class Settings:
    """What one click asks for (already typed: the page converts its widgets' values)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float | None = None  # None: the pipeline's default
    gate: Gate = DEFAULT_GATE_STEP
    self_attention_interval: int | None = None  # TGATE v2's k; None: off (v1)
    deepcache_interval: int | None = None  # DeepCache's cache interval; None: not composed
    rounds: int = DEFAULT_ROUNDS  # timed rounds of each pipeline (alternating); 1: indicative only


@dataclass(frozen=True)
class Comparison:
    """Everything one click produced: both images, times, MACs, the gate, the curve, per-layer counts.

    ``plain_times`` / ``tgate_times``: the wall time of each timed round (see :attr:`timing`).
    ``*_macs`` are per call (one image); None when the pipeline's denoiser cannot be counted.
    ``convergence[i]`` is the layer-averaged relative change at step ``i + 1`` (this call's steps
    before the gate). ``threshold`` is the value ``"auto"`` compares it with, for ``"auto"`` only.
    """

    settings: Settings
    model: str
    plain_image: Any
    tgate_image: Any
    plain_times: tuple[float, ...]
    tgate_times: tuple[float, ...]
    plain_macs: int | None
    tgate_macs: int | None
    macs_method: str
    gate: int
    num_steps: int
    cfg: bool | None
    convergence: list[float]
    threshold: float | None
    cross_attention_computed: dict[str, int]
    cross_attention_replays: dict[str, int]
    self_attention_computed: dict[str, int]
    denoiser_batches: tuple[list[int], list[int]]
    notes: list[str] = field(default_factory=list)

    @property
    def engaged(self) -> bool:
        """Whether the gate closed inside the call (else crossgate's output is the plain one)."""
        return self.gate < self.num_steps

    @property
    def timing(self) -> Timing:
        """The rounds as the bench reads them: medians, speed-up, its per-round min-max, indicative."""
        return Timing(self.plain_times, self.tgate_times)

    @property
    def plain_seconds(self) -> float:
        """Median wall time of the plain calls."""
        return self.timing.base_median

    @property
    def tgate_seconds(self) -> float:
        """Median wall time of the crossgate calls."""
        return self.timing.median

    @property
    def speedup(self) -> float:
        """Speed-up of the medians (read it with :attr:`timing`'s spread and ``indicative``)."""
        return self.plain_seconds / self.tgate_seconds if self.tgate_seconds > 0 else math.inf

    @property
    def macs_ratio(self) -> float | None:
        if self.plain_macs is None or self.tgate_macs is None or self.plain_macs == 0:
            return None
        return self.tgate_macs / self.plain_macs


def parse_gate(text: object) -> Gate:
    """The gate from the page's text box: ``"10"`` (steps), ``"0.4"`` (fraction) or ``"auto"``
    (:func:`crossgate.config.parse_gate_step`, the parser ``--gate-step`` uses too)."""
    try:
        return parse_gate_step(text)
    except ConfigError as error:
        raise InputError(str(error)) from None


def validate(settings: Settings) -> TGateConfig:
    """The crossgate configuration ``settings`` asks for, or :class:`InputError`; nothing runs first."""
    if not settings.prompt.strip():
        raise InputError("type a prompt (or pick one of the example captions).")
    if isinstance(settings.steps, bool) or not isinstance(settings.steps, int) or settings.steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {settings.steps!r}.")
    if settings.steps > MAX_STEPS:
        raise InputError(f"steps must be at most {MAX_STEPS}, got {settings.steps}.")
    if (
        isinstance(settings.seed, bool)
        or not isinstance(settings.seed, int)
        or not 0 <= settings.seed <= MAX_SEED
    ):
        raise InputError(f"seed must be a whole number from 0 to 2^63-1, got {settings.seed!r}.")
    if settings.guidance is not None and not math.isfinite(settings.guidance):
        raise InputError(f"guidance must be a finite number, got {settings.guidance!r}.")
    rounds = settings.rounds
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise InputError(f"timing rounds must be a whole number from 1 to {MAX_ROUNDS}, got {rounds!r}.")
    interval = settings.deepcache_interval
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
        raise InputError(f"the DeepCache interval must be a whole number >= 1, got {interval!r}.")
    try:
        return TGateConfig(
            gate_step=parse_gate(settings.gate), self_attention_interval=settings.self_attention_interval
        )
    except ConfigError as error:
        raise InputError(str(error)) from None


def measuring_config(config: TGateConfig, num_steps: int) -> TGateConfig:
    """``config`` with the convergence statistic switched on and the gate unchanged.

    ``"auto"`` measures already. A fixed gate ``m`` becomes ``"auto"`` with its earliest and latest
    gate both at ``m`` (``m >= steps``: at the last step, where nothing is gated either), so the
    policy can only close at ``m``: same gate, same self-attention plan, same image.
    """
    if config.is_auto:
        return config
    gate = min(config.resolve_gate(num_steps), num_steps)
    fraction = gate / num_steps
    if fraction_to_steps(fraction, num_steps) != gate:  # float rounding; never seen, but stay exact
        return config
    return config.with_overrides(gate_step="auto", auto_min_fraction=fraction, auto_max_fraction=fraction)


def deepcache_available(pipe: Any = None) -> bool:
    """DeepCache can be composed: the package is installed and (given a pipeline) it has a UNet."""
    if importlib.util.find_spec("DeepCache") is None:
        return False
    return pipe is None or hasattr(pipe, "unet")


def example_captions() -> list[tuple[str, str]]:
    """``(label, caption)`` for every scene the embedded model knows; held-out ones are marked."""
    from crossgate.embedded import scenes

    held_out = set(scenes.held_out_compositions())
    return [
        (
            f"{scenes.composition_caption(comp)}  (held-out)"
            if comp in held_out
            else scenes.composition_caption(comp),
            scenes.composition_caption(comp),
        )
        for comp in scenes.all_compositions()
    ]


def load_model(model: str | None, device: str = "auto") -> tuple[Any, str]:
    """``(pipeline, label)`` for a folder or Hub id (None or "": the embedded model), validated.

    Raises :class:`InputError` with what to do for an unknown folder, a failed load, or a pipeline
    crossgate cannot gate.
    """
    from crossgate.loading import LoadError, resolve_device
    from crossgate.loading import load_pipeline as load_any

    device = resolve_device(device)
    model = (model or "").strip() or None
    try:
        if model is None:
            from crossgate.embedded import MODEL_NAME, load_pipeline

            try:
                pipe = load_pipeline().to(device)
            except FileNotFoundError as error:
                raise InputError(str(error)) from None
            label = f"{MODEL_NAME} (embedded)"
        else:
            pipe = load_any(model, device)
            label = model
    except LoadError as error:
        raise InputError(str(error)) from None
    pipe.set_progress_bar_config(disable=True)
    try:
        crossgate.check(pipe, TGateConfig())
    except crossgate.UnsupportedPipelineError as error:
        raise InputError(f"{label}: {error}") from None
    return pipe, label


class ComparisonRunner:
    """Holds the loaded pipeline and runs comparisons on it, one at a time.

    ``load(model)`` swaps the pipeline (the previous one is dropped, not kept around in memory);
    ``run(settings)`` validates before any work, so bad input never touches the pipeline.
    """

    def __init__(self, pipe: Any, model: str, device: str = "auto") -> None:
        self.pipe = pipe
        self.model = model
        self.model_arg: str | None = None
        self.device = device
        self._call_macs: Any = None
        self._macs_problem = ""
        self._warm = False
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: str | None = None, device: str = "auto") -> ComparisonRunner:
        pipe, label = load_model(model, device)
        runner = cls(pipe, label, device)
        runner.model_arg = (model or "").strip() or None
        return runner

    def wants_load(self, model: str | None) -> bool:
        """Whether ``model`` (None/"": the embedded one) is another model than the one loaded."""
        return ((model or "").strip() or None) != self.model_arg

    def load(self, model: str | None) -> bool:
        """Serve ``model`` from now on (None/"": the embedded one); False when it is already loaded."""
        if not self.wants_load(model):
            return False
        wanted = (model or "").strip() or None
        with self._lock:
            pipe, label = load_model(wanted, self.device)
            self.pipe, self.model, self.model_arg = pipe, label, wanted
            self._call_macs, self._warm = None, False
        return True

    def check(self, settings: Settings) -> TGateConfig:
        """The configuration ``settings`` asks for on the loaded pipeline, or :class:`InputError`."""
        config = validate(settings)
        try:
            crossgate.check(self.pipe, config)
        except (ConfigError, crossgate.UnsupportedPipelineError) as error:
            raise InputError(str(error)) from None
        if settings.deepcache_interval is not None and not deepcache_available(self.pipe):
            raise InputError(
                "DeepCache is not available here: it needs the DeepCache package "
                "(pip install DeepCache) and a pipeline with a UNet."
            )
        return config

    def run(self, settings: Settings, progress: Progress | None = None) -> Comparison:
        """Validate (before any work), warm up once per loaded pipeline, then compare."""
        with self._lock:
            pipe = self.pipe
            config = self.check(settings)
            report = progress or (lambda fraction, text: None)
            if not self._warm:
                report(0.0, "warm-up (untimed)")
                self._warm_up(settings, config)
            return self._compare(pipe, settings, config, report)

    # -- the calls ---------------------------------------------------------------------------------

    @staticmethod
    def _callback(callback: Callable[[int], None]) -> dict[str, Any]:
        """``callback_on_step_end`` calling ``callback(step)`` after each step (1-based)."""

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            callback(step + 1)
            return tensors

        return {"callback_on_step_end": on_step_end}

    def _kwargs(self, settings: Settings, steps: int, callback: Callable[[int], None] | None) -> dict:
        import torch

        kwargs: dict[str, Any] = dict(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt.strip() or None,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(settings.seed),
        )
        if settings.guidance is not None:
            kwargs["guidance_scale"] = settings.guidance
        if callback is not None:

            def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
                callback(step + 1)
                return tensors

            kwargs["callback_on_step_end"] = on_step_end
        return kwargs

    def _warm_up(self, settings: Settings, config: TGateConfig) -> None:
        """One short plain call (metered: the per-sample MACs) and one gated call, both untimed."""
        from crossgate.tools.accounting import CallMeter

        warm = Settings(prompt=settings.prompt, seed=settings.seed, guidance=settings.guidance)
        with CallMeter(self.pipe) as meter:
            self.pipe(**self._kwargs(warm, 2, None))
        try:
            self._call_macs, self._macs_problem = meter.call_macs(), ""
        except Exception as error:  # MACs are an extra: a denoiser the counter cannot build still runs
            self._call_macs, self._macs_problem = None, f"{type(error).__name__}: {error}"
        with crossgate.enabled(self.pipe, config.with_overrides(gate_step=1)):
            self.pipe(**self._kwargs(warm, 2, None))
        self._warm = True

    def _compare(self, pipe: Any, settings: Settings, config: TGateConfig, report: Progress) -> Comparison:
        from crossgate.adapters import denoiser_of
        from crossgate.gate import CallStats
        from crossgate.tools.accounting import AccountingError, CallMeter, executed_macs
        from crossgate.tools.bench import Variant, run_bench

        n, rounds = settings.steps, settings.rounds
        calls = 2 * rounds
        done = [0]  # timed calls finished, for the one progress display

        def stepper(label: str) -> Callable[[int], None]:
            def on_step(step: int) -> None:
                round_ = done[0] // 2 + 1
                report(
                    min(1.0, (done[0] + step / n) / calls),
                    f"round {round_}/{rounds}, {label}: step {step}/{n}",
                )

            return on_step

        kept: dict[str, Any] = {}
        # Plain: the pipeline's own call; one pre-hook notes each denoiser pass's batch for the MACs.
        batches: list[int] = []

        def plain_call(kwargs: dict) -> None:
            batches.clear()
            handle = denoiser_of(pipe).register_forward_pre_hook(
                lambda module, args, kw: batches.append(_batch_of(args, kw)), with_kwargs=True
            )
            try:
                kept["plain"] = pipe(**kwargs, **self._callback(stepper("plain"))).images[0]
            finally:
                handle.remove()
                done[0] += 1

        helpers: list[Any] = []
        metered: dict[str, Any] = {}

        def enable() -> None:
            session = crossgate.enabled(pipe, measuring_config(config, n))
            session.__enter__()
            helpers.append((session, self._deepcache(pipe, settings.deepcache_interval)))

        def disable() -> None:
            session, helper = helpers.pop()
            if helper is not None:
                helper.disable()
            session.__exit__(None, None, None)

        def tgate_call(kwargs: dict) -> None:
            kwargs = dict(kwargs, **self._callback(stepper("crossgate")))
            try:
                # DeepCache skips blocks CallStats cannot see: its first call is counted live
                if settings.deepcache_interval is not None and "meter" not in metered:
                    with CallMeter(pipe) as meter:
                        kept["tgate"] = pipe(**kwargs).images[0]
                    metered["meter"] = meter
                else:
                    kept["tgate"] = pipe(**kwargs).images[0]
                kept["stats"] = crossgate.last_call(pipe)
            finally:
                done[0] += 1

        report(0.0, f"round 1/{rounds}, plain: step 0/{n}")
        bench = run_bench(
            pipe,
            [
                Variant("plain", call=plain_call),
                Variant("crossgate", enable=enable, disable=disable, call=tgate_call),
            ],
            self._kwargs(settings, n, None),
            repeats=rounds,
            warmup=0,  # warmed up once per loaded model (run)
            seed=settings.seed,
            device=getattr(getattr(pipe, "device", None), "type", None) or "cpu",
            log=lambda text: None,
            count_macs=False,  # counted below from CallStats, with no hooks in a timed call
        )
        for result in bench.results:
            if result.error:
                raise RuntimeError(f"the {result.name} call {result.error}")
        report(1.0, "done")
        stats = kept.get("stats")
        meter = metered.get("meter")
        if stats is None:
            raise RuntimeError("crossgate recorded no call; the pipeline did not run its denoising loop.")
        plain_result, tgate_result = bench.results

        plain_macs = tgate_macs = None
        method = f"not counted ({self._macs_problem or 'no per-sample counts'})"
        if self._call_macs is not None:
            # The plain call as CallStats: every pass ran the full denoiser, nothing replayed.
            plain_stats = CallStats(num_steps=n, gate=n, cfg=stats.cfg, denoiser_batches=list(batches))
            try:
                plain_macs = executed_macs(self._call_macs, plain_stats)
                if meter is not None:
                    tgate_macs = meter.denoiser_executed  # as plain_macs: denoiser only
                    method = (
                        "plain: executed_macs(CallStats); crossgate + DeepCache: counted live (CallMeter)"
                    )
                else:
                    tgate_macs = executed_macs(self._call_macs, stats)
                    method = "executed_macs(CallStats) of each call"
            except AccountingError as error:
                plain_macs = tgate_macs = None
                method = f"not counted ({error})"

        notes = []
        if stats.gate >= stats.num_steps:
            notes.append(
                f"the gate (m={stats.gate}) is at or after the last of {n} steps, so TGATE never engaged: "
                "crossgate's image is the plain one."
            )
        threshold = None
        if config.is_auto:
            threshold = config.auto_tolerance / config.convergence_scale(n)
        return Comparison(
            settings=settings,
            model=self.model,
            plain_image=kept["plain"],
            tgate_image=kept["tgate"],
            plain_times=tuple(plain_result.times),
            tgate_times=tuple(tgate_result.times),
            plain_macs=plain_macs,
            tgate_macs=tgate_macs,
            macs_method=method,
            gate=stats.gate,
            num_steps=stats.num_steps,
            cfg=stats.cfg,
            convergence=list(stats.convergence),
            threshold=threshold,
            cross_attention_computed=dict(stats.cross_attention_computed_steps),
            cross_attention_replays=dict(stats.cross_attention_replays),
            self_attention_computed={k: len(v) for k, v in stats.self_attention_computed_steps.items()},
            denoiser_batches=(list(batches), list(stats.denoiser_batches)),
            notes=notes,
        )

    @staticmethod
    def _deepcache(pipe: Any, interval: int | None) -> Any:
        """A DeepCache helper enabled on ``pipe`` and composed with crossgate, or None."""
        if interval is None:
            return None
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=0)
        helper.enable()
        return crossgate.compose_deepcache(pipe, helper)


def _batch_of(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return int(sample.shape[0]) if hasattr(sample, "shape") else 0
