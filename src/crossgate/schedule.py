"""Pure functions: what a self-attention module does at a given step (TGATE v2).

The published schedule, in our words. With gate ``m``, interval ``k`` before the gate, interval
``k_after`` after it and ``warm_up`` steps:

* steps before ``warm_up`` compute (no caching while the layout is most in flux);
* step ``warm_up`` computes and stores its output;
* later steps before ``m - 1`` store a fresh output when ``step % k == 0`` and otherwise reuse the
  stored one (per batch element: under CFG the cache holds both halves);
* step ``m - 1`` (the gate) computes and stores, under CFG the mean of the two halves, because the
  batch halves from step ``m`` on (the same rule as cross-attention);
* steps from ``m`` on store a fresh output when ``step % k_after == 0`` and otherwise reuse it
  (``k_after = 1``, the default, computes every step).

Worked example, n=25, m=10, k=5, warm_up=2 (C compute, S compute+store, R reuse, G gate store):

    step  0 1 2 3 4 5 6 7 8 9 10 .. 24
          C C S R R S R R R G C  .. C      -> 20 of 25 steps compute self-attention
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    COMPUTE = "compute"  # run the module, keep nothing
    STORE = "store"  # run the module and keep its output (mean of CFG halves at the gate)
    REUSE = "reuse"  # return the kept output, compute nothing


def self_attention_action(
    step: int, gate: int, interval: int | None, interval_after: int = 1, warm_up: int = 2
) -> Action:
    """What a self-attention module does at ``step`` (0-based) of a call gated at ``gate``."""
    caching_before = interval is not None
    caching_after = interval_after > 1
    if not (caching_before or caching_after):
        return Action.COMPUTE
    if step == gate - 1:
        return Action.STORE
    if step >= gate:
        if not caching_after:
            return Action.COMPUTE
        return Action.STORE if step % interval_after == 0 else Action.REUSE
    if interval is None or step < warm_up:
        return Action.COMPUTE
    if step == warm_up or step % interval == 0:
        return Action.STORE
    return Action.REUSE


def self_attention_plan(
    num_steps: int, gate: int, interval: int | None, interval_after: int = 1, warm_up: int = 2
) -> list[Action]:
    """The action of every step of an ``num_steps``-step call (for docs, accounting and tests)."""
    return [self_attention_action(s, gate, interval, interval_after, warm_up) for s in range(num_steps)]


def format_plan(plan: list[Action], gate: int) -> str:
    """One letter per step: C compute, S store, R reuse, G the gate's store."""
    letters = {Action.COMPUTE: "C", Action.STORE: "S", Action.REUSE: "R"}
    return " ".join("G" if i == gate - 1 and a is Action.STORE else letters[a] for i, a in enumerate(plan))
