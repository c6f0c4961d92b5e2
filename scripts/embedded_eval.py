"""Score the embedded model on held-out captions with the progress detector (not the official judge).

    python scripts/embedded_eval.py --seeds 4 --steps 25 --guidance 7.5
Prints object accuracy, strict relation accuracy and its flipped-relation control, in percent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossgate.embedded import load_pipeline
from crossgate.embedded.scenes import held_out_compositions, training_compositions
from embedded_detect import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline folder (default: the shipped model)")
    p.add_argument("--seeds", type=int, default=4, help="images per caption, seeds 0..N-1")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--split", choices=["held-out", "train"], default="held-out")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    comps = held_out_compositions() if args.split == "held-out" else training_compositions()
    t0 = time.time()
    m = evaluate(pipe, comps, list(range(args.seeds)), steps=args.steps, guidance_scale=args.guidance)
    print(
        f"| split | images | steps | CFG | object acc % | relation acc % | flipped control % |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {args.split} | {int(m['n'])} | {args.steps} | {args.guidance} | {m['object_acc']:.1f} | "
        f"{m['relation_acc']:.1f} | {m['flipped_acc']:.1f} |"
    )
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
