"""Validated configuration for TGATE.

Everything a user can get wrong is checked here, before any hook touches a pipeline, so that a bad
value never leaves a pipeline half-patched.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

PostGateInputs = Literal["uncond", "cond"]
TextStream = Literal["frozen", "frozen_mean", "live"]
TEXT_STREAMS: tuple[str, ...] = ("frozen", "frozen_mean", "live")
AUTO_REFERENCE_STEPS = 25  # auto_tolerance is stated per 1/25 of the sampling trajectory
# The largest guidance_after_gate: ten times the guidance the pipeline applied before the gate (see
# TGateConfig). Unbounded, a finite weight such as 1e308 or 10**30 overflows and the output is NaN.
MAX_GUIDANCE_AFTER_GATE = 10.0
# The gate when none is given: 0.4 of the call's steps (TGateConfig, the CLI and the app all use this).
DEFAULT_GATE_STEP = 0.4
GATE_STEP_HINT = "a step (10), a fraction of the steps (0.4) or auto"


class ConfigError(ValueError):
    """A TGATE setting is invalid; the message says which and what to use instead."""


@dataclass(frozen=True)
class TGateConfig:
    """How TGATE gates a pipeline.

    Attributes:
        gate_step: the gate ``m``. An ``int >= 1`` is the number of denoising steps that still run
            cross-attention and classifier-free guidance (CFG); a ``float`` in ``(0, 1]`` is a
            fraction of the call's denoising steps, rounded to the nearest step (at least 1).
            When ``m >= steps`` TGATE never engages and the output equals the plain pipeline's.
        post_gate_inputs: which CFG half feeds the single denoiser pass after the gate. ``None``
            (default) takes the family's choice (the support matrix lists it): ``"uncond"`` for
            text-to-image families, as the original release does (the negative prompt's side
            inputs, e.g. SDXL's negative pooled embeds and time ids); ``"cond"`` for Stable Video
            Diffusion, whose unconditional inputs are zeros (no image conditioning at all).
        self_attention_interval: TGATE v2's ``k``: before the gate, self-attention is recomputed
            every ``k``-th step after the warm-up and reused in between. ``None`` (default) turns
            self-attention caching off (TGATE v1). See :mod:`crossgate.schedule` for the table.
        self_attention_interval_after: the interval after the gate (1, the default, recomputes
            every step; the paper finds caching late harmful).
        self_attention_warm_up: steps that always compute before self-attention caching starts.
        auto_tolerance: with ``gate_step="auto"``, the gate closes after the first step whose
            convergence statistic (see :mod:`crossgate.hooks`: the relative change of the CFG-mean
            cross-attention output from the previous step, per image, averaged over images and
            layers), scaled by ``n / 25``, is below this value. The change per step shrinks as the
            step count grows; the scaling states the tolerance per 1/25 of the trajectory so one
            value transfers across step counts (measured in docs/quality-gate-selection.md).
        auto_min_fraction, auto_max_fraction: guard rails for ``"auto"``: the gate is never before
            ``round(min * n)`` steps and always by ``round(max * n)``.
        guidance_after_gate: keep some guidance after the gate at no extra denoiser pass. The
            guidance difference ``d = cond - uncond`` of the denoiser's output at the last step
            before the gate is kept; each later single prediction ``p`` is handed to the pipeline as
            ``[p - w d / 2, p + w d / 2]`` (sequential CFG: uncond ``p - w d``), so its own guidance
            adds ``w`` times the last guidance direction back. ``0`` (default) is TGATE as
            published; ``1`` adds back as much guidance as the pipeline applied at the step before
            the gate. Measured in docs/quality-frontier.md (``w <= 1``). At most
            ``MAX_GUIDANCE_AFTER_GATE`` (10): the added term is then at most ten times the
            guidance term the pipeline itself computed before the gate, so it stays finite wherever
            that one was; a larger weight no longer keeps guidance but amplifies a stale difference,
            and a huge one (``1e308``, ``10**30``) overflows into an all-NaN output.
        guidance_after_gate_decay: ``w`` is multiplied by this at every step after the first
            gated one (``1``: constant; ``< 1``: fading out).

        text_stream: joint-attention families only (SD3, FLUX; :mod:`crossgate.joint`): what each
            joint block's text stream does after the gate. ``"frozen"`` (default): its text keys,
            values and output are those of step ``m-1`` of the branch that keeps running;
            ``"frozen_mean"``: the CFG mean of both branches' step ``m-1`` values; ``"live"``: the
            text stream keeps computing (only CFG is dropped). Which is the default is set by the
            study in docs/joint-attention.md.
        keep_cfg: joint-attention families only: keep both CFG branches after the gate, each with
            its own frozen text stream (the text freeze without the CFG drop). Default ``False``.
        compile_split_cfg: for a denoiser compiled whole (``torch.compile(model)`` assigned back, or
            ``model.compile()``) in a batched-CFG pipeline: run each pass before the gate as two
            passes of B rows (uncond, then cond) instead of one of 2B. The graphs before and after
            the gate then have the same shapes, and inductor builds most kernels once, so the first
            compiled call costs about one compilation instead of two. The steps before the gate
            cost two B passes each instead of one 2B pass, which is slower wherever a 2B pass
            costs less than two B passes (docs/benchmarks.md measures both). Default ``False``.
            Eager and regionally compiled denoisers run exactly as without it; not for
            joint-attention or sequential-CFG families.
    Per-layer gating (each layer freezing on its own convergence) was built, measured and removed:
    on our model it cost more compute for lower fidelity than one gate, because the CFG batch has
    to run until the last layer freezes (docs/quality-gate-selection.md).
    """

    gate_step: int | float | Literal["auto"] = DEFAULT_GATE_STEP
    post_gate_inputs: PostGateInputs | None = None
    self_attention_interval: int | None = None
    self_attention_interval_after: int = 1
    self_attention_warm_up: int = 2
    auto_tolerance: float = 0.05
    auto_min_fraction: float = 0.2
    auto_max_fraction: float = 0.8
    guidance_after_gate: float = 0.0
    guidance_after_gate_decay: float = 1.0
    text_stream: TextStream = "frozen"
    keep_cfg: bool = False
    compile_split_cfg: bool = False

    def __post_init__(self) -> None:
        for name in _NUMERIC_FIELDS:  # numpy scalars, Fractions, 0-d tensors are numbers too
            object.__setattr__(self, name, _as_number(getattr(self, name)))
        _validate_gate_step(self.gate_step)
        _validate_auto(self)
        if self.post_gate_inputs not in (None, "uncond", "cond"):
            raise ConfigError(
                f"post_gate_inputs must be 'uncond', 'cond' or None (the family's choice), "
                f"got {self.post_gate_inputs!r}."
            )
        if self.text_stream not in TEXT_STREAMS:
            raise ConfigError(
                f"text_stream must be one of {', '.join(map(repr, TEXT_STREAMS))}, got {_shown(self.text_stream)}."
            )
        if not isinstance(self.keep_cfg, bool):
            raise ConfigError(f"keep_cfg must be True or False, got {_shown(self.keep_cfg)}.")
        if not isinstance(self.compile_split_cfg, bool):
            raise ConfigError(
                f"compile_split_cfg must be True or False, got {_shown(self.compile_split_cfg)}."
            )
        if self.compile_split_cfg and self.caches_self_attention:
            raise ConfigError(
                "compile_split_cfg does not combine with TGATE v2's self-attention caching (its caches "
                "hold both CFG halves of one pass); leave self_attention_interval=None or "
                "compile_split_cfg=False."
            )
        if self.keep_cfg and self.text_stream == "live":
            raise ConfigError(
                "keep_cfg=True with text_stream='live' changes nothing after the gate; freeze the text "
                "stream (text_stream='frozen') or drop keep_cfg."
            )
        if self.self_attention_interval is not None:
            _validate_int("self_attention_interval", self.self_attention_interval, 1, "or None (off)")
        _validate_int("self_attention_interval_after", self.self_attention_interval_after, 1)
        _validate_int("self_attention_warm_up", self.self_attention_warm_up, 0)
        for name in ("guidance_after_gate", "guidance_after_gate_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                raise ConfigError(f"{name} must be a finite number, got {_shown(value)}.")
        if not 0 <= self.guidance_after_gate <= MAX_GUIDANCE_AFTER_GATE:
            raise ConfigError(
                f"guidance_after_gate must be in [0, {MAX_GUIDANCE_AFTER_GATE:g}] (0: TGATE as published; "
                f"1: as much guidance as before the gate), got {_shown(self.guidance_after_gate)}."
            )
        if not 0 < self.guidance_after_gate_decay <= 1:
            raise ConfigError(
                f"guidance_after_gate_decay must be in (0, 1], got {self.guidance_after_gate_decay!r}."
            )

    @property
    def sets_joint_options(self) -> bool:
        """Whether a joint-attention-only option differs from its default."""
        return self.text_stream != "frozen" or self.keep_cfg

    @property
    def caches_self_attention(self) -> bool:
        """Whether any step reuses self-attention (TGATE v2)."""
        return self.self_attention_interval is not None or self.self_attention_interval_after > 1

    def guidance_weight(self, steps_after_gate: int) -> float:
        """The weight of the kept guidance difference ``steps_after_gate`` steps after the gate."""
        return self.guidance_after_gate * self.guidance_after_gate_decay**steps_after_gate

    @property
    def is_auto(self) -> bool:
        return self.gate_step == "auto"

    @staticmethod
    def convergence_scale(num_steps: int) -> float:
        """What a per-step relative change is multiplied by before it meets ``auto_tolerance``."""
        return num_steps / AUTO_REFERENCE_STEPS

    def resolve_gate(self, num_steps: int) -> int:
        """The gate (for ``"auto"``: its latest possible step) for a call of ``num_steps`` steps."""
        if self.is_auto:
            return fraction_to_steps(self.auto_max_fraction, num_steps)
        if isinstance(self.gate_step, float):
            return fraction_to_steps(self.gate_step, num_steps)
        return int(self.gate_step)

    def resolve_min_gate(self, num_steps: int) -> int:
        """The earliest step ``"auto"`` may gate at."""
        return (
            fraction_to_steps(self.auto_min_fraction, num_steps)
            if self.is_auto
            else self.resolve_gate(num_steps)
        )

    @classmethod
    def from_profile(cls, path: str | Path, **overrides: Any) -> TGateConfig:
        """The fixed schedule a ``crossgate calibrate`` profile (JSON) describes.

        The profile stores gates as fractions of its step count, so a profile made at n steps also
        applies (proportionally) to other step counts; use one profile per model and scheduler.
        """
        where = f"profile {str(path)!r}"
        try:
            profile = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{where} not found; make one with `crossgate calibrate`.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{where} is not readable JSON: {error}") from None
        if not isinstance(profile, dict) or "gate_fraction" not in profile:
            raise ConfigError(f"{where} has no 'gate_fraction'; was it written by `crossgate calibrate`?")
        fraction = _as_number(profile["gate_fraction"])
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ConfigError(f"{where}: field 'gate_fraction' must be a number in (0, 1], got {fraction!r}.")
        try:
            return cls(gate_step=float(fraction)).with_overrides(**overrides)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def with_overrides(self, **overrides: Any) -> TGateConfig:
        """A copy with some fields replaced (validated again)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown TGATE option(s) {sorted(unknown)}; valid: {sorted(f.name for f in fields(self))}."
            )
        return replace(self, **overrides)


def coerce_config(config: object, overrides: dict[str, Any]) -> TGateConfig:
    """``config`` (None: the defaults) with ``overrides`` applied, validated; what ``apply`` runs with.

    Anything else in ``config``'s place (a number, a string, a dict of options) is a
    :class:`ConfigError`, never taken as options: a dict is not unpacked, so there is one way to pass
    options (keywords) and a typo in a key cannot hide in a dict.
    """
    if config is None:
        config = TGateConfig()
    if not isinstance(config, TGateConfig):
        example = (
            f"crossgate.apply(pipe, **{_shown(config)})"
            if isinstance(config, dict)
            else "crossgate.apply(pipe, gate_step=0.4)"
        )
        raise ConfigError(
            f"config must be a crossgate.TGateConfig, got {type(config).__name__} {_shown(config)}; pass "
            f"options as keywords ({example}) or build TGateConfig(...)."
        )
    return config.with_overrides(**overrides) if overrides else config


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, shortened: a message never carries a huge number or structure in full."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's int-to-string digit limit
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_NUMERIC_FIELDS = (
    "gate_step",
    "self_attention_interval",
    "self_attention_interval_after",
    "self_attention_warm_up",
    "auto_tolerance",
    "auto_min_fraction",
    "auto_max_fraction",
    "guidance_after_gate",
    "guidance_after_gate_decay",
)


def _as_number(value: object) -> object:
    """A plain ``int``/``float`` for any real number (numpy scalars, ``Fraction``, 0-d tensors).

    Integral values stay ints (steps), other reals become floats (fractions); booleans and
    non-numbers are returned unchanged for the validators to refuse.
    """
    if type(value) in (bool, int, float, str) or value is None:
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_: not a number here either
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:  # numpy 0-d arrays and scalars, tensors
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return value
        return value if isinstance(value, bool) else _as_number(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Rational) and value.denominator == 1:  # Fraction(5) is a step count
        return int(value.numerator)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def parse_gate_step(text: object, allow_auto: bool = True) -> int | float | Literal["auto"]:
    """A gate typed by a person (the CLI's ``--gate-step``, the app's text box) as ``gate_step``.

    ``"10"`` is 10 steps, ``"0.4"`` a fraction of the steps, ``"auto"`` (any case, surrounding spaces
    ignored) the convergence-decided gate; numbers pass through. Raises :class:`ConfigError` with
    what to type instead; the value is validated as :class:`TGateConfig` validates ``gate_step``.
    """
    hint = GATE_STEP_HINT if allow_auto else GATE_STEP_HINT.replace(" or auto", "")
    if isinstance(text, bool):
        raise ConfigError(f"gate {text!r}: give {hint}.")
    if isinstance(text, (int, float)):
        value: int | float = text
    else:
        word = str(text).strip().lower()
        if word == "auto":
            if not allow_auto:
                raise ConfigError(f"gate 'auto' is not accepted here; give {hint}.")
            return "auto"
        try:
            value = int(word)
        except ValueError:
            try:
                value = float(word)
            except ValueError:
                raise ConfigError(f"gate {_shown(text)} is not a number: give {hint}.") from None
    _validate_gate_step(value)
    return value


def fraction_to_steps(fraction: float, num_steps: int) -> int:
    """``fraction * num_steps`` rounded half up (0.5 of 25 steps is 13), at least 1."""
    return max(1, math.floor(fraction * num_steps + 0.5))


def _validate_auto(config: TGateConfig) -> None:
    tol = config.auto_tolerance
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ConfigError(f"auto_tolerance must be a positive number (e.g. 0.05), got {tol!r}.")
    lo, hi = config.auto_min_fraction, config.auto_max_fraction
    for name, value in (("auto_min_fraction", lo), ("auto_max_fraction", hi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{name} must be a fraction in (0, 1], got {value!r}.")
    if lo > hi:
        raise ConfigError(f"auto_min_fraction ({lo}) must not exceed auto_max_fraction ({hi}).")


def _validate_gate_step(value: object) -> None:
    hint = (
        "use an int >= 1 (steps with cross-attention), a float in (0, 1] (fraction of the steps) "
        "or 'auto' (gate when cross-attention has converged)"
    )
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"gate_step must be a number, got {value!r} ({type(value).__name__}); {hint}.")
    if isinstance(value, float):
        if math.isnan(value) or not (0.0 < value <= 1.0):
            raise ConfigError(f"gate_step={value!r} is not a fraction in (0, 1]; {hint}.")
    elif value < 1:
        raise ConfigError(
            f"gate_step={value!r}: at least one step must run cross-attention to fill the cache; {hint}."
        )


def _validate_int(name: str, value: object, minimum: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}{' ' + extra if extra else ''}, got {value!r}.")
