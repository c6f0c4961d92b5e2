"""The quality-for-compute frontier study of docs/quality-frontier.md.

    python scripts/frontier_study.py run screen --out-dir /tmp/frontier      # one stage, via crossgate eval
    python scripts/frontier_study.py report /tmp/frontier/full-ddim-25 ... \\
        --plot docs/img/quality-frontier.png --table /tmp/frontier/table.md

``run STAGE`` calls ``crossgate eval`` (in this process, one torch thread) with the stage's captions,
seeds, steps, scheduler and configurations, writing ``OUT/STAGE/eval.*`` and ``OUT/STAGE/wall.txt``.
``report DIR...`` reads each ``eval.json`` and marks every row against the study's bar for *equal
quality*: object and relation accuracy within 1 point of plain, FD and PSNR no worse than the fixed
gate at 0.4 of the steps in the same run; it writes one markdown table per run and one plot of
caption accuracy and PSNR against executed MACs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

TOLERANCE = 0.01  # accuracy within 1 point of plain


@dataclass(frozen=True)
class Stage:
    steps: int
    captions: int
    per_caption: int
    configs: tuple[str, ...]
    scheduler: str = "ddim"
    gate_steps: tuple[int, ...] = ()
    batch_size: int = 48
    extra: tuple[str, ...] = field(default=())

    def argv(self, out_dir: Path) -> list[str]:
        args = ["eval", "--threads", "1", "--steps", str(self.steps), "--scheduler", self.scheduler]
        args += ["--max-captions", str(self.captions), "--per-caption", str(self.per_caption)]
        args += ["--batch-size", str(self.batch_size), "--seed", "0", "--out-dir", str(out_dir)]
        args += ["--gate-steps", ",".join(str(m) for m in self.gate_steps)]
        for spec in self.configs:
            args += ["--config", spec]
        return args + list(self.extra)


def _kept(gate: int, *options: str) -> list[str]:
    return [f"tgate:{gate}:{option}" for option in options]


SCREEN = Stage(
    steps=25,
    captions=24,
    per_caption=2,
    gate_steps=(2, 3, 5, 8, 10, 15),
    configs=(
        # what TGATE loses: guidance vs frozen cross-attention
        *("cfg-cutoff:5", "cfg-cutoff:10", "cfg-cutoff:15", "cache-only:5", "cache-only:10", "cache-only:15"),
        # guidance kept after the gate (engine: w d^k; study hook: noise-level rescaled)
        *_kept(10, "w=1", "w=1:d=0.9", "w=1:d=0.8", "w=0.5", "w=1:ws=eps"),
        *_kept(5, "w=1:d=0.8", "w=1:d=0.7", "w=1:ws=eps"),
        *_kept(3, "w=1:ws=eps"),
        *_kept(8, "w=1:ws=eps"),
        "cfg-cutoff:10:w=1:ws=eps",
        # DeepCache alone and composed; v2
        *("deepcache:2", "deepcache:3", "deepcache:5", "deepcache:10"),
        *_kept(10, "dc=2", "dc=3", "dc=5"),
        *_kept(15, "dc=3", "dc=5"),
        *_kept(10, "dc=3:w=1:ws=eps", "dc=5:w=1:ws=eps"),
        *_kept(15, "dc=5:w=1:ws=eps"),
        *_kept(10, "k=3", "k=5"),
    ),
)

SCREEN2 = Stage(
    steps=25,
    captions=24,
    per_caption=2,
    gate_steps=(10, 18, 20),
    configs=(
        "deepcache:4",
        *_kept(15, "dc=2"),
        *_kept(18, "dc=3"),
        *_kept(20, "dc=3", "dc=4"),
        *_kept(15, "dc=3:w=1:d=0.8", "dc=3:w=0.5:d=0.8"),
        *_kept(20, "dc=3:w=1:d=0.8"),
        *_kept(8, "w=1:d=0.8", "w=0.5:d=0.8", "w=0.7:d=0.7"),
        *_kept(10, "w=0.7:d=0.8", "w=1:d=0.7"),
        *_kept(15, "w=1:d=0.8"),
        "cfg-cutoff:8",
        # DeepCache after the gate only (full passes before it), with kept guidance
        *_kept(10, "dca=3", "dca=5", "w=1:d=0.8:dca=3", "w=1:d=0.8:dca=5"),
        *_kept(15, "dc=2:dca=5", "dc=3:dca=6"),
    ),
)

# The frontier candidates and the baselines at full scale: 96 held-out captions x 4 seeds.
FULL_CONFIGS = (
    *("cfg-cutoff:5", "cfg-cutoff:10", "cfg-cutoff:15", "cache-only:5", "cache-only:10", "cache-only:15"),
    *_kept(10, "w=1", "w=1:d=0.8", "w=1:ws=eps"),
    *_kept(15, "w=1:d=0.8"),
    *("deepcache:2", "deepcache:3", "deepcache:4"),
    *_kept(15, "dc=3", "dc=3:w=1:d=0.8", "dc=2:dca=5"),
    *_kept(18, "dc=3"),
    *_kept(20, "dc=3", "dc=3:w=1:d=0.8"),
    *_kept(10, "dca=5", "w=1:d=0.8:dca=5"),
    *_kept(10, "k=3"),
)
FULL25 = Stage(steps=25, captions=96, per_caption=4, gate_steps=(3, 5, 8, 10, 15, 20), configs=FULL_CONFIGS)

# Transfer checks for the fewest configurations that answer the question (96 captions x 2 seeds).
# At n=50 a decay per step of 0.9 is 0.8 per 1/25 of the trajectory.
DDIM50 = Stage(
    steps=50,
    captions=96,
    per_caption=2,
    gate_steps=(20, 30),
    configs=("deepcache:3", "deepcache:5", *_kept(40, "dc=3", "dc=3:w=1:d=0.9"), *_kept(30, "w=1:d=0.9")),
)
DPM25 = Stage(
    steps=25,
    captions=96,
    per_caption=2,
    scheduler="dpm",
    gate_steps=(10, 15, 20),
    configs=(
        "cfg-cutoff:10",
        "cache-only:10",
        "deepcache:2",
        "deepcache:3",
        *_kept(15, "w=1:d=0.8"),
        *_kept(20, "dc=3:w=1:d=0.8"),
    ),
)

GATED = ("tgate", "cfg-cutoff", "cache-only")


def rescaled(spec: str, factor: int) -> str:
    """``spec`` for ``factor`` times the steps: the same gate fraction and the same decay per fraction.

    Gates scale with the steps; a per-step decay ``d`` becomes ``d ** (1 / factor)``; DeepCache
    intervals stay per step (an interval of 3 is one full pass in three at any n).
    """
    kind, *rest = spec.split(":")
    if kind not in GATED or factor == 1:
        return spec
    gate, *options = rest
    scaled = [f"d={float(o[2:]) ** (1 / factor):.2g}" if o.startswith("d=") else o for o in options]
    return ":".join([kind, str(int(gate) * factor), *scaled])


# The second step count at full scale (96 x 4): the fixed gates and, rescaled, the candidates and
# ablations that decided the n=25 verdicts (the whole n=25 set would take over two hours here).
FULL50 = Stage(
    steps=50,
    captions=96,
    per_caption=4,
    gate_steps=(10, 16, 20, 30, 40),
    configs=(
        *(rescaled(c, 2) for c in ("cfg-cutoff:5", "cfg-cutoff:10", "cache-only:10")),
        *(rescaled(c, 2) for c in _kept(10, "w=1:d=0.8") + _kept(15, "w=1:d=0.8")),
        *("deepcache:3", "deepcache:5"),
        *_kept(36, "dc=3"),
        *_kept(40, "dc=3", "dc=5"),
        *(rescaled(c, 2) for c in _kept(10, "dca=5", "k=3")),
    ),
)

# The second scheduler at full scale (96 x 4): the transfer set plus the earlier fixed gates.
FULLDPM = replace(DPM25, per_caption=4, gate_steps=(5, 8, 10, 15, 20))

STAGES: dict[str, Stage] = {
    "screen": SCREEN,
    "screen2": SCREEN2,
    "full-ddim-25": FULL25,
    "ddim-50": DDIM50,
    "dpm-25": DPM25,
    "full-ddim-50": FULL50,
    "full-dpm-25": FULLDPM,
}


def run(stage_name: str, out_root: Path) -> int:
    from crossgate.cli import main

    stage = STAGES[stage_name]
    out_dir = out_root / stage_name
    began = time.perf_counter()
    rc = main(stage.argv(out_dir))
    seconds = time.perf_counter() - began
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "wall.txt").write_text(f"{seconds:.1f} s\n{' '.join(stage.argv(out_dir))}\n")
    print(f"[frontier] {stage_name}: {seconds:.1f} s wall, rc {rc}")
    return rc


# ---------------------------------------------------------------------------------------------- report


def _load(path: Path) -> dict:
    data = json.loads((path / "eval.json").read_text() if path.is_dir() else path.read_text())
    for row in data["results"]:
        row["psnr"] = math.inf if row["psnr"] == "inf" else float(row["psnr"])
    return data


def reference_row(data: dict) -> dict:
    """The fixed gate at 0.4 of the steps (the default ``gate_step=0.4``)."""
    gate = max(1, math.floor(0.4 * data["steps"] + 0.5))
    name = f"tgate m={gate}"
    rows = [r for r in data["results"] if r["name"] == name]
    if not rows:
        raise SystemExit(f"no {name!r} row (the 0.4 reference) in a {data['steps']}-step run")
    return rows[0]


def equal_quality(row: dict, plain: dict, reference: dict, fd: bool = True) -> bool:
    """The issue's bar; ``fd=False`` drops its FD part (accuracy and PSNR only)."""
    return (
        row["object_accuracy"] >= plain["object_accuracy"] - TOLERANCE - 1e-9
        and row["relation_accuracy"] >= plain["relation_accuracy"] - TOLERANCE - 1e-9
        and (not fd or row["frechet"] <= reference["frechet"] + 1e-9)
        and row["psnr"] >= reference["psnr"] - 1e-9
    )


def family(name: str) -> str:
    if name == "plain":
        return "plain"
    if name.startswith("deepcache"):
        return "DeepCache alone"
    if name.startswith(("cfg-cutoff", "cache-only", "null")):
        return name.split(" ")[0]
    dc = " dc=" in name or " dca=" in name
    kept = " w=" in name
    if " k=" in name:
        return "tgate v2"
    if dc and kept:
        return "tgate + DeepCache + kept guidance"
    if dc:
        return "tgate + DeepCache"
    if kept:
        return "tgate + kept guidance"
    return "tgate (fixed gate)"


def markdown(data: dict, label: str) -> str:
    plain = data["results"][0]
    reference = reference_row(data)
    head = (
        "| config | objects | relation | flipped | caption | FD | PSNR dB | SSIM | MACs vs plain | fewer MACs "
        "| equal quality | acc + PSNR only |"
    )
    rule = "|" + "---|" * 12
    rows = []
    for r in sorted(data["results"], key=lambda r: -r["macs_vs_plain"]):
        psnr = "inf" if math.isinf(r["psnr"]) else f"{r['psnr']:.2f}"
        ok = "yes" if r is not plain and equal_quality(r, plain, reference) else ""
        ok2 = "yes" if r is not plain and equal_quality(r, plain, reference, fd=False) else ""
        rows.append(
            f"| {r['name']} | {r['object_accuracy']:.3f} | {r['relation_accuracy']:.3f} | "
            f"{r['relation_flipped']:.3f} | {r['caption_accuracy']:.3f} | {r['frechet']:.3f} | {psnr} | "
            f"{r['ssim']:.4f} | {r['macs_vs_plain']:.3f} | {1 / r['macs_vs_plain']:.2f}x | {ok} | {ok2} |"
        )
    images = plain["images"]
    note = (
        f"{label}: {len(data['captions'])} captions x {data['per_caption']} seeds = {images} images per row, "
        f"{data['steps']} steps; plain {plain['macs_per_image'] / 1e9:.3f} GMACs/img; equal quality = objects and "
        f"relation >= plain - 0.01, FD <= {reference['frechet']:.3f} and PSNR >= {reference['psnr']:.2f} dB "
        f"({reference['name']}); FD real vs real {data['reference_frechet']:.3f}."
    )
    return "\n".join([head, rule, *rows, "", note]) + "\n"


MARKERS = {
    "plain": ("*", "black"),
    "tgate (fixed gate)": ("o", "tab:blue"),
    "cfg-cutoff": ("^", "tab:orange"),
    "cache-only": ("v", "tab:brown"),
    "tgate + kept guidance": ("D", "tab:green"),
    "DeepCache alone": ("s", "tab:purple"),
    "tgate + DeepCache": ("P", "tab:red"),
    "tgate + DeepCache + kept guidance": ("X", "tab:pink"),
    "tgate v2": ("h", "tab:olive"),
    "null-before": ("1", "grey"),
    "null-after": ("2", "grey"),
}


def plot(runs: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(runs), figsize=(5.6 * len(runs), 11.5), dpi=120, squeeze=False)
    for col, (label, data) in enumerate(runs):
        plain = data["results"][0]
        reference = reference_row(data)
        top, bottom, fd_ax = axes[0][col], axes[1][col], axes[2][col]
        finite_psnr = [r["psnr"] for r in data["results"] if not math.isinf(r["psnr"])]
        cap = max(finite_psnr) + 2 if finite_psnr else 40
        seen: set[str] = set()
        for r in data["results"]:
            fam = family(r["name"])
            marker, colour = MARKERS.get(fam, ("o", "grey"))
            x = r["macs_vs_plain"]
            good = r is not plain and equal_quality(r, plain, reference, fd=False)
            kwargs = dict(
                marker=marker, color=colour, s=46 if good else 26, label=None if fam in seen else fam
            )
            kwargs["edgecolors"] = "black" if good else "none"
            seen.add(fam)
            top.scatter([x], [min(r["object_accuracy"], r["relation_accuracy"])], **kwargs)
            bottom.scatter([x], [min(r["psnr"], cap)], **kwargs)
            fd_ax.scatter([x], [r["frechet"]], **kwargs)
            if good or fam in ("tgate (fixed gate)",):
                bottom.annotate(r["name"].replace("tgate ", ""), (x, min(r["psnr"], cap)), fontsize=5.5)
        fixed = sorted(
            (r for r in data["results"] if family(r["name"]) in ("plain", "tgate (fixed gate)")),
            key=lambda r: r["macs_vs_plain"],
        )
        xs = [r["macs_vs_plain"] for r in fixed]
        top.plot(
            xs,
            [min(r["object_accuracy"], r["relation_accuracy"]) for r in fixed],
            "-",
            color="tab:blue",
            lw=1,
        )
        bottom.plot(xs, [min(r["psnr"], cap) for r in fixed], "-", color="tab:blue", lw=1)
        fd_ax.plot(xs, [r["frechet"] for r in fixed], "-", color="tab:blue", lw=1)
        fd_ax.axhline(reference["frechet"], color="grey", ls="--", lw=1)
        fd_ax.set_ylabel("FD to real scenes (judge features)")
        fd_ax.set_xlabel("executed denoiser MACs / plain")
        for ax in (top, bottom, fd_ax):
            ax.axvline(0.5, color="tab:red", ls=":", lw=1)
            ax.grid(alpha=0.3)
            ax.set_xlim(0, 1.05)
        top.axhline(
            min(plain["object_accuracy"], plain["relation_accuracy"]) - TOLERANCE, color="grey", ls="--", lw=1
        )
        bottom.axhline(reference["psnr"], color="grey", ls="--", lw=1)
        top.set_title(f"{label} ({plain['images']} images/config)", fontsize=9)
        top.set_ylabel("min(object, relation) accuracy")
        bottom.set_ylabel(f"PSNR vs plain, dB (plain = inf, drawn at {cap:.0f})")
        bottom.set_xlabel("executed denoiser MACs / plain (red: the 2x goal)")
        if col == 0:
            top.legend(fontsize=6.5, loc="lower right")
    fig.suptitle(
        "Ringed: accuracy within 1 pt of plain and PSNR >= tgate at 0.4 n\n"
        "(dashed lines); FD bar: bottom row, dashed",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(paths: list[Path], labels: list[str] | None, plot_path: Path | None, table: Path | None) -> None:
    runs = []
    for i, path in enumerate(paths):
        label = labels[i] if labels and i < len(labels) else path.name
        runs.append((label, _load(path)))
    text = "\n".join(f"### {label}\n\n{markdown(data, label)}" for label, data in runs)
    print(text)
    if table is not None:
        table.write_text(text)
    if plot_path is not None:
        plot(runs, plot_path)


def fd_noise(specs: list[str], reference: str, steps: int, out: Path, resamples: int = 300) -> None:
    """Paired bootstrap of the FD: each configuration's FD and its difference to ``reference``.

    Regenerates the full-scale images (96 captions x 4 seeds; deterministic, so the same images as
    the ``run`` stage), resamples image indices (the same for every configuration: the pairing by
    seed is kept) and reports the bootstrap standard error of each FD and of each FD difference.
    """
    import numpy as np
    import torch

    from crossgate.embedded import load_pipeline
    from crossgate.tools.quality.judge import Judge
    from crossgate.tools.quality.metrics import frechet_distance
    from crossgate.tools.quality.runner import RunConfig, default_captions, reference_images, run_config

    torch.set_num_threads(1)
    pipe = load_pipeline()
    judge = Judge()
    captions = default_captions()
    per_caption = 4
    prompts = [c for c in captions for _ in range(per_caption)]
    seeds = list(range(len(prompts)))
    ref = np.stack([judge.features(im) for im in reference_images(captions, per_caption, 1_000_003)])
    features = {}
    for spec in dict.fromkeys([reference, *specs]):
        generation = run_config(pipe, RunConfig.parse(spec), prompts, seeds, steps, None, 48)
        features[spec] = np.stack([judge.features(im) for im in generation.images])
        print(f"[fd-noise] {spec}: FD {frechet_distance(features[spec], ref):.4f}", flush=True)
    rng = np.random.default_rng(0)
    boot = {spec: [] for spec in features}
    for _ in range(resamples):
        idx = rng.integers(0, len(prompts), len(prompts))
        ridx = rng.integers(0, len(ref), len(ref))
        for spec, feats in features.items():
            boot[spec].append(frechet_distance(feats[idx], ref[ridx]))
    lines = [
        "| config | FD | bootstrap SE | FD - reference | SE of the difference |",
        "|---|---|---|---|---|",
    ]
    base = np.array(boot[reference])
    for spec, values in boot.items():
        values = np.array(values)
        fd = frechet_distance(features[spec], ref)
        diff = fd - frechet_distance(features[reference], ref)
        lines.append(
            f"| {spec} | {fd:.4f} | {values.std():.4f} | {diff:+.4f} | {(values - base).std():.4f} |"
        )
    text = "\n".join(lines) + f"\n\n{resamples} paired bootstrap resamples; reference {reference}.\n"
    print(text)
    out.write_text(text)


def guidance_decay(gates: list[int], captions: int = 24, steps: int = 25) -> None:
    """How the true guidance difference ``cond - uncond`` evolves against the one frozen at ``m - 1``.

    Plain sampling of the first ``captions`` held-out captions (one seed each); per step after each
    gate: the least-squares coefficient of ``delta_t`` on ``delta_(m-1)``, their cosine, and the
    epsilon-space rescaling ``alpha(m-1) / alpha(t)`` of ``ws=eps``, averaged over images.
    """
    import torch

    from crossgate.embedded import load_pipeline
    from crossgate.tools.quality.runner import default_captions
    from crossgate.tools.quality.sampling import generate_images

    torch.set_num_threads(1)
    pipe = load_pipeline()
    deltas: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        uncond, cond = output[0].float().chunk(2)
        deltas.append((cond - uncond).flatten(1))

    handle = pipe.unet.register_forward_hook(keep)
    prompts = default_captions()[:captions]
    try:
        generate_images(pipe, prompts, list(range(len(prompts))), steps, None, len(prompts))
    finally:
        handle.remove()
    alphabar = pipe.scheduler.alphas_cumprod
    alpha = [float(alphabar[int(t)]) ** 0.5 for t in pipe.scheduler.timesteps]
    for gate in gates:
        ref = deltas[gate - 1]
        print(f"gate {gate}: step, LS coefficient on delta(m-1), cosine, alpha(m-1)/alpha(t)")
        for step in range(gate, steps):
            d = deltas[step]
            coef = float(((d * ref).sum(1) / (ref * ref).sum(1)).mean())
            cos = float(torch.nn.functional.cosine_similarity(d, ref, dim=1).mean())
            print(f"  {step:2d}  {coef:+.3f}  {cos:+.3f}  {alpha[gate - 1] / alpha[step]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one stage through crossgate eval")
    p_run.add_argument("stage", choices=sorted(STAGES))
    p_run.add_argument("--out-dir", type=Path, default=Path("crossgate-frontier"))
    p_rep = sub.add_parser("report", help="tables and the frontier plot from eval.json files")
    p_rep.add_argument("paths", type=Path, nargs="+")
    p_rep.add_argument("--labels", default=None, help="comma-separated panel labels")
    p_rep.add_argument("--plot", type=Path, default=None)
    p_rep.add_argument("--table", type=Path, default=None)
    p_fd = sub.add_parser("fd-noise", help="paired bootstrap standard errors of the FD at full scale")
    p_fd.add_argument("specs", nargs="+")
    p_fd.add_argument("--reference", default="tgate:10")
    p_fd.add_argument("--steps", type=int, default=25)
    p_fd.add_argument("--out", type=Path, default=Path("fd-noise.md"))
    p_gd = sub.add_parser("guidance-decay", help="how fast the true guidance difference decays")
    p_gd.add_argument("--gates", default="5,10")
    args = parser.parse_args(argv)
    if args.command == "guidance-decay":
        guidance_decay([int(g) for g in args.gates.split(",")])
        return 0
    if args.command == "fd-noise":
        fd_noise(args.specs, args.reference, args.steps, args.out)
        return 0
    if args.command == "run":
        return run(args.stage, args.out_dir)
    report(args.paths, args.labels.split(",") if args.labels else None, args.plot, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
