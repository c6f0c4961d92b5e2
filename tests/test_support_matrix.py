"""The README's support matrix is exactly what tests/families.py renders (so it cannot drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from families import CASES, render_support_matrix

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "scripts" / "support_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_matrix_is_current():
    readme = (ROOT / "README.md").read_text()
    script = _script()
    assert script.START in readme and script.END in readme
    assert script.readme_with_matrix(readme, render_support_matrix()) == readme, (
        "README support matrix is stale: run `python scripts/support_matrix.py --write`"
    )


def test_every_family_is_a_row():
    matrix = render_support_matrix()
    assert all(f"| {name} |" in matrix for name in CASES)
