"""The first compiled call of the embedded model, plain or with crossgate, in a fresh process.

Each run starts with an empty inductor cache (a new ``TORCHINDUCTOR_CACHE_DIR``), so the time is the
whole compilation a user pays on a new machine: plain compiles one graph (2B), crossgate two (2B
before the gate, B after it). Run the two one after the other, alternating, and compare::

    for v in plain crossgate plain crossgate; do OMP_NUM_THREADS=1 python scripts/compile_first_call.py $v; done

Prints one line per run: the first call (compile included) and the second call.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["plain", "crossgate"])
    parser.add_argument("--gate-step", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")

    import torch

    import crossgate
    from crossgate.embedded import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if args.variant == "crossgate":
        crossgate.apply(pipe, gate_step=args.gate_step)
    pipe.unet = torch.compile(pipe.unet, backend=args.backend, fullgraph=True)
    kwargs = {"prompt": "a red circle left of a blue square", "num_inference_steps": args.steps}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0))
        seconds.append(time.perf_counter() - start)
    print(f"{args.variant}: first call {seconds[0]:.1f} s, second {seconds[1]:.2f} s")


if __name__ == "__main__":
    main()
