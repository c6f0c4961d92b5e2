"""CPU speed of the TGATE node in a real ComfyUI: plain vs TGATE, UNet batch per step, medians.

Runs in the ComfyUI venv (`make comfy-bench`):

    .venv-comfy/bin/python scripts/comfy_bench.py [--steps 25] [--gate 0.4] [--repeats 3]
        [--sizes 8 32] [--samplers euler dpmpp_2m heun] [--threads 1] [--json out.json]

The embedded model (crossgate-shapes-32) sampled through nodes.common_ksampler, the KSampler node's
code path, at latent sizes 8 (its 32 px training size) and larger (the UNet is convolutional, so
larger latents show the compute-bound case). Runs alternate plain / TGATE; each row gives the median
of --repeats runs and the spread (min..max). "UNet rows" is the latent rows the UNet processed over
the run (sum of its batch over evaluations): the work TGATE removes, independent of timing noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# The ComfyUI harness is test code and lives with the tests (tests/comfyui/harness.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "comfyui"))

from harness import Comfy, Probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--gate", type=float, default=0.4, help="gate as a fraction of the steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32], help="latent sizes (px / 4)")
    parser.add_argument("--samplers", nargs="+", default=["euler", "dpmpp_2m", "heun"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians with a spread)")

    env = Comfy(threads=args.threads)
    model = env.build_model()
    pos = env.conditioning("a red circle left of a blue square")
    neg = env.conditioning("")
    patched = env.tgate(model, gate_mode="fraction", gate_fraction=args.gate)
    rows = []
    try:
        for size in args.sizes:
            for sampler in args.samplers:
                kw = {"steps": args.steps, "cfg": args.cfg, "sampler": sampler, "size": size}
                batches, probe_report = {}, None
                for label in ("plain", "tgate"):  # one probed run each: the UNet batch of every call
                    probe = Probe(env, model)
                    probed = probe.model
                    if label == "tgate":
                        probed = env.tgate(probe.model, gate_mode="fraction", gate_fraction=args.gate)
                    try:
                        env.sample(probed, pos, neg, **kw)
                    finally:
                        probe.remove()
                    batches[label] = [c["batch"] for c in probe.calls]
                    if label == "tgate":
                        probe_report = env.controller(probed).last_report
                steps_of = [s for s, _ in probe_report["evaluations"]]
                times = {"plain": [], "tgate": []}
                env.sample(model, pos, neg, **kw)  # warm-up
                for _ in range(args.repeats):
                    for label, m in (("plain", model), ("tgate", patched)):
                        t0 = time.perf_counter()
                        env.sample(m, pos, neg, **kw)
                        times[label].append(time.perf_counter() - t0)
                report = probe_report
                row = {
                    "latent": f"{size}x{size}",
                    "sampler": sampler,
                    "steps": args.steps,
                    "gate": report["gate"],
                    "unet_calls": len(batches["tgate"]),
                    "batch_plain": sorted(set(batches["plain"])),
                    "batch_tgate_before": sorted(
                        {b for b, s in zip(batches["tgate"], steps_of) if s < report["gate"]}
                    ),
                    "batch_tgate_after": sorted(
                        {b for b, s in zip(batches["tgate"], steps_of) if s >= report["gate"]}
                    ),
                    "rows_plain": sum(batches["plain"]),
                    "rows_tgate": sum(batches["tgate"]),
                    "plain_s": times["plain"],
                    "tgate_s": times["tgate"],
                }
                row["speedup"] = statistics.median(times["plain"]) / statistics.median(times["tgate"])
                rows.append(row)
                print(_line(row), flush=True)
    finally:
        env.close()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"\nComfyUI {env.version}, torch threads {args.threads}, gate {args.gate} of {args.steps} steps, "
        f"cfg {args.cfg}, {args.repeats} runs each, load average {load[0]:.1f} at the end"
        if load
        else ""
    )
    print(_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def _line(row: dict) -> str:
    return (
        f"{row['latent']:>6} {row['sampler']:>9}: plain {_spread(row['plain_s'])} s, "
        f"TGATE {_spread(row['tgate_s'])} s, {row['speedup']:.2f}x"
    )


def _table(rows: list[dict]) -> str:
    head = (
        "| latent | sampler | gate / steps | UNet batch plain | UNet batch TGATE (before / after gate) "
        "| UNet rows plain / TGATE | plain s, median (min..max) | TGATE s, median (min..max) | speed-up |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['latent']} | {r['sampler']} | {r['gate']} / {r['steps']} | {r['batch_plain']} "
            f"| {r['batch_tgate_before']} / {r['batch_tgate_after']} | {r['rows_plain']} / {r['rows_tgate']} "
            f"({r['rows_tgate'] / r['rows_plain']:.2f}) | {_spread(r['plain_s'])} | {_spread(r['tgate_s'])} "
            f"| {r['speedup']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
