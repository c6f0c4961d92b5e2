"""Executed linear+conv MACs of tiny Wan with diffusers' caches, crossgate, and both (a table).

    python scripts/wan_cache_macs.py [--steps 8] [--gate 0.4]

Random weights (tests/sequential_cases.py builds the model); counts what really ran, so skipped
blocks, skipped uncond calls and replayed cross-attention are not counted. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crossgate
from crossgate.tools.accounting import LinearConvCounter
from sequential_cases import wan_t2v


def caches(pipe, steps: int) -> dict:
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    return {
        "none": None,
        "FirstBlockCache(0.2)": lambda: FirstBlockCacheConfig(threshold=0.2),
        "MagCache": lambda: MagCacheConfig(
            num_inference_steps=steps, mag_ratios=[1.0] * steps, threshold=0.5
        ),
        "TaylorSeer": lambda: TaylorSeerCacheConfig(),
        "PAB(spatial 2)": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gate", type=float, default=0.4)
    args = parser.parse_args()
    case = wan_t2v()
    pipe = case.pipe

    def measure() -> tuple[int, torch.Tensor]:
        with LinearConvCounter(pipe.transformer) as counter:
            out = pipe(
                **case.kwargs,
                num_inference_steps=args.steps,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            ).frames
        return counter.total, out

    rows = []
    plain_macs, plain = measure()
    for name, make in caches(pipe, args.steps).items():
        for tgate in (False, True):
            if make is not None:
                pipe.transformer.enable_cache(make())
            if tgate:
                crossgate.apply(pipe, gate_step=args.gate)
            macs, out = measure()
            crossgate.remove(pipe)
            if make is not None:
                pipe.transformer.disable_cache()
            diff = float((out - plain).abs().max())
            rows.append((name, "yes" if tgate else "no", macs, plain_macs / macs, diff))
    print(f"tiny Wan T2V, {args.steps} steps, gate {args.gate}, CFG 5.0; executed linear+conv MACs\n")
    print("| diffusers cache | crossgate | executed MACs | fewer than plain | max abs diff to plain |")
    print("|---|---|---|---|---|")
    for name, tgate, macs, ratio, diff in rows:
        print(f"| {name} | {tgate} | {macs / 1e6:.2f} M | {ratio:.2f}x | {diff:.3g} |")


if __name__ == "__main__":
    main()
