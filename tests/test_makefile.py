"""The Makefile's install targets, read with `make -n` (nothing is installed): `make demo` installs
the package alone, `make test` the dev extra, each with its own stamp."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(target: str, venv: Path) -> str:
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_installs_the_package_alone_and_test_still_installs_the_dev_extra(tmp_path):
    venv = tmp_path / "venv"
    demo = _dry_run("demo", venv)
    assert "install -q -e ." in demo and ".[dev]" not in demo
    assert ".installed-package" in demo and "crossgate generate" in demo

    venv.mkdir()
    (venv / ".installed-package").touch()  # as after `make demo`
    later = time.time() + 5
    os.utime(venv / ".installed-package", (later, later))
    test = _dry_run("test", venv)
    assert '-e ".[dev]"' in test  # the demo's stamp does not stand in for the dev extra


def test_demo_after_test_installs_nothing_again(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # as after `make test`: the dev extra has the package too
    later = time.time() + 5
    os.utime(venv / ".installed", (later, later))
    # PY pointing nowhere: any pip or venv command would fail the target
    done = subprocess.run(
        ["make", "install-package", f"VENV={venv}", "PY=/nonexistent/python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (venv / ".installed-package").is_file()
