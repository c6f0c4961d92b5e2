"""The null-text ablation: does the text still matter after step ``m``?

TGATE's second observation: replacing the text condition by the null text after step ``m`` barely
changes the image, replacing it before step ``m`` ruins it. These functions generate both arms at
the plain run's seeds and score them against it (MSE / PSNR / SSIM, and the judge's accuracies when
the prompts are scene captions).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossgate.tools.quality.judge import Accuracy, Judge, score_images
from crossgate.tools.quality.metrics import mse, psnr_from_mse, ssim
from crossgate.tools.quality.outputs import finite, image_grid, pyplot
from crossgate.tools.quality.sampling import StepTracker, generate_images, null_text


@dataclass
class NullTextRow:
    """One ablation arm's images compared with the plain pipeline's at the same seeds."""

    gate: int
    arm: str
    mse: float
    psnr: float
    ssim: float
    object_accuracy: float | None = None
    relation_accuracy: float | None = None
    relation_flipped: float | None = None


@dataclass
class NullTextResult:
    num_steps: int
    prompts: list[str]
    rows: list[NullTextRow]
    plain_object_accuracy: float | None = None
    plain_relation_accuracy: float | None = None
    plain_relation_flipped: float | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "images"}
        return finite(data)


def null_text_ablation(
    pipe: Any,
    prompts: Sequence[str],
    gates: Sequence[int],
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    judge_captions: bool = True,
) -> NullTextResult:
    """Null text before step ``m`` vs after step ``m``, compared with the plain output.

    For each gate ``m``, generates the prompts with the text condition replaced by the null text
    in steps ``< m`` ("before") and in steps ``>= m`` ("after"), at the same seeds as the plain run,
    and reports MSE / PSNR / SSIM against the plain images. When every prompt is a caption the
    embedded scenes can parse and ``judge_captions`` is set, the judge's object and strict relation
    accuracy (with its flipped control) are reported too.
    """
    if not prompts:
        raise ValueError("no prompts given")
    bad = [m for m in gates if not 0 < m <= num_inference_steps]
    if bad:
        raise ValueError(f"null-text gates {bad} are outside 1..{num_inference_steps} (the step count)")
    seeds = [seed + i for i in range(len(prompts))]
    plain = generate_images(pipe, prompts, seeds, num_inference_steps, guidance_scale, batch_size).images
    scorer = _caption_scorer(prompts) if judge_captions else None
    result = NullTextResult(num_steps=num_inference_steps, prompts=list(prompts), rows=[])
    result.images["plain"] = plain
    if scorer is not None:
        acc = scorer(plain)
        result.plain_object_accuracy = acc.object_accuracy
        result.plain_relation_accuracy = acc.relation_accuracy
        result.plain_relation_flipped = acc.relation_flipped_accuracy
    for gate in gates:
        for arm in ("before", "after"):
            tracker = StepTracker()
            with null_text(pipe, arm, gate, tracker):
                images = generate_images(
                    pipe, prompts, seeds, num_inference_steps, guidance_scale, batch_size, tracker=tracker
                ).images
            result.images[f"{arm}-m{gate}"] = images
            errors = mse(images, plain)
            row = NullTextRow(
                gate=gate,
                arm=f"null text {arm} m",
                mse=float(errors.mean()),
                psnr=psnr_from_mse(float(errors.mean())),
                ssim=float(ssim(images, plain).mean()),
            )
            if scorer is not None:
                acc = scorer(images)
                row.object_accuracy = acc.object_accuracy
                row.relation_accuracy = acc.relation_accuracy
                row.relation_flipped = acc.relation_flipped_accuracy
            result.rows.append(row)
    return result


def _caption_scorer(prompts: Sequence[str]) -> Callable[[np.ndarray], Accuracy] | None:
    """A function scoring images against ``prompts`` with the judge, or None if they aren't captions."""
    judge = Judge()
    try:
        captions = [judge.parse(prompt) for prompt in prompts]
    except ValueError:
        return None
    return lambda images: score_images(judge, images, captions)


def write_null_text(result: NullTextResult, out_dir: Path, max_rows: int = 8) -> list[Path]:
    """``null_text.json``, ``null_text.csv``, a metric plot and an image grid (first prompts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "null_text.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2))
    csv_path = out_dir / "null_text.csv"
    fields = list(NullTextRow.__dataclass_fields__)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in result.rows:
            writer.writerow(asdict(row))
    plot_path = out_dir / "null_text.png"
    plot_null_text(result, plot_path)
    grid_path = out_dir / "null_text_samples.png"
    columns = [
        "plain",
        *(f"{arm}-m{g}" for g in sorted({r.gate for r in result.rows}) for arm in ("before", "after")),
    ]
    image_grid([result.images[c][:max_rows] for c in columns], columns).save(grid_path)
    return [json_path, csv_path, plot_path, grid_path]


def plot_null_text(result: NullTextResult, path: Path) -> None:
    plt = pyplot()
    judged = result.rows and result.rows[0].relation_accuracy is not None
    fig, axes = plt.subplots(
        1, 2 if judged else 1, figsize=(10 if judged else 5.5, 4), dpi=120, squeeze=False
    )
    for arm, style in (("before", "o-"), ("after", "s-")):
        rows = [r for r in result.rows if r.arm == f"null text {arm} m"]
        axes[0, 0].plot([r.gate for r in rows], [r.ssim for r in rows], style, label=f"null text {arm} m")
        if judged:
            axes[0, 1].plot(
                [r.gate for r in rows],
                [r.object_accuracy for r in rows],
                style,
                label=f"objects, null {arm} m",
            )
            axes[0, 1].plot(
                [r.gate for r in rows],
                [r.relation_accuracy for r in rows],
                style,
                alpha=0.5,
                label=f"relation, null {arm} m",
            )
    axes[0, 0].set_xlabel("m")
    axes[0, 0].set_ylabel("SSIM vs plain (same seed)")
    axes[0, 0].set_ylim(0, 1.02)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].grid(alpha=0.3)
    if judged:
        axes[0, 1].axhline(result.plain_object_accuracy, color="grey", ls="--", lw=1, label="plain objects")
        axes[0, 1].axhline(result.plain_relation_accuracy, color="grey", ls=":", lw=1, label="plain relation")
        axes[0, 1].set_xlabel("m")
        axes[0, 1].set_ylabel("judge accuracy")
        axes[0, 1].set_ylim(0, 1.02)
        axes[0, 1].legend(fontsize=7)
        axes[0, 1].grid(alpha=0.3)
    fig.suptitle(f"Null-text ablation ({result.num_steps} steps, {len(result.prompts)} prompts)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
