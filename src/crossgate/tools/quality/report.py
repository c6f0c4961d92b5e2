"""Write an :class:`~crossgate.tools.quality.runner.EvalReport` as markdown, CSV, JSON and PNG plots."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from crossgate.tools.quality.outputs import image_grid, pyplot
from crossgate.tools.quality.runner import ConfigResult, EvalReport

COLUMNS = (
    ("config", lambda r: r.name),
    ("objects", lambda r: f"{r.object_accuracy:.3f}"),
    ("relation", lambda r: f"{r.relation_accuracy:.3f}"),
    ("flipped ctl", lambda r: f"{r.relation_flipped:.3f}"),
    ("caption", lambda r: f"{r.caption_accuracy:.3f}"),
    ("FD", lambda r: f"{r.frechet:.3f}"),
    ("PSNR dB", lambda r: "inf" if math.isinf(r.psnr) else f"{r.psnr:.2f}"),
    ("SSIM", lambda r: f"{r.ssim:.4f}"),
    ("MACs/img", lambda r: f"{r.macs_per_image / 1e9:.3f}G"),
    ("MACs vs plain", lambda r: f"{r.macs_vs_plain:.3f}"),
    ("s/img", lambda r: f"{r.seconds_per_image:.4f}"),
)


def markdown_table(report: EvalReport) -> str:
    """The per-configuration table, with a line saying what was measured."""
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(fmt(r) for _, fmt in COLUMNS) + " |" for r in report.results]
    note = (
        f"{len(report.captions)} captions x {report.per_caption} seeds = "
        f"{report.results[0].images if report.results else 0} images per configuration, "
        f"{report.steps} steps, guidance {report.guidance_scale or 'pipeline default'}; "
        f"FD of real vs real procedural images (noise floor): {report.reference_frechet:.3f}."
    )
    return "\n".join([head, rule, *rows, "", note]) + "\n"


def write_report(report: EvalReport, out_dir: Path) -> list[Path]:
    """``eval.md``, ``eval.csv``, ``eval.json``, ``eval.png`` (quality vs compute), ``samples.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "eval.md"
    md.write_text(markdown_table(report))
    table = out_dir / "eval.csv"
    fields = [f for f in ConfigResult.__dataclass_fields__ if f != "denoiser_batches"]
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for result in report.results:
            row = asdict(result)
            row.pop("denoiser_batches")
            writer.writerow(row)
    js = out_dir / "eval.json"
    js.write_text(json.dumps(report.to_json(), indent=2))
    plot = out_dir / "eval.png"
    plot_quality_vs_compute(report, plot)
    paths = [md, table, js, plot]
    if report.samples:
        grid = out_dir / "samples.png"
        names = list(report.samples)
        image_grid([report.samples[n] for n in names], names).save(grid)
        paths.append(grid)
    return paths


def plot_quality_vs_compute(report: EvalReport, path: Path) -> None:
    """Accuracy (with the flipped control) and FD / SSIM against executed MACs per image."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    tgate = sorted(
        (r for r in report.results if r.kind in ("plain", "tgate")), key=lambda r: r.macs_per_image
    )
    x = [r.macs_per_image / 1e9 for r in tgate]
    left.plot(x, [r.object_accuracy for r in tgate], "o-", label="object accuracy")
    left.plot(x, [r.relation_accuracy for r in tgate], "s-", label="strict relation accuracy")
    left.plot(x, [r.relation_flipped for r in tgate], "v--", color="grey", label="flipped-relation control")
    for r, xi in zip(tgate, x):
        left.annotate(r.name.replace("tgate ", ""), (xi, r.object_accuracy), fontsize=6, rotation=45)
    others = [r for r in report.results if r.kind.startswith("null")]
    for r in others:
        left.scatter([r.macs_per_image / 1e9], [r.relation_accuracy], marker="x", color="tab:red")
        left.annotate(r.name, (r.macs_per_image / 1e9, r.relation_accuracy), fontsize=6, color="tab:red")
    left.set_xlabel("executed denoiser MACs per image (G, linear+conv)")
    left.set_ylabel("judge accuracy")
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot(x, [r.frechet for r in tgate], "o-", color="tab:purple", label="FD to real (judge features)")
    right.axhline(report.reference_frechet, color="tab:purple", ls=":", lw=1, label="FD real vs real")
    right.set_xlabel("executed denoiser MACs per image (G)")
    right.set_ylabel("Frechet distance")
    right.grid(alpha=0.3)
    twin = right.twinx()
    twin.plot(x, [r.ssim for r in tgate], "s--", color="tab:green", label="SSIM vs plain")
    twin.set_ylabel("SSIM vs plain (same seed)")
    twin.set_ylim(0, 1.02)
    lines = right.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    right.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    fig.suptitle(f"TGATE quality vs compute ({report.steps} steps, {report.results[0].images} images/config)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
