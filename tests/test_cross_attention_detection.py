"""The modules crossgate stops after the gate are exactly those whose key/value input is the text.

For every supported family (tests/families.py's :data:`CASES` and the sequential-CFG cases), with a
random prompt and random seeds, the attention modules that attend to the text encoder's output are
measured in plain calls, without crossgate (:func:`families.text_attention`: the input of a module's
key projection does not change with the initial noise and does change with the prompt); then one
gated call says which modules crossgate replayed after the gate. The two sets must be equal: a
self-attention module that a model flags ``is_cross_attention`` (Kandinsky 3 builds its self-attention
as ``Attention(channels, channels)``) must keep computing, and no conditioning attention may be missed.

The seed is drawn per session (set ``CROSSGATE_TEST_SEED`` to replay one); failures print it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

import crossgate
from families import CASES, Case, case_text_attention, plain_call, text_attention
from sequential_cases import SEQUENTIAL

SEED = int(os.environ.get("CROSSGATE_TEST_SEED") or random.SystemRandom().randrange(2**32))


def _label(path: str, name: str, primary: str) -> str:
    return name if path == primary else f"{path}.{name}"


def _check(measured: dict[str, set[str]], stats_labels: set[str], primary: str, family: str) -> None:
    expected = {_label(path, name, primary) for path, names in measured.items() for name in names}
    assert expected, f"{family}: no attention module attends to the text (seed {SEED})"
    missing, extra = expected - stats_labels, stats_labels - expected
    assert not missing and not extra, (
        f"{family} (CROSSGATE_TEST_SEED={SEED}): crossgate stops {len(stats_labels)} modules after the "
        f"gate, {len(expected)} attend to the text; stopped but not attending to the text: "
        f"{sorted(extra)}; attending to the text but not stopped: {sorted(missing)}"
    )


def _gated_labels(pipe, gate: int, run: Callable[[], Any]) -> set[str]:
    """The cross-attention modules crossgate replayed after the gate in one call (its own labels)."""
    crossgate.apply(pipe, gate_step=gate)
    try:
        run()
        stats = crossgate.last_call(pipe)
    finally:
        crossgate.remove(pipe)
    assert stats.gate == gate < stats.num_steps
    return {label for label, replays in stats.cross_attention_replays.items() if replays}


@pytest.mark.parametrize("family", list(CASES))
def test_family_gates_exactly_the_text_attention(family):
    rng = random.Random(f"{SEED}:{family}")
    case: Case = CASES[family].build()
    measured = case_text_attention(case, rng)
    labels = _gated_labels(case.pipe, case.gate, lambda: plain_call(case, rng.randrange(2**31)))
    _check(measured, labels, case.denoiser_attr, family)


@pytest.mark.parametrize("family", list(SEQUENTIAL))
def test_sequential_family_gates_exactly_the_text_attention(family):
    rng = random.Random(f"{SEED}:{family}")
    spec = SEQUENTIAL[family]
    build, gates = spec.build, spec.gates
    case = build()
    pipe = case.pipe
    models = {
        attr: model
        for attr in ("transformer", "transformer_2")
        if isinstance(model := getattr(pipe, attr, None), torch.nn.Module)
    }

    def run(seed: int, conditioning: dict[str, Any] | None = None) -> Any:
        kwargs = dict(
            case.kwargs, num_inference_steps=case.steps, output_type="latent", **(conditioning or {})
        )
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed)).frames

    measured = text_attention(models, run, case.kwargs, rng)
    labels = set().union(*(_gated_labels(pipe, gate, lambda: run(rng.randrange(2**31))) for gate in gates))
    _check(measured, labels, "transformer", family)
