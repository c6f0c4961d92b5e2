"""The README's support matrix is exactly what scripts/support_matrix.py renders (so it cannot drift),
and it counts every pipeline class diffusers exports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import diffusers
import pytest
from diffusers import DiffusionPipeline

from crossgate.adapters import support
from families import CASES

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "scripts" / "support_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    diffusers.__version__ != support.CLASSIFIED_FOR,
    reason=f"the README's matrix is rendered for diffusers {support.CLASSIFIED_FOR}",
)
def test_readme_matrix_is_current():
    readme = (ROOT / "README.md").read_text()
    script = _script()
    assert script.START in readme and script.END in readme
    assert script.readme_with_matrix(readme, script.render_support_matrix()) == readme, (
        "README support matrix is stale: run `python scripts/support_matrix.py --write`"
    )


def test_every_family_and_class_is_in_the_matrix():
    """Every exported ``DiffusionPipeline`` subclass is listed and counted, whatever its name
    (StableDiffusionPipelineSafe, LEditsPPPipelineStableDiffusion, SanaWMLTX2Refiner, ... used to be left out)."""
    script = _script()
    matrix = script.render_support_matrix()
    assert all(f"| {name} |" in matrix for name in CASES)
    exported = [
        n
        for n in dir(diffusers)
        if n.endswith("Pipeline")
        or (isinstance(getattr(diffusers, n), type) and issubclass(getattr(diffusers, n), DiffusionPipeline))
    ]
    missing = [name for name in exported if f"`{name}`" not in matrix]
    assert not missing, f"exported by diffusers but not in the matrix: {missing}"
    counts = script.classification_counts()
    assert sum(counts.values()) == len(exported)
    assert f"**{len(exported)} pipeline classes exported by diffusers" in matrix
    assert f"{counts['supported']} supported, {counts['refused']} refused" in matrix
