"""``crossgate macs``: per-image denoiser MACs, plain vs TGATE, counted on meta-device architectures.

With ``--controlnet`` (UNet models) each image also pays a ControlNet call per denoiser pass.
Joint-attention models (SD3, FLUX.1, Qwen-Image, HunyuanVideo) get tables of their own: the CFG drop
and the text freeze (crossgate.tools.accounting.joint).
"""

from __future__ import annotations

import argparse
from typing import Any

from crossgate.cli.common import (
    CommandError,
    DefaultsHelpFormatter,
    gate_step_arg,
    positive_int,
    resolution_arg,
)

# The bundled model keys, written out so that building the parser imports no torch
# (crossgate.tools.accounting does); tests/test_cli_main.py keeps them equal to its MODELS.
MODEL_KEYS = (
    "sd15",
    "sd21",
    "sdxl",
    "pixart-alpha",
    "pixart-sigma",
    "wan13b-480p",
    "wan13b-720p",
    "wan14b-480p",
    "wan14b-720p",
    "sd3-medium",
    "sd3.5-large",
    "flux1-dev",
    "qwen-image",
    "hunyuan-video",
)


def gate_arg(text: str) -> int | float:
    """``--gate-step``: steps (int >= 1) or a fraction of ``--steps`` in (0, 1] (rounded half up)."""
    if text == "auto":
        raise argparse.ArgumentTypeError("`auto` decides per call; give steps or a fraction to count")
    return gate_step_arg(text)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "macs",
        formatter_class=DefaultsHelpFormatter,
        help="count per-image denoiser MACs (plain vs TGATE) on bundled architectures, no weights",
        description=(
            "Builds each architecture on the meta device and counts one denoiser call in two "
            "conventions: linear+conv only (the TGATE paper's calflops convention) and all ops "
            "including attention matmuls. Bundled models: " + ", ".join(MODEL_KEYS) + ". Wan models run "
            "CFG as two calls per step (cond, uncond); after the gate crossgate runs the cond call with "
            "cross-attention replayed and skips every block of the uncond call. Joint-attention models "
            "(SD3, FLUX.1, Qwen-Image, HunyuanVideo) are listed apart: after the gate the cond branch runs "
            "(the CFG drop) and every joint block's text stream is frozen (the text freeze); FLUX.1-dev and "
            "HunyuanVideo run no CFG by default and are listed without and with true CFG."
        ),
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="bundled model keys (default: all)")
    p.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a diffusers pipeline folder or a denoiser folder with config.json (repeatable)",
    )
    p.add_argument("--steps", type=positive_int, default=25, help="denoising steps n (default 25)")
    p.add_argument(
        "--gate-step",
        type=gate_arg,
        nargs="+",
        default=[5, 10],
        metavar="M",
        help="TGATE gate steps m to list, as steps or fractions of --steps (default: 5 10)",
    )
    p.add_argument(
        "--sa-interval",
        type=positive_int,
        nargs="*",
        default=[],
        metavar="K",
        help="also list TGATE v2 (self-attention cached with interval K before the gate) for each m "
        "(batched-CFG models only)",
    )
    p.add_argument("--warm-up", type=int, default=2, help="TGATE v2 warm-up steps (default 2)")
    p.add_argument("--no-cfg", action="store_true", help="count without classifier-free guidance")
    p.add_argument(
        "--resolution",
        type=resolution_arg,
        default=None,
        help="image side in pixels, or HEIGHTxWIDTH (default per model; Wan keys name theirs)",
    )
    p.add_argument("--frames", type=positive_int, default=None, help="video models: pixel frames (1 + 4k)")
    p.add_argument("--text-len", type=positive_int, default=None, help="prompt tokens (default per model)")
    p.add_argument("--per-call", action="store_true", help="also print the per-call (one sample) table")
    p.add_argument(
        "--controlnet",
        action="store_true",
        help="UNet models: add a ControlNet (ControlNetModel.from_unet) to every pass; lists TGATE with the "
        "ControlNet ungated (2B after the gate) and gated (B, cross-attention replayed)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossgate.loading import bundled_config
    from crossgate.tools.accounting import (
        MODELS,
        AccountingError,
        call_macs,
        controlnet_macs,
        is_joint_model,
        joint_macs,
    )

    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise CommandError(
            f"unknown model(s) {unknown}; bundled: {', '.join(MODELS)} (use --model-dir for a folder)."
        )
    defaults = list(MODELS)
    if args.controlnet:
        if args.sa_interval:
            raise CommandError(
                "--sa-interval with --controlnet is not modelled (the ControlNet's self-attention cache)."
            )
        unet = "UNet2DConditionModel"
        defaults = [k for k in MODELS if bundled_config(MODELS[k].config).get("_class_name") == unet]
    targets = list(args.models) or ([] if args.model_dir else defaults)
    targets += args.model_dir
    if args.frames is not None:
        images = [t for t in targets if t in MODELS and MODELS[t].frames is None]
        if images:
            raise CommandError(f"--frames applies to video models only, not {', '.join(images)}.")
    try:
        joint = [t for t in targets if not args.controlnet and is_joint_model(t)]
        targets = [t for t in targets if t not in joint]
        calls = [call_macs(t, args.resolution, args.text_len, args.frames) for t in targets]
        controls = (
            [controlnet_macs(t, args.resolution, args.text_len) for t in targets] if args.controlnet else []
        )
        joints = [joint_macs(t, args.resolution, args.text_len, args.frames) for t in joint]
    except AccountingError as error:
        raise CommandError(str(error)) from None
    blocks = []
    if calls:
        blocks.append(render_table(calls, args, controls))
        if args.per_call:
            blocks.append(render_per_call(calls + controls))
    if joints:
        blocks.append(render_joint(joints, args))
    print("\n\n".join(blocks))
    return 0


def gate_steps(gate: int | float, steps: int) -> int:
    """A ``--gate-step`` value as steps of a ``steps``-step call (fractions rounded half up)."""
    from crossgate.config import fraction_to_steps

    return gate if isinstance(gate, int) else fraction_to_steps(gate, steps)


def schedules_for(call: Any, args: argparse.Namespace) -> list[Any]:
    """The baseline, TGATE at each gate, and v2 rows (batched models) for one counted model."""
    from crossgate.tools.accounting import Schedule

    cfg, layout = not args.no_cfg, call.cfg_layout
    schedules = [Schedule.plain(args.steps, cfg, cfg_layout=layout)]
    for gate in args.gate_step:
        m = gate_steps(gate, args.steps)
        label = f"TGATE m={m}" if isinstance(gate, int) else f"TGATE m={m} ({gate:g} of {args.steps})"
        schedules.append(Schedule.tgate(args.steps, m, cfg, label=label, cfg_layout=layout))
    if layout == "batched":
        schedules += [
            Schedule.tgate_v2(args.steps, gate_steps(m, args.steps), k, args.warm_up, cfg)
            for m in args.gate_step
            for k in args.sa_interval
        ]
    return schedules


def rows_for(call: Any, args: argparse.Namespace, controlnet: Any = None) -> list[tuple[str, list]]:
    """``(label, [(CallMacs, Schedule), ...])`` per row: what each counted model runs in that setting.

    With a ``controlnet``: the baseline runs it at every pass; each TGATE row comes twice, the
    ControlNet ungated (the plain schedule: 2B, cross-attention computed, after the gate too) and
    gated (the UNet's own schedule: B with cross-attention replayed after the gate).
    """
    schedules = schedules_for(call, args)
    if controlnet is None:
        return [(s.label, [(call, s)]) for s in schedules]
    plain, *gated = schedules
    after = " (2B after the gate)" if not args.no_cfg else ""
    rows = [(plain.label, [(call, plain), (controlnet, plain)])]
    for s in gated:
        rows.append((f"{s.label}, ControlNet ungated{after}", [(call, s), (controlnet, plain)]))
        rows.append((s.label, [(call, s), (controlnet, s)]))
    return rows


def render_table(calls: list[Any], args: argparse.Namespace, controlnets: list[Any] | None = None) -> str:
    """Per-image MACs table: one row per model and setting, both conventions."""
    from crossgate.tools.accounting import image_macs, tera

    cfg = not args.no_cfg
    what = "UNet + ControlNet" if controlnets else "denoiser"
    lines = [
        f"Per-image {what} MACs, n={args.steps} steps, CFG {'on' if cfg else 'off'}.",
        "",
        "| model | setting | MACs (linear+conv) | vs baseline | MACs (all ops) | vs baseline |",
        "|---|---|---|---|---|---|",
    ]

    def total(parts: list, convention: str) -> int:
        return sum(image_macs(c, s, convention) for c, s in parts)

    sequential = False
    for index, call in enumerate(calls):
        model = call.model.replace(" @", " + ControlNet @", 1) if controlnets else call.model
        rows = rows_for(call, args, controlnets[index] if controlnets else None)
        sequential |= call.cfg_layout == "sequential"
        base = {c: total(rows[0][1], c) for c in ("linear_conv", "all")}
        for label, parts in rows:
            lc, al = total(parts, "linear_conv"), total(parts, "all")
            lines.append(
                f"| {model} | {label} | {tera(lc)} | {lc / base['linear_conv']:.3f} "
                f"| {tera(al)} | {al / base['all']:.3f} |"
            )
    if sequential:
        lines += [
            "",
            "Sequential CFG (Wan): baseline = 2 passes per step at batch 1 (cond, uncond); TGATE = 2 passes "
            "before the gate, then 1 pass with cross-attention replayed plus the uncond call with every "
            "block skipped, which still runs the embeddings and the output head (`outside blocks` in "
            "--per-call)."
            + (" TGATE v2 rows are listed for batched-CFG models only." if args.sa_interval else ""),
        ]
    return "\n".join(lines)


def render_per_call(calls: list[Any]) -> str:
    from crossgate.tools.accounting import tera

    lines = [
        "Per denoiser call, one sample (linear+conv unless noted).",
        "",
        "| model | full call | cross-attention skipped | cross-attn share | self-attention | full call (all ops) "
        "| cross-attn share (all ops) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in calls:
        lines.append(
            f"| {c.model} | {tera(c.full(), 5)} | {tera(c.skipped(), 5)} | {c.cross() / c.full():.1%} "
            f"| {tera(c.self_attn(), 5)} | {tera(c.full('all'), 5)} | {c.cross('all') / c.full('all'):.1%} |"
        )
    sequential = [c for c in calls if c.cfg_layout == "sequential"]
    if sequential:
        lines += [
            "",
            "Sequential CFG: what crossgate's skipped uncond call still computes (outside the blocks).",
            "",
            "| model | outside blocks | share of a full call | outside blocks (all ops) | share (all ops) |",
            "|---|---|---|---|---|",
        ]
        for c in sequential:
            lines.append(
                f"| {c.model} | {tera(c.outside_blocks(), 5)} | {c.outside_blocks() / c.full():.2%} "
                f"| {tera(c.outside_blocks('all'), 5)} | {c.outside_blocks('all') / c.full('all'):.2%} |"
            )
    return "\n".join(lines)


def joint_settings(counted: Any, args: argparse.Namespace) -> list[tuple[bool, str]]:
    """``(cfg, label)`` for each CFG setting a joint model is listed in: its pipeline's default, and
    true CFG for a model without it (FLUX.1-dev, HunyuanVideo); ``--no-cfg``: none."""
    sequential = counted.cfg_layout == "sequential"
    on = "true CFG, 2 calls/step" if sequential else "CFG, batched"
    if args.no_cfg:
        return [(False, "none (--no-cfg)")]
    if counted.cfg:
        return [(True, on)]
    return [(False, "none (default)"), (True, on)]


def render_joint(joints: list[Any], args: argparse.Namespace) -> str:
    """Joint-attention models: per-image MACs by variant, where the saving comes from, the text side."""
    from crossgate.tools.accounting import tera

    conventions = (("linear_conv", "linear+conv"), ("all", "all ops"))
    gates = [(gate_steps(g, args.steps), g) for g in args.gate_step]

    def gate_label(m: int, gate: int | float) -> str:
        return f"TGATE m={m}" if isinstance(gate, int) else f"TGATE m={m} ({gate:g} of {args.steps})"

    lines = [
        f"Joint-attention models: per-image transformer MACs, n={args.steps} steps. After the gate the "
        "cond branch runs (CFG drop) and each joint block's text stream is frozen (text freeze).",
        "",
        "| model | CFG | setting | MACs (linear+conv) | vs baseline | MACs (all ops) | vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in joints:
        for cfg, cfg_label in joint_settings(j, args):
            base = {c: j.image_macs(args.steps, None, c, cfg) for c, _ in conventions}
            rows = [("baseline", {})]
            for m, gate in gates:
                rows.append((gate_label(m, gate), {"gate_step": m}))
                if cfg:
                    rows.append(
                        (
                            f"{gate_label(m, gate)}, CFG drop only (text live)",
                            {"gate_step": m, "text_stream": "live"},
                        )
                    )
                    rows.append(
                        (
                            f"{gate_label(m, gate)}, text freeze only (keep_cfg)",
                            {"gate_step": m, "keep_cfg": True},
                        )
                    )
            for label, how in rows:
                gate_step = how.get("gate_step")
                rest = {k: v for k, v in how.items() if k != "gate_step"}
                lc, al = (j.image_macs(args.steps, gate_step, c, cfg, **rest) for c, _ in conventions)
                lines.append(
                    f"| {j.model} | {cfg_label} | {label} | {tera(lc)} | {lc / base['linear_conv']:.3f} "
                    f"| {tera(al)} | {al / base['all']:.3f} |"
                )
    lines += [
        "",
        "Where TGATE's saving comes from: TGATE = baseline - CFG drop - text freeze + capture (the text "
        "keys/values recomputed once more at step m-1).",
        "",
        "| model | CFG | gate | convention | baseline | TGATE | CFG drop saves | text freeze saves | capture costs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j in joints:
        for cfg, cfg_label in joint_settings(j, args):
            for m, gate in gates:
                for convention, name in conventions:
                    s = j.split(args.steps, m, convention, cfg)

                    def part(macs: int, digits: int = 1, base: int = s.baseline) -> str:
                        return f"{tera(macs)} ({macs / base:.{digits}%})" if macs else "0"

                    lines.append(
                        f"| {j.model} | {cfg_label} | {gate_label(m, gate)} | {name} | {tera(s.baseline)} "
                        f"| {tera(s.tgate)} | {part(s.cfg_drop)} | {part(s.text_freeze)} | {part(s.capture, 2)} |"
                    )
    lines += [
        "",
        "One pass, one sample: the text side (what the text freeze leaves out of each pass after the "
        "gate) and the frozen text stream's memory (keys, values and text output of every joint block, "
        "bf16, per CFG branch kept at step m-1).",
        "",
        "| model | joint blocks | image tokens | text tokens | pass (linear+conv) | text side | pass (all ops) "
        "| text side | frozen text stream |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j in joints:
        lc, al = j.plain[1]["linear_conv"], j.plain[1]["all"]
        lines.append(
            f"| {j.model} | {j.blocks} | {j.image_tokens} | {j.text_tokens} | {tera(lc, 5)} "
            f"| {tera(j.text_side('linear_conv'), 5)} ({j.text_share('linear_conv'):.1%}) | {tera(al, 5)} "
            f"| {tera(j.text_side('all'), 5)} ({j.text_share('all'):.1%}) | {j.kept_bytes() / 2**20:.0f} MiB |"
        )
    if args.sa_interval:
        lines += ["", "TGATE v2 rows (--sa-interval) are listed for cross-attention models only."]
    return "\n".join(lines)
