"""The Gradio page of ``crossgate app``: inputs on the left, one comparison on the right, history below.

The handlers only convert widget values and hand them to :class:`~crossgate.app.runner.ComparisonRunner`;
every refusal (:class:`~crossgate.app.runner.InputError`) becomes a ``gr.Error`` shown in the page,
and anything unexpected too, so the server keeps serving and the next click works.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports

import gradio as gr

from crossgate.app import views
from crossgate.app.runner import (
    DEFAULT_ROUNDS,
    MAX_ROUNDS,
    Comparison,
    ComparisonRunner,
    InputError,
    Settings,
    deepcache_available,
    example_captions,
)
from crossgate.config import DEFAULT_GATE_STEP, GATE_STEP_HINT

HISTORY_LENGTH = 8
DEFAULT_PROMPT = "a red circle left of a blue square"
# Pixels stay pixels, also where the browser scales an image to fit.
CSS = """
#plain-image img, #tgate-image img, #slider img, #history img { image-rendering: pixelated; }
#numbers table { font-variant-numeric: tabular-nums; }
"""


def _theme() -> Any:
    """Gradio's default look with system fonts, so the page requests nothing from the internet."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def _slider(**kwargs: Any) -> Any:
    """The before/after slider: Gradio's own ``gr.ImageSlider`` (the ``gradio-imageslider`` component,
    taken into Gradio 5; the separate package's last release breaks a Gradio 6 page on load)."""
    return gr.ImageSlider(type="pil", buttons=[], **kwargs)


def _int(value: Any, name: str) -> int:
    if value is None or value == "":
        raise InputError(f"{name} is empty: give a whole number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {value!r}.") from None
    if not number.is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def _float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None


def settings_from_widgets(
    prompt: str,
    negative: str,
    seed: Any,
    steps: Any,
    guidance: Any,
    gate: str,
    self_attention_interval: Any,
    deepcache: bool,
    deepcache_interval: Any,
    rounds: Any = DEFAULT_ROUNDS,
) -> Settings:
    """The widgets' raw values as :class:`Settings` (0 or empty for v2's k means off)."""
    k = None if self_attention_interval in (None, "") else _int(self_attention_interval, "the v2 interval k")
    if k is not None and k < 0:
        raise InputError(f"the v2 interval k must be >= 1 (0: off), got {k}.")
    return Settings(
        prompt=prompt or "",
        negative_prompt=negative or "",
        seed=_int(seed, "seed"),
        steps=_int(steps, "steps"),
        guidance=_float(guidance, "guidance"),
        gate=gate,
        self_attention_interval=k or None,
        deepcache_interval=_int(deepcache_interval, "the DeepCache interval") if deepcache else None,
        rounds=_int(rounds, "timing rounds"),
    )


def build(runner: ComparisonRunner) -> gr.Blocks:
    """The page, wired to ``runner`` (one comparison at a time: the queue runs one event per click)."""
    guidance_default = _default_guidance(runner.pipe)
    with gr.Blocks(title="crossgate: plain vs TGATE", analytics_enabled=False) as page:
        gr.Markdown(
            "## crossgate: the plain pipeline and TGATE on the same seed\n"
            "One click runs both and shows the images, wall times, executed MACs, the gate the call used, "
            "its cross-attention convergence and what each layer computed or replayed."
        )
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Textbox(
                    label="Model",
                    value=runner.model_arg or "",
                    placeholder="empty: the embedded crossgate-shapes-32",
                    info="a diffusers pipeline folder or Hub id",
                    elem_id="model",
                )
                examples = gr.Dropdown(
                    choices=example_captions(),
                    value=None,
                    label="Example captions the embedded model knows",
                    info="(held-out): never seen in training",
                    filterable=True,
                    elem_id="examples",
                )
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value="", elem_id="negative")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
                    steps = gr.Number(label="Steps", value=25, precision=0, elem_id="steps")
                    guidance = gr.Number(label="Guidance", value=guidance_default, elem_id="guidance")
                gate = gr.Textbox(
                    label="Gate",
                    value=str(DEFAULT_GATE_STEP),
                    info=GATE_STEP_HINT,
                    elem_id="gate",
                )
                self_attention = gr.Number(
                    label="TGATE v2 self-attention interval k",
                    value=0,
                    precision=0,
                    info="0: off (v1)",
                    elem_id="sa-interval",
                )
                can_deepcache = deepcache_available()
                with gr.Row(visible=can_deepcache):
                    deepcache = gr.Checkbox(label="compose DeepCache", value=False, elem_id="deepcache")
                    deepcache_interval = gr.Number(
                        label="DeepCache interval", value=3, precision=0, elem_id="deepcache-interval"
                    )
                rounds = gr.Number(
                    label="Timing rounds",
                    value=DEFAULT_ROUNDS,
                    precision=0,
                    minimum=1,
                    maximum=MAX_ROUNDS,
                    info="each pipeline, alternating, after a warm-up; median and per-round spread (1: indicative)",
                    elem_id="rounds",
                )
                run = gr.Button("Compare", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    plain_image = gr.Image(
                        label="plain", type="pil", interactive=False, buttons=[], elem_id="plain-image"
                    )
                    tgate_image = gr.Image(
                        label="crossgate", type="pil", interactive=False, buttons=[], elem_id="tgate-image"
                    )
                    slider = _slider(label="before / after (plain | crossgate)", elem_id="slider")
                numbers = gr.Markdown(elem_id="numbers")
                plot = gr.Plot(
                    label="this call's cross-attention convergence: relative change per step (CFG mean)",
                    elem_id="convergence",
                )
                layers = gr.Dataframe(
                    headers=views.LAYER_HEADERS,
                    label="per layer: computed / replayed",
                    interactive=False,
                    elem_id="layers",
                )
        gallery = gr.Gallery(
            label=f"history (last {HISTORY_LENGTH}): plain | crossgate",
            columns=4,
            fit_columns=False,
            height="auto",
            object_fit="contain",
            elem_id="history",
        )
        history_table = gr.Dataframe(
            headers=views.HISTORY_HEADERS, label="history", interactive=False, elem_id="history-table"
        )

        examples.input(lambda caption: caption or gr.skip(), examples, prompt)

        inputs = [
            prompt,
            negative,
            seed,
            steps,
            guidance,
            gate,
            self_attention,
            deepcache,
            deepcache_interval,
            rounds,
        ]

        def check(*values: Any) -> None:
            """Refuse bad input first, in an event of its own, so the last results stay on the page."""
            *widgets, model_text = values
            try:
                settings = settings_from_widgets(*widgets)
                if runner.wants_load(model_text):
                    gr.Info(f"loading {model_text.strip() or 'the embedded model'} ...")
                    runner.load(model_text)
                runner.check(settings)
            except InputError as error:
                raise gr.Error(str(error), print_exception=False) from None
            except Exception as error:  # e.g. a model folder that loads but fails: say so, keep serving
                raise gr.Error(f"{type(error).__name__}: {error}") from error

        def compare(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            *widgets, past = values
            try:
                result = runner.run(
                    settings_from_widgets(*widgets), lambda fraction, text: progress(fraction, desc=text)
                )
            except InputError as error:
                raise gr.Error(str(error), print_exception=False) from None
            except Exception as error:
                raise gr.Error(f"the comparison failed: {type(error).__name__}: {error}") from error
            for note in result.notes:
                gr.Warning(note)
            number = past[0][0] + 1 if past else 1
            return _outputs(result, [(number, result), *past][:HISTORY_LENGTH])

        run.click(check, [*inputs, model], None, concurrency_limit=1).success(
            compare,
            [*inputs, history],
            [plain_image, tgate_image, slider, numbers, plot, layers, gallery, history_table, history],
            concurrency_limit=1,
            show_progress_on=slider,  # one progress display, not one per output
        )
    return page


def _outputs(result: Comparison, past: list[tuple[int, Comparison]]) -> tuple:
    """The page's outputs for ``result``; ``past`` is the history, newest first, numbered."""
    plain, tgate = views.enlarge(result.plain_image), views.enlarge(result.tgate_image)
    headers, rows = views.layer_table(result)
    return (
        gr.Image(value=plain, label=f"plain: {result.plain_seconds:.3f} s ({result.timing.short_how})"),
        gr.Image(
            value=tgate,
            label=f"crossgate ({views.gate_text(result)}): {result.tgate_seconds:.3f} s, {result.timing.short()}",
        ),
        (plain, tgate),
        views.numbers_markdown(result),
        views.convergence_figure(result),
        gr.Dataframe(value=rows, headers=headers),
        [(views.pair_image(c), views.history_caption(number, c)) for number, c in past],
        [views.history_row(number, c) for number, c in past],
        past,
    )


def _default_guidance(pipe: Any) -> float:
    import inspect

    parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    default = getattr(parameter, "default", None)
    return float(default) if isinstance(default, (int, float)) else 7.5


def launch(
    page: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kwargs: Any
) -> Any:
    """Serve ``page`` (queued, one comparison at a time); blocks unless ``prevent_thread_lock=True``."""
    return page.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=_theme(),
        css=CSS,
        ssr_mode=False,
        show_error=True,
        **kwargs,
    )
