"""Validated configuration for TGATE.

Everything a user can get wrong is checked here, before any hook touches a pipeline, so that a bad
value never leaves a pipeline half-patched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

PostGateInputs = Literal["uncond", "cond"]


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
        post_gate_inputs: which CFG half feeds the single denoiser pass after the gate. ``"uncond"``
            (default, as the original release does) uses the negative prompt's side inputs, e.g.
            SDXL's negative pooled embeds and time ids; ``"cond"`` uses the positive ones.
        self_attention_interval: TGATE v2's ``k``: before the gate, self-attention is recomputed
            every ``k``-th step after the warm-up and reused in between. ``None`` (default) turns
            self-attention caching off (TGATE v1). See :mod:`crossgate.schedule` for the table.
        self_attention_interval_after: the interval after the gate (1, the default, recomputes
            every step; the paper finds caching late harmful).
        self_attention_warm_up: steps that always compute before self-attention caching starts.
    """

    gate_step: int | float = 10
    post_gate_inputs: PostGateInputs = "uncond"
    self_attention_interval: int | None = None
    self_attention_interval_after: int = 1
    self_attention_warm_up: int = 2

    def __post_init__(self) -> None:
        _validate_gate_step(self.gate_step)
        if self.post_gate_inputs not in ("uncond", "cond"):
            raise ConfigError(f"post_gate_inputs must be 'uncond' or 'cond', got {self.post_gate_inputs!r}.")
        if self.self_attention_interval is not None:
            _validate_int("self_attention_interval", self.self_attention_interval, 1, "or None (off)")
        _validate_int("self_attention_interval_after", self.self_attention_interval_after, 1)
        _validate_int("self_attention_warm_up", self.self_attention_warm_up, 0)

    @property
    def caches_self_attention(self) -> bool:
        """Whether any step reuses self-attention (TGATE v2)."""
        return self.self_attention_interval is not None or self.self_attention_interval_after > 1

    def resolve_gate(self, num_steps: int) -> int:
        """The gate as a number of steps for a call of ``num_steps`` denoising steps."""
        if isinstance(self.gate_step, float):
            return max(1, round(self.gate_step * num_steps))
        return int(self.gate_step)

    def with_overrides(self, **overrides: object) -> TGateConfig:
        """A copy with some fields replaced (validated again)."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"unknown TGATE option(s) {sorted(unknown)}; valid: {sorted(self.__dataclass_fields__)}."
            )
        return replace(self, **overrides)


def _validate_gate_step(value: object) -> None:
    hint = "use an int >= 1 (steps with cross-attention) or a float in (0, 1] (fraction of the steps)"
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
