"""Where does cross-attention converge? The paper's Figure 2 analysis (and its joint-attention twin).

TGATE rests on two observations: a cross-attention layer's output changes less and less from one
denoising step to the next, and the text only matters in the first steps (the second is tested by
:mod:`.null_text`). The original authors never released this analysis; these functions run it on
any diffusers pipeline with cross-attention so users can see where their model converges and pick
a gate step. The statistic is the engine's own (:func:`crossgate.tensors.relative_change` of the
CFG mean), so a curve recorded here equals what ``gate_step="auto"`` measures live.

Joint-attention pipelines (SD3, FLUX.1: :mod:`crossgate.joint`) have no cross-attention; there each
"layer" is a joint block and its output is the block's **text stream**: the text keys and values its
attention uses and the text output it hands on, concatenated per image (what TGATE freezes there).
Sequential CFG (FLUX's true CFG) records the last call of each step, the uncond one.
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

import crossgate
from crossgate.adapters import cross_attention_modules, resolve_adapter
from crossgate.joint import joint_blocks
from crossgate.tensors import cfg_mean, relative_change
from crossgate.tools.quality.outputs import pyplot
from crossgate.tools.quality.sampling import StepTracker, cfg_active, check_step_callback, generate_images

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
    if crossgate.is_applied(pipe):
        raise ValueError(
            "TGATE is applied to this pipeline, so its cross-attention outputs are replayed after the "
            "gate; call crossgate.remove(pipe) before analysing convergence."
        )
    check_step_callback(pipe)
    adapter = resolve_adapter(pipe)
    denoiser = adapter.denoiser(pipe)
    blocks = joint_blocks(denoiser) if adapter.joint else []
    layers = [(name, block) for name, block, _ in blocks] or cross_attention_modules(denoiser)
    kinds = {name: kind for name, _, kind in blocks}
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

    def make_text_hook(name: str):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            with torch.no_grad():  # blocks called positionally (HunyuanVideo) are read by name
                text = kinds[name].text_stream(module, kinds[name].bind(args, kwargs), output)
            parts = [text.key, text.value] + ([] if text.output is None else [text.output])
            rows = text.key.shape[0]
            latest[name] = torch.cat([p.detach().float().reshape(rows, -1) for p in parts], dim=1)

        return hook

    def views_of(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = cfg_active(pipe, tensor.shape[0], tracker.prompts, adapter)
        if not cfg_seen:
            cfg_seen.append(cfg)
        flat = tensor.reshape(tensor.shape[0], -1)
        if not cfg:
            return {"mean": flat}
        uncond, cond = flat.chunk(2)
        return {"mean": cfg_mean(flat), "cond": cond, "uncond": uncond}

    def on_step_end(step_index: int) -> None:
        missing = [name for name in names if name not in latest]
        if missing:
            raise RuntimeError(f"cross-attention layers not run in step {step_index}: {missing[:3]}")
        current = {name: views_of(latest[name]) for name in names}
        if step_index > 0:
            t = step_index - 1
            for name in names:
                for view, now in current[name].items():
                    row = sums.setdefault(view, {}).setdefault(name, [])
                    while len(row) <= t:
                        row.append(0.0)
                    # the batch's mean ratio times its images: batches then weigh per image
                    row[t] += relative_change(now, previous[name][view]) * now.shape[0]
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

    handles = [
        module.register_forward_hook(make_text_hook(name), with_kwargs=True)
        if name in kinds
        else module.register_forward_hook(make_hook(name))
        for name, module in layers
    ]
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
    plt = pyplot()
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
