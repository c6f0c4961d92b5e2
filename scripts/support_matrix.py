"""Render the README's support matrix (the classification in crossgate/adapters/support.py and the
family cases in tests/families.py, with counts per bucket); `--write` updates README.md in place.

The classes counted are every pipeline class the installed diffusers exports
(`crossgate.adapters.support.exported_pipelines`: each `DiffusionPipeline` subclass whatever its name,
modular pipelines, and placeholders for missing backends), each with crossgate's verdict."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def readme_with_matrix(readme: str, matrix: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _m: f"{START}\n{matrix}\n{END}", readme)


def verdicts() -> dict[str, Any]:
    """crossgate's verdict on every pipeline class diffusers exports, by exported name."""
    from crossgate.adapters import support

    return {name: support.classify(cls) for name, cls in support.exported_pipelines().items()}


def classification_counts(found: dict[str, Any] | None = None) -> dict[str, int]:
    """How many exported pipeline classes are supported, refused, not applicable."""
    from crossgate.adapters import support

    counts = dict.fromkeys(
        (support.SUPPORTED_STATUS, support.REFUSED_STATUS, support.NOT_APPLICABLE_STATUS), 0
    )
    for verdict in (verdicts() if found is None else found).values():
        counts[verdict.status] += 1
    return counts


def _grouped(found: dict[str, Any], status: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, verdict in found.items():
        if verdict.status == status and not verdict.sequential:
            groups.setdefault(verdict.reason, []).append(name)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def render_support_matrix() -> str:
    """The README's support matrix: the classification (adapters/support.py) and tests/families.py's cases."""
    import diffusers

    from crossgate.adapters import support

    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from families import CASES, OTHER_ROWS
    from joint_cases import JOINT_CASES
    from modular_cases import MODULAR_CASES

    found = verdicts()
    counts = classification_counts(found)
    sequential = {n: v for n, v in found.items() if v.sequential}
    lines = [
        f"**{len(found)} pipeline classes exported by diffusers {diffusers.__version__}: "
        f"{counts['supported']} supported, {counts['refused']} refused at `apply()` with the reason, "
        f"{counts['not applicable']} not applicable.** Every `DiffusionPipeline` subclass diffusers exports "
        "is counted, whatever its name. The table is `crossgate/adapters/support.py`; "
        "`tests/test_classification.py` fails when a diffusers release exports a class it does not list.",
        "",
        f"Supported, CFG batched in one pass, `[uncond; cond]` unless the CFG column says otherwise "
        f"({len(support.SUPPORTED)} classes, {len(CASES)} cases):",
        "",
        "| family | pipeline class | CFG | after the gate the denoiser gets | tested in |",
        "|---|---|---|---|---|",
    ]
    for name, spec in CASES.items():
        lines.append(
            f"| {name} | `{spec.pipeline}` | {spec.cfg} | {spec.after_gate} | `test_family[{name}]` |"
        )
    lines += [
        "",
        f"Joint attention (`crossgate/joint.py`: after the gate each joint block's text stream is frozen "
        f"and the cond branch runs alone; {len(JOINT_CASES)} cases):",
        "",
        "| family | pipeline class | CFG | tested in |",
        "|---|---|---|---|",
    ]
    for name, case in JOINT_CASES.items():
        lines.append(f"| {name} | `{case.pipeline}` | {case.cfg_text} | `test_joint.py[{name}]` |")
    lines += [
        "",
        f"Modular Diffusers (`adapters/modular.py`: the loop block's steps and the guider's cond / uncond "
        f"calls; after the gate the uncond call is skipped; {len(MODULAR_CASES)} cases):",
        "",
        "| family | pipeline class | guider | tested in |",
        "|---|---|---|---|",
    ]
    for name, spec in MODULAR_CASES.items():
        lines.append(f"| {name} | `{spec.pipeline}` | {spec.guider} | `test_modular.py[{name}]` |")
    supported_seq = sum(v.status == support.SUPPORTED_STATUS for v in sequential.values())
    lines += [
        "",
        f"Sequential CFG, one denoiser call per branch (`adapters/sequential.py`; {len(sequential)} classes: "
        f"{supported_seq} supported, {len(sequential) - supported_seq} refused):",
        "",
        "| pipeline class | status | tested in / reason |",
        "|---|---|---|",
    ]
    for name, verdict in sequential.items():
        detail = f"`{verdict.reason}`" if verdict.status == support.SUPPORTED_STATUS else verdict.reason
        lines.append(f"| `{name}` | {verdict.status} | {detail} |")
    lines += ["", "| also | status | tested in |", "|---|---|---|"]
    for what, status, where in OTHER_ROWS:
        lines.append(f"| {what} | {status} | {where if where == '-' else f'`{where}`'} |")
    for status, title in (
        (
            support.REFUSED_STATUS,
            "Refused at `apply()`, with the reason (`test_unsupported_class_is_refused_at_apply_with_its_reason`)",
        ),
        (
            support.NOT_APPLICABLE_STATUS,
            "Not applicable: nothing to gate (refused at `apply()` with the reason)",
        ),
    ):
        groups = _grouped(found, status)
        total = sum(len(names) for names in groups.values())
        lines += [
            "",
            f"<details><summary>{title}: {total} classes</summary>",
            "",
            "| reason | classes |",
            "|---|---|",
        ]
        for reason, names in groups.items():
            lines.append(f"| {reason} | {', '.join(f'`{n}`' for n in names)} |")
        lines += ["", "</details>"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md")
    args = parser.parse_args()
    matrix = render_support_matrix()
    if args.write:
        path = ROOT / "README.md"
        path.write_text(readme_with_matrix(path.read_text(), matrix))
    else:
        print(matrix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
