"""`crossgate app` without a browser: one comparison's numbers, refusals, the page's views, the CLI.

The runner drives the embedded model at 6 steps (a few tenths of a second a comparison).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import crossgate
from crossgate.app import views
from crossgate.app.runner import (
    ComparisonRunner,
    InputError,
    Settings,
    example_captions,
    measuring_config,
    parse_gate,
    validate,
)
from crossgate.config import TGateConfig
from crossgate.gate import gate_policy

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def runner():
    return ComparisonRunner.from_model(None, device="cpu")


@pytest.fixture(scope="module")
def gated(runner):
    return runner.run(Settings(PROMPT, seed=3, steps=6, gate=3))


def _image(pipe, steps, seed, **kwargs):
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=steps, generator=generator, **kwargs).images[0]


# -- input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gate"), [("10", 10), (" 0.4 ", 0.4), ("auto", "auto"), ("AUTO", "auto"), ("1", 1), ("1.0", 1.0)]
)
def test_gate_text_is_a_step_a_fraction_or_auto(text, gate):
    parsed = parse_gate(text)
    assert parsed == gate and type(parsed) is type(gate)


@pytest.mark.parametrize("text", ["0", "-2", "1.5", "nan", "ten", "", True])
def test_bad_gates_are_refused_with_a_message(text):
    with pytest.raises(InputError, match="gate"):
        parse_gate(text)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(PROMPT, steps=0), "steps"),
        (Settings(PROMPT, steps=100_000), "steps"),
        (Settings("  "), "prompt"),
        (Settings(PROMPT, seed=-1), "seed"),
        (Settings(PROMPT, guidance=float("inf")), "guidance"),
        (Settings(PROMPT, gate=0), "gate_step"),
        (Settings(PROMPT, self_attention_interval=0), "self_attention_interval"),
        (Settings(PROMPT, deepcache_interval=0), "DeepCache"),
    ],
)
def test_validate_refuses_before_any_work(settings, message):
    with pytest.raises(InputError, match=message):
        validate(settings)


@pytest.mark.parametrize(
    ("steps", "gate"), [(25, 10), (25, 0.4), (6, 3), (7, 0.5), (6, 1), (6, 6), (6, 9), (3, 1.0)]
)
def test_measuring_config_keeps_the_fixed_gate(steps, gate):
    fixed = TGateConfig(gate_step=gate, self_attention_interval=2)
    measuring = measuring_config(fixed, steps)
    policy = gate_policy(measuring, steps)
    assert policy.watches_convergence
    assert policy.gate == min(fixed.resolve_gate(steps), steps)
    for step in range(steps):  # a change of 0 at every step still cannot move it
        policy.after_step(step, 0.0)
    assert policy.gate == min(fixed.resolve_gate(steps), steps)
    assert measuring.self_attention_interval == 2


def test_example_captions_mark_the_held_out_scenes():
    captions = example_captions()
    assert len(captions) == 432
    held_out = [value for label, value in captions if label.endswith("(held-out)")]
    assert len(held_out) == 96
    assert (PROMPT, PROMPT) in captions or (f"{PROMPT}  (held-out)", PROMPT) in captions


# -- one comparison ---------------------------------------------------------------------------------


def test_comparison_has_both_images_times_macs_gate_curve_and_counts(runner, gated):
    assert gated.plain_image.size == gated.tgate_image.size == (32, 32)
    assert gated.plain_seconds > 0 and gated.tgate_seconds > 0
    assert gated.speedup == pytest.approx(gated.plain_seconds / gated.tgate_seconds)
    assert gated.gate == 3 and gated.num_steps == 6 and gated.engaged
    assert gated.macs_ratio is not None and gated.macs_ratio < 1
    assert gated.denoiser_batches == ([2] * 6, [2, 2, 2, 1, 1, 1])
    assert len(gated.convergence) == 2 and all(v > 0 for v in gated.convergence)  # steps 1, 2
    assert gated.threshold is None
    assert set(gated.cross_attention_computed.values()) == {3}
    assert set(gated.cross_attention_replays.values()) == {3}
    assert gated.model.startswith("crossgate-shapes-32")


def test_images_equal_the_plain_and_the_fixed_gate_pipelines(runner, gated):
    # The convergence statistic is measured with the gate pinned: the image is the fixed gate's.
    pipe = runner.pipe
    assert np.array_equal(np.asarray(gated.plain_image), np.asarray(_image(pipe, 6, 3)))
    with crossgate.enabled(pipe, gate_step=3):
        fixed = _image(pipe, 6, 3)
    assert np.array_equal(np.asarray(gated.tgate_image), np.asarray(fixed))


def test_macs_agree_with_a_live_count(runner, gated):
    from crossgate.tools.accounting import CallMeter

    with CallMeter(runner.pipe) as plain:
        _image(runner.pipe, 6, 3)
    with crossgate.enabled(runner.pipe, gate_step=3), CallMeter(runner.pipe) as gated_meter:
        _image(runner.pipe, 6, 3)
    assert gated.plain_macs == plain.executed
    assert gated.tgate_macs == gated_meter.executed


def test_auto_gate_curve_comes_from_the_call_and_has_its_threshold(runner):
    result = runner.run(Settings(PROMPT, steps=10, gate="auto"))
    config = TGateConfig(gate_step="auto")
    assert result.threshold == pytest.approx(config.auto_tolerance / config.convergence_scale(10))
    assert 2 <= result.gate <= 8
    assert len(result.convergence) == result.gate - 1


def test_a_gate_at_the_last_step_never_engages_and_says_so(runner):
    result = runner.run(Settings(PROMPT, steps=4, gate=4))
    assert not result.engaged and result.macs_ratio == 1
    assert np.array_equal(np.asarray(result.plain_image), np.asarray(result.tgate_image))
    assert result.notes and "never engaged" in result.notes[0]
    assert len(result.convergence) == 3  # measured at every step


def test_v2_counts_self_attention(runner):
    result = runner.run(Settings(PROMPT, steps=8, gate=6, self_attention_interval=3))
    # warm-up 2, k=3, m=6: C C S S R G C C -> 7 of 8 steps compute
    assert set(result.self_attention_computed.values()) == {7}
    headers, rows = views.layer_table(result)
    assert headers[-1].startswith("its self-attention") and {row[-1] for row in rows} == {7}
    plain_v1 = runner.run(Settings(PROMPT, steps=8, gate=6))
    assert result.tgate_macs < plain_v1.tgate_macs


def test_deepcache_composition_is_counted_live(runner):
    pytest.importorskip("DeepCache")
    alone = runner.run(Settings(PROMPT, steps=6, gate=3))
    composed = runner.run(Settings(PROMPT, steps=6, gate=3, deepcache_interval=2))
    assert "CallMeter" in composed.macs_method
    assert composed.tgate_macs < alone.tgate_macs
    # DeepCache is taken off again: the next plain call is the plain pipeline's.
    assert np.array_equal(np.asarray(composed.plain_image), np.asarray(alone.plain_image))
    assert not crossgate.is_applied(runner.pipe)


def test_refused_input_runs_nothing_and_the_next_run_works(runner):
    calls = []
    handle = runner.pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match="gate_step"):
            runner.run(Settings(PROMPT, steps=6, gate=0))
        with pytest.raises(InputError, match="steps"):
            runner.run(Settings(PROMPT, steps=0))
        assert calls == []
    finally:
        handle.remove()
    assert runner.run(Settings(PROMPT, steps=3, gate=1)).gate == 1


def test_unknown_model_folder_is_refused_and_the_old_model_stays(runner, tmp_path):
    pipe = runner.pipe
    with pytest.raises(InputError, match="not found"):
        runner.load(str(tmp_path / "no-such-model"))
    assert runner.pipe is pipe and runner.model_arg is None
    assert runner.load("") is False  # the embedded one is loaded already


def test_progress_is_one_display_over_every_round(runner):
    seen: list[tuple[float, str]] = []
    runner.run(
        Settings(PROMPT, steps=3, gate=2, rounds=2), lambda fraction, text: seen.append((fraction, text))
    )
    texts = [text for _, text in seen]
    for call in ("round 1/2, plain", "round 1/2, crossgate", "round 2/2, plain", "round 2/2, crossgate"):
        assert f"{call}: step 3/3" in texts, texts
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_timing_rounds_alternate_and_one_round_is_marked_indicative(runner, gated):
    assert len(gated.plain_times) == len(gated.tgate_times) == 3  # the default: a median to quote
    assert gated.plain_seconds == pytest.approx(sorted(gated.plain_times)[1])
    assert not gated.timing.indicative and "median of 3" in views.numbers_markdown(gated)
    single = runner.run(Settings(PROMPT, seed=3, steps=6, gate=3, rounds=1))
    assert len(single.plain_times) == 1 and single.timing.indicative
    text = views.numbers_markdown(single)
    assert "indicative" in text and "one timed call of each pipeline" in text
    assert "indicative (1 run)" in views.history_row(1, single)
    assert "indicative (1 run)" in views.history_caption(1, single)
    assert np.array_equal(np.asarray(single.tgate_image), np.asarray(gated.tgate_image))


@pytest.mark.parametrize("rounds", [0, 21, True, 2.5])
def test_bad_timing_rounds_are_refused(rounds):
    with pytest.raises(InputError, match="timing rounds"):
        validate(Settings(PROMPT, rounds=rounds))


# -- what the page shows ----------------------------------------------------------------------------


def test_enlarge_is_nearest_neighbour():
    small = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3) % 251)
    big = views.enlarge(small)
    assert big.size == (256, 256)
    assert np.array_equal(np.asarray(big)[::8, ::8], np.asarray(small))
    assert np.array_equal(np.asarray(big)[7::8, 7::8], np.asarray(small))


def test_numbers_table_and_history(gated):
    text = views.numbers_markdown(gated)
    assert "speed-up" in text and "MACs ratio" in text and "m=3 of 6" in text and "warm-up" in text
    assert f"{gated.macs_ratio:.3f}" in text
    assert views.pair_image(gated).size == (128 + 4 + 128, 128)
    row = views.history_row(1, gated)
    assert row[0] == 1 and row[1] == PROMPT and row[-1] == round(gated.macs_ratio, 3)
    assert "gate 3" in views.history_caption(1, gated) or "m=3" in views.history_caption(1, gated)


def test_convergence_figure_marks_the_gate(gated):
    figure = views.convergence_figure(gated)
    (ax,) = figure.axes
    assert len(ax.lines) == 2  # the curve and the gate
    assert list(ax.lines[1].get_xdata()) == [3, 3]


def test_page_builds(runner):
    pytest.importorskip("gradio")
    from crossgate.app import ui

    page = ui.build(runner)
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"prompt", "gate", "run", "plain-image", "tgate-image", "slider", "numbers", "convergence"} <= ids
    assert "rounds" in ids
    # one progress display (on the before/after slider), not one per output panel
    (compare,) = [fn for fn in page.fns.values() if fn.name == "compare"]
    assert [block.elem_id for block in compare.show_progress_on] == ["slider"]
    settings = ui.settings_from_widgets(PROMPT, "", 1, 6.0, 7.5, "3", 0, False, 3)
    assert settings == Settings(PROMPT, "", 1, 6, 7.5, "3", None, None)
    with pytest.raises(InputError, match="steps"):
        ui.settings_from_widgets(PROMPT, "", 1, None, 7.5, "3", 0, False, 3)
    with pytest.raises(InputError, match="guidance"):
        ui.settings_from_widgets(PROMPT, "", 1, 6, "much", "3", 0, False, 3)
    assert ui.settings_from_widgets(PROMPT, "", 1, 6, 7.5, "3", 2, True, 3).deepcache_interval == 3
    assert ui.settings_from_widgets(PROMPT, "", 1, 6, 7.5, "3", 0, False, 3, 5).rounds == 5


# -- the command ------------------------------------------------------------------------------------


def test_cli_serves_localhost_without_share_by_default(runner, monkeypatch):
    pytest.importorskip("gradio")
    from crossgate.app import ui
    from crossgate.cli import main

    launched: dict = {}
    monkeypatch.setattr(ComparisonRunner, "from_model", classmethod(lambda cls, model, device: runner))
    monkeypatch.setattr(ui, "launch", lambda page, **kwargs: launched.update(kwargs))
    assert main(["app"]) == 0
    assert launched["host"] == "127.0.0.1" and launched["port"] == 7860 and launched["share"] is False
    assert main(["app", "--host", "0.0.0.0", "--port", "8123", "--share"]) == 0
    assert launched["host"] == "0.0.0.0" and launched["port"] == 8123 and launched["share"] is True


def test_cli_refuses_an_unknown_model_folder(tmp_path, capsys):
    from crossgate.cli import main

    assert main(["app", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
