"""A benchmark's outputs: the markdown table (with its caveats), CSV and a chart."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from crossgate.tools.bench.runner import MIN_ROUNDS, BenchReport

CAVEAT_MARK = "†"
UNRESOLVED_MARK = "‡"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread(row: dict) -> str:
    if row["min_s"] is None:
        return "-"
    return f"{row['min_s']:.3f}–{row['max_s']:.3f}"


def load_text(report: BenchReport) -> str:
    """``load 1.42 -> 1.10 (2 CPUs)``: the 1-minute load average as the model's runs began and ended."""
    if report.load is None or report.load[0] is None:
        return ""
    start, end = report.load
    during = f"{start:.2f}" if end is None else f"{start:.2f} -> {end:.2f}"
    return f"load average {during} on {os.cpu_count() or '?'} CPUs"


def markdown(reports: Sequence[BenchReport]) -> str:
    """One table per report. A row timed in fewer than :data:`MIN_ROUNDS` rounds or without a
    warm-up is marked (its rounds, and every ratio it or the baseline enters) and footnoted, so
    an indicative number is never read as a measurement. A row whose min-max overlaps a row it is
    compared with (its baseline, or a row doing the same MACs) is marked too: that difference is
    within the run-to-run spread. Each heading carries the machine's load while the rows ran."""
    lines = []
    for report in reports:
        rows = report.rows()
        load = load_text(report)
        base_caveat = bool(rows and rows[0]["caveat"])
        memory = any(row.get("peak_mib") is not None for row in rows)  # CUDA runs only
        compiled = any(row["versus"] != rows[0]["config"] for row in rows[1:])
        lines += [
            f"### {report.model} ({report.setting})" + (f", {load}" if load else ""),
            "",
            "| config | median s | min–max s | rounds | speed-up | GMACs per image (counted) "
            "| MACs speed-up | efficiency |"
            + (" first call s |" if compiled else "")
            + (" peak MiB |" if memory else "")
            + " note |",
            "|---|---|---|---|---|---|---|---|"
            + ("---|" if compiled else "")
            + ("---|" if memory else "")
            + "---|",
        ]
        for row in rows:
            own = CAVEAT_MARK if row["caveat"] else ""
            timed = CAVEAT_MARK if row["caveat"] or base_caveat else ""
            speedup = "-" if row["speedup"] is None else f"{row['speedup']:.3f}x{timed}"
            efficiency = "-" if row["efficiency"] is None else f"{row['efficiency']:.3f}{timed}"
            peak = f" {_fmt(row.get('peak_mib'), '.0f')} |" if memory else ""
            first = f" {_fmt(row['first_s'], '.2f')} |" if compiled else ""
            if row["versus"] != rows[0]["config"] and row["speedup"] is not None:
                speedup += f" (vs {row['versus']})"
            note = row["note"]
            if row["unresolved"] and row["speedup"] is not None:
                speedup += UNRESOLVED_MARK
                note = "; ".join(part for part in (note, f"within the spread of {row['unresolved']}") if part)
            lines.append(
                f"| {row['config']} | {_fmt(row['median_s'], '.3f')} | {_spread(row)} | {row['runs']}{own} "
                f"| {speedup} | {_fmt(row['gmacs'], '.5g')} | {_fmt(row['predicted_speedup'], '.3f')}x "
                f"| {efficiency} |{first}{peak} {note} |"
            )
        if compiled:
            lines += [
                "",
                "Compiled rows: the denoiser is `torch.compile(..., fullgraph=True)`d; their speed-up is "
                "against plain compiled, their MACs are their eager twin's, and the first call (the "
                "first warm-up, compile included) is reported apart from the timed rounds.",
            ]
        if any(row["unresolved"] and row["speedup"] is not None for row in rows):
            lines += [
                "",
                f"{UNRESOLVED_MARK} not resolved by this run: its min–max overlaps that of the row named in its "
                "note (its baseline, or a row executing the same MACs), so the difference between the two is "
                "smaller than the run-to-run spread; more rounds or a quieter machine may resolve it.",
            ]
        flagged = sorted({row["caveat"] for row in rows if row["caveat"]})
        if flagged:
            lines += [
                "",
                f"{CAVEAT_MARK} indicative only, not a measurement to quote: timed with "
                f"{'; '.join(flagged)} (a median needs >= {MIN_ROUNDS} rounds after a warm-up run; "
                f"rerun with --repeats {MIN_ROUNDS} --warmup 1 or more). Ratios carry the mark when "
                "their row or the plain row is affected.",
            ]
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
        names = [
            r["config"]
            + (f" {CAVEAT_MARK}" if r["caveat"] else "")
            + (f" {UNRESOLVED_MARK}" if r["unresolved"] else "")
            for r in rows
        ]
        x = range(len(rows))
        # Error bars: the min-max of the per-round speed-ups (rounds rotate, so each round's ratio is
        # taken between runs made close together).
        low = [max(0.0, r["speedup"] - (r["speedup_min"] or r["speedup"])) for r in rows]
        high = [max(0.0, (r["speedup_max"] or r["speedup"]) - r["speedup"]) for r in rows]
        ax.bar(
            [i - 0.2 for i in x],
            [r["speedup"] for r in rows],
            0.4,
            yerr=[low, high],
            capsize=3,
            error_kw={"lw": 0.9},
            label="measured (bars: min–max over rounds)",
        )
        ax.bar([i + 0.2 for i in x], [r["predicted_speedup"] or 0 for r in rows], 0.4, label="MACs-predicted")
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("speed-up over plain")
        load = load_text(report)
        ax.set_title(f"{report.model} ({report.setting})" + (f"\n{load}" if load else ""), fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
