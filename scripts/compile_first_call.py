"""The first compiled call of the embedded model, plain or with crossgate, in a fresh process.

Each run starts with an empty inductor cache (a new ``TORCHINDUCTOR_CACHE_DIR``), so the time is the
whole compilation a user pays on a new machine: plain compiles one graph (2B), crossgate two (2B
before the gate, B after it). Run the two one after the other, alternating, and compare::

    for v in plain crossgate plain crossgate; do OMP_NUM_THREADS=1 python scripts/compile_first_call.py $v; done

``--resolution 128`` runs the same model on larger images.

Prints one line per run: the first call (compile included), the median of the later calls, the
graphs dynamo built and the C++ kernels inductor built. ``--guidance-scale 1`` runs without CFG, so
crossgate's two graphs have the same batch (B) and share most kernels; so does ``--split``
(crossgate with ``compile_split_cfg=True``: the steps before the gate run as two B-row passes).
The figures and what they mean are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["plain", "crossgate"])
    parser.add_argument("--gate-step", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    parser.add_argument("--later-calls", type=int, default=1, help="calls timed after the first")
    parser.add_argument("--split", action="store_true", help="crossgate with compile_split_cfg=True")
    parser.add_argument(
        "--resolution", type=int, default=None, help="height and width (default: the model's)"
    )
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="inductor-cold-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache

    import torch
    from torch._dynamo.utils import counters

    import crossgate
    from crossgate.embedded import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if args.variant == "crossgate":
        crossgate.apply(pipe, gate_step=args.gate_step, compile_split_cfg=args.split)
    pipe.unet = torch.compile(pipe.unet, backend=args.backend, fullgraph=True)
    kwargs = {"prompt": "a red circle left of a blue square", "num_inference_steps": args.steps}
    if args.resolution is not None:
        kwargs["height"] = kwargs["width"] = args.resolution
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    seconds = []
    for _ in range(1 + args.later_calls):
        start = time.perf_counter()
        pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0))
        seconds.append(time.perf_counter() - start)
    later = seconds[1:]
    kernels = sum(1 for _ in Path(cache).rglob("*.so"))
    label = (
        args.variant + (" split" if args.split else "") + (f" {args.resolution}px" if args.resolution else "")
    )
    print(
        f"{label}: first call {seconds[0]:.1f} s, later calls median {statistics.median(later):.3f} s "
        f"({min(later):.3f}-{max(later):.3f}, {len(later)}), graphs {counters['stats']['unique_graphs']}, "
        f"C++ kernels built {kernels}"
    )


if __name__ == "__main__":
    main()
