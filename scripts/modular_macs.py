"""Executed MACs of the Modular Diffusers pipelines with crossgate, against the same pipeline plain.

Tiny random-weight modular pipelines (tests/modular_cases.py, CPU), 6 steps, the case's gate; the
denoiser's linear/conv MACs as they ran (``crossgate.tools.accounting.meter.CallMeter``, which counts
``pipe.unet`` / ``pipe.transformer``: Wan 2.2's two-expert case is left out):

    python scripts/modular_macs.py

Prints a markdown table (docs/modular-diffusers.md quotes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from diffusers.utils import logging

    import crossgate
    from crossgate.tools.accounting.meter import CallMeter
    from modular_cases import MODULAR_CASES

    logging.set_verbosity_error()
    print("| modular pipeline | steps | gate | executed MACs, crossgate / plain |")
    print("|---|---|---|---|")
    for name, spec in MODULAR_CASES.items():
        case = spec.build()
        pipe = case.modular
        if getattr(pipe, "transformer_2", None) is not None:
            continue  # CallMeter counts `transformer` only; Wan 2.2's second expert runs after the gate
        pipe.set_progress_bar_config(disable=True)
        executed = []
        for gate in (case.steps, case.gate):  # gate past the end: the plain pipeline, bit for bit
            with crossgate.enabled(pipe, gate_step=gate), CallMeter(pipe) as meter:
                case.run_modular()
            executed.append(meter.executed)
        print(f"| {name} | {case.steps} | {case.gate} | {executed[1] / executed[0]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
