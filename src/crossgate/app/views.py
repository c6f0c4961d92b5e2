"""What the page shows of a :class:`~crossgate.app.runner.Comparison`: no Gradio, so tests read it.

Images are enlarged with nearest-neighbour scaling: the embedded model draws 32x32 pixels, and a
smoothed enlargement would hide exactly the detail a before/after comparison is about.
"""

from __future__ import annotations

from typing import Any

from crossgate.app.runner import Comparison, Settings
from crossgate.images import upscale_for_viewing

VIEW_SIDE = 256  # images smaller than this are enlarged by a whole factor to at least this side
HISTORY_SIDE = 128
LAYER_HEADERS = ["cross-attention layer", "computed (steps)", "replayed (passes)"]


def enlarge(image: Any, min_side: int = VIEW_SIDE) -> Any:
    """``image`` scaled up by a whole factor (nearest neighbour) until its short side is ``min_side``."""
    return upscale_for_viewing(image.convert("RGB"), min_side)


def pair_image(comparison: Comparison, min_side: int = HISTORY_SIDE, gap: int = 4) -> Any:
    """Plain and crossgate side by side on a white strip (a history entry)."""
    from PIL import Image

    left, right = enlarge(comparison.plain_image, min_side), enlarge(comparison.tgate_image, min_side)
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


def format_macs(macs: int | None) -> str:
    if macs is None:
        return "n/a"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if macs >= scale:
            return f"{macs / scale:.3f} {unit}"
    return f"{macs:,}"


def gate_text(comparison: Comparison) -> str:
    """The gate as asked and as used, e.g. ``0.4 -> m=10 of 25``."""
    asked = comparison.settings.gate
    used = f"m={comparison.gate} of {comparison.num_steps}"
    if not comparison.engaged:
        used += " (never engaged)"
    return used if str(asked) == str(comparison.gate) else f"{asked} -> {used}"


def settings_text(settings: Settings) -> str:
    parts = [f"seed {settings.seed}", f"{settings.steps} steps"]
    if settings.guidance is not None:
        parts.append(f"guidance {settings.guidance:g}")
    if settings.self_attention_interval is not None:
        parts.append(f"v2 k={settings.self_attention_interval}")
    if settings.deepcache_interval is not None:
        parts.append(f"DeepCache N={settings.deepcache_interval}")
    parts.append(f"{settings.rounds} timing round{'s' if settings.rounds != 1 else ''}")
    if settings.negative_prompt.strip():
        parts.append(f"negative {settings.negative_prompt.strip()!r}")
    return ", ".join(parts)


def numbers_markdown(comparison: Comparison) -> str:
    """The comparison's numbers as a Markdown table, with how each was made underneath."""
    c = comparison
    ratio = c.macs_ratio
    timing = c.timing
    low, high = timing.speedup_range
    spread = f" (per round {low:.2f}–{high:.2f}x)" if timing.rounds > 1 else ""
    mark = ", **indicative**" if timing.indicative else ""
    rows = [
        "| | plain | crossgate | crossgate vs plain |",
        "|---|---:|---:|---:|",
        f"| wall time ({timing.short_how}) | {c.plain_seconds:.3f} s | {c.tgate_seconds:.3f} s "
        f"| {c.speedup:.2f}x speed-up{spread}{mark} |",
        f"| executed MACs (denoiser, linear+conv) | {format_macs(c.plain_macs)} | {format_macs(c.tgate_macs)} "
        f"| {'n/a' if ratio is None else f'{ratio:.3f}'} MACs ratio |",
        f"| denoiser passes (batch) | {_passes(c.denoiser_batches[0])} | {_passes(c.denoiser_batches[1])} | |",
        f"| gate | | {gate_text(c)} | |",
    ]
    if timing.rounds == 1:
        how = (
            "one timed call of each pipeline: indicative only (one call can be off by more than the "
            "effect; use 3 or more timing rounds to measure)"
        )
    else:
        how = (
            f"median of {timing.rounds} rounds, each one plain and one crossgate call in alternating order"
            + ("; indicative only, under 3 rounds" if timing.indicative else "")
        )
    foot = (
        f"Model: {c.model}. Wall time: {how}, after an untimed warm-up (done once per loaded model); "
        f"MACs: {c.macs_method}, one image."
    )
    notes = "".join(f"\n\n**Note:** {note}" for note in c.notes)
    return "\n".join(rows) + f"\n\n{foot}{notes}"


def _passes(batches: list[int]) -> str:
    if not batches:
        return "-"
    runs: list[list[int]] = []
    for b in batches:
        if runs and runs[-1][0] == b:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    return " + ".join(f"{count}x{b}" for b, count in runs)


def layer_table(comparison: Comparison) -> tuple[list[str], list[list[Any]]]:
    """Per cross-attention layer: steps it computed and passes it replayed (+ v2 self-attention)."""
    c = comparison
    headers = list(LAYER_HEADERS)
    with_self = bool(c.self_attention_computed)
    if with_self:
        headers.append("its self-attention computed (steps)")
    rows: list[list[Any]] = []
    for name, computed in c.cross_attention_computed.items():
        row: list[Any] = [name, computed, c.cross_attention_replays.get(name, 0)]
        if with_self:
            sibling = name[: -len("attn2")] + "attn1" if name.endswith("attn2") else None
            row.append(c.self_attention_computed.get(sibling, "-") if sibling else "-")
        rows.append(row)
    return headers, rows


def convergence_figure(comparison: Comparison) -> Any:
    """This call's convergence curve with the gate marked (and ``"auto"``'s threshold)."""
    from matplotlib.figure import Figure

    c = comparison
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot()
    steps = list(range(1, len(c.convergence) + 1))
    if steps:
        ax.plot(steps, c.convergence, marker="o", color="black", lw=1.8, label="layer-averaged change")
        ax.set_ylim(0, max(c.convergence) * 1.15)
    else:
        ax.text(0.5, 0.5, "no step-to-step change before the gate (m=1)", ha="center", transform=ax.transAxes)
    if c.threshold is not None:
        ax.axhline(c.threshold, color="tab:blue", ls=":", lw=1.2, label=f"auto threshold {c.threshold:.3g}")
    if c.engaged:
        ax.axvline(c.gate, color="tab:red", ls="--", lw=1.5, label=f"gate m={c.gate}: replayed from here")
    ax.set_xlim(0.5, max(c.num_steps - 0.5, 1.5))
    ax.set_xlabel("denoising step t")
    ax.set_ylabel("||o_t - o_{t-1}|| / ||o_{t-1}||")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


HISTORY_HEADERS = [
    "#",
    "prompt",
    "settings",
    "gate",
    "plain s",
    "crossgate s",
    "speed-up",
    "timing",
    "MACs ratio",
]


def history_row(index: int, comparison: Comparison) -> list[Any]:
    c = comparison
    ratio = c.macs_ratio
    return [
        index,
        c.settings.prompt,
        settings_text(c.settings),
        gate_text(c),
        round(c.plain_seconds, 3),
        round(c.tgate_seconds, 3),
        round(c.speedup, 2),
        c.timing.short_how,
        None if ratio is None else round(ratio, 3),
    ]


def history_caption(index: int, comparison: Comparison) -> str:
    c = comparison
    ratio = "n/a" if c.macs_ratio is None else f"{c.macs_ratio:.2f}"
    return (
        f"#{index} {c.settings.prompt!r} ({settings_text(c.settings)}; gate {gate_text(c)}): "
        f"plain {c.plain_seconds:.2f} s | crossgate {c.tgate_seconds:.2f} s, {c.timing.short()}, MACs {ratio}"
    )
