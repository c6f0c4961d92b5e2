"""Where does cross-attention converge? The paper's Figure 2 analysis and null-text ablation.

TGATE rests on two observations: a cross-attention layer's output changes less and less from one
denoising step to the next, and the text only matters in the first steps (replacing it by the null
text after step ``m`` barely changes the image, before step ``m`` it ruins it). The original authors
never released this analysis; these functions run it on any diffusers pipeline with cross-attention
so users can see where their model converges and pick a gate step.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossgate.adapters import cross_attention_modules, resolve_adapter
from crossgate.tools.quality.metrics import mse, psnr_from_mse, ssim
from crossgate.tools.quality.sampling import (
    StepTracker,
    cfg_active,
    check_step_callback,
    generate_images,
    null_text,
)

VIEWS = ("mean", "cond", "uncond")


@dataclass
class ConvergenceResult:
    """Relative change ``||o_t - o_{t-1}|| / ||o_{t-1}||`` of every cross-attention layer.

    ``relative_change[view][layer][t - 1]`` is the change from step ``t - 1`` to step ``t``
    (``t = 1 .. num_steps - 1``), the norm taken per image and the ratio averaged over images. Under
    classifier-free guidance the views are ``"mean"`` (the average of the two CFG halves: what
    TGATE caches and replays), ``"cond"`` and ``"uncond"``; without CFG only ``"mean"`` (the single
    branch) is recorded.
    """

    layers: list[str]
    num_steps: int
    cfg: bool
    prompts: list[str]
    timesteps: list[float] = field(default_factory=list)
    relative_change: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def average(self, view: str = "mean") -> list[float]:
        """The per-step relative change averaged over layers."""
        rows = np.array([self.relative_change[view][layer] for layer in self.layers])
        return rows.mean(axis=0).tolist()

    def settle_step(self, threshold: float = 0.05, view: str = "mean") -> int | None:
        """First step ``t`` from which the layer-averaged change stays below ``threshold``.

        A heuristic hint for the gate step (the cache taken after step ``t`` would differ from later
        outputs by roughly that fraction per step), not a replacement for a quality check.
        """
        curve = self.average(view)
        for index in range(len(curve)):
            if all(value < threshold for value in curve[index:]):
                return index + 1
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["average"] = {view: self.average(view) for view in self.relative_change}
        data["settle_step_5pct"] = self.settle_step(0.05)
        data["settle_step_10pct"] = self.settle_step(0.10)
        return data


def record_convergence(
    pipe: Any,
    prompts: Sequence[str],
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> ConvergenceResult:
    """Run ``pipe`` on ``prompts`` and record every cross-attention layer's output at every step.

    Lightweight forward hooks (removed afterwards) keep only the current and previous step's output
    per layer; the step boundaries come from the pipeline's ``callback_on_step_end``, and when a
    step calls the denoiser more than once (second-order schedulers) its last output counts.
    Multiple prompt batches are averaged with equal weight per image.
    """
    import crossgate

    if crossgate.is_applied(pipe):
        raise ValueError(
            "TGATE is applied to this pipeline, so its cross-attention outputs are replayed after the "
            "gate; call crossgate.remove(pipe) before analysing convergence."
        )
    check_step_callback(pipe)
    adapter = resolve_adapter(pipe)
    layers = cross_attention_modules(adapter.denoiser(pipe))
    names = [name for name, _ in layers]
    latest: dict[str, torch.Tensor] = {}
    previous: dict[str, dict[str, torch.Tensor]] = {}
    # sums[view][layer][t-1] = sum over images of the per-image ratio; counts per step.
    sums: dict[str, dict[str, list[float]]] = {}
    counts: list[int] = []
    timesteps: list[float] = []
    cfg_seen: list[bool] = []

    def make_hook(name: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            latest[name] = tensor.detach().float().clone()

        return hook

    def views_of(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = cfg_active(pipe, tensor.shape[0], tracker.prompts)
        if not cfg_seen:
            cfg_seen.append(cfg)
        flat = tensor.reshape(tensor.shape[0], -1)
        if not cfg:
            return {"mean": flat}
        uncond, cond = flat.chunk(2)
        return {"mean": (uncond + cond) / 2, "cond": cond, "uncond": uncond}

    def on_step_end(step_index: int) -> None:
        missing = [name for name in names if name not in latest]
        if missing:
            raise RuntimeError(f"cross-attention layers not run in step {step_index}: {missing[:3]}")
        current = {name: views_of(latest[name]) for name in names}
        if step_index > 0:
            t = step_index - 1
            for name in names:
                for view, now in current[name].items():
                    before = previous[name][view]
                    ratio = (now - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-12)
                    row = sums.setdefault(view, {}).setdefault(name, [])
                    while len(row) <= t:
                        row.append(0.0)
                    row[t] += float(ratio.sum())
            if len(counts) <= t:
                counts.append(0)
            counts[t] += next(iter(current[names[0]].values())).shape[0]
        previous.clear()
        previous.update(current)
        latest.clear()

    tracker = StepTracker()
    tracker.listeners.append(on_step_end)

    def timestep_recorder(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if timestep is not None and tracker.step == len(timesteps):
            timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))

    handles = [module.register_forward_hook(make_hook(name)) for name, module in layers]
    handles.append(adapter.denoiser(pipe).register_forward_pre_hook(timestep_recorder, with_kwargs=True))
    try:
        generate_images(
            pipe,
            list(prompts),
            [seed + i for i in range(len(prompts))],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
            tracker=tracker,
        )
    finally:
        for handle in handles:
            handle.remove()
    if not counts:
        raise ValueError("need at least 2 denoising steps to measure a change between steps")
    relative = {
        view: {name: [total / counts[t] for t, total in enumerate(per_layer[name])] for name in names}
        for view, per_layer in sums.items()
    }
    return ConvergenceResult(
        layers=names,
        num_steps=num_inference_steps,
        cfg=bool(cfg_seen and cfg_seen[0]),
        prompts=list(prompts),
        timesteps=timesteps[:num_inference_steps],
        relative_change=relative,
    )


def write_convergence(result: ConvergenceResult, out_dir: Path) -> list[Path]:
    """``convergence.json``, ``convergence.csv`` (long format) and ``convergence.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "convergence.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2))
    csv_path = out_dir / "convergence.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["view", "layer", "step", "relative_change"])
        for view, per_layer in result.relative_change.items():
            for name in result.layers:
                for t, value in enumerate(per_layer[name], start=1):
                    writer.writerow([view, name, t, f"{value:.6g}"])
            for t, value in enumerate(result.average(view), start=1):
                writer.writerow([view, "average", t, f"{value:.6g}"])
    png_path = out_dir / "convergence.png"
    plot_convergence(result, png_path)
    return [json_path, csv_path, png_path]


def plot_convergence(result: ConvergenceResult, path: Path) -> None:
    """Per-layer curves (thin) and the layer average (thick) of the relative change per step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    steps = np.arange(1, result.num_steps)
    cmap = plt.get_cmap("viridis")
    for index, name in enumerate(result.layers):
        colour = cmap(index / max(1, len(result.layers) - 1))
        ax.plot(steps, result.relative_change["mean"][name], color=colour, lw=0.8, alpha=0.6)
    ax.plot(steps, result.average("mean"), color="black", lw=2.4, label="layer average (CFG mean)")
    if "cond" in result.relative_change:
        ax.plot(steps, result.average("cond"), color="tab:red", lw=1.4, ls="--", label="average, cond half")
        ax.plot(
            steps, result.average("uncond"), color="tab:blue", lw=1.4, ls=":", label="average, uncond half"
        )
    ax.set_yscale("log")
    ax.set_xlabel("denoising step t")
    ax.set_ylabel("||o_t - o_{t-1}|| / ||o_{t-1}||")
    ax.set_title(f"Cross-attention output change per step ({len(result.layers)} layers, thin lines)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        return _finite(data)


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


def _caption_scorer(prompts: Sequence[str]):
    """A function scoring images against ``prompts`` with the judge, or None if they aren't captions."""
    try:
        from crossgate.tools.quality.judge import Judge, score_images

        judge = Judge()
        captions = [judge.parse(prompt) for prompt in prompts]
    except (ImportError, ValueError):
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
    plt = _pyplot()
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


def image_grid(columns: Sequence[np.ndarray], labels: Sequence[str], scale: int = 4):
    """A PIL grid: one column per image set (rows are prompts), labels on top, nearest upscaling."""
    from PIL import Image, ImageDraw

    rows = min(len(c) for c in columns)
    h, w = columns[0].shape[1:3]
    cell_w, cell_h, header = w * scale + 4, h * scale + 4, 16
    canvas = Image.new("RGB", (cell_w * len(columns), header + cell_h * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for ci, (images, label) in enumerate(zip(columns, labels)):
        draw.text((ci * cell_w + 2, 2), label, fill="black")
        for ri in range(rows):
            tile = Image.fromarray(images[ri]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (ci * cell_w + 2, header + ri * cell_h + 2))
    return canvas


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'crossgate[plots]'") from error
    return plt


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
