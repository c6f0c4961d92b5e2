"""scripts/joint_study.py runs the joint-attention variants through crossgate eval and applies its rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import joint_study


def test_smoke_stage_runs_every_variant_and_the_report_applies_the_rule(tmp_path, capsys):
    from crossgate.testing import tiny_sd3_pipeline

    model = tmp_path / "sd3"
    tiny_sd3_pipeline().save_pretrained(model)
    assert joint_study.run("smoke", tmp_path / "out", str(model)) == 0
    rows = joint_study._rows(tmp_path / "out" / "smoke")
    names = {r["name"] for r in rows}
    assert names == {"plain", "tgate m=2", "tgate m=2 ts=live", "tgate m=2 kc=1", "tgate m=2 ts=frozen_mean"}
    by = {r["name"]: r for r in rows}
    # executed MACs: both < CFG cut alone < plain, and both < text freeze alone < plain
    assert by["tgate m=2"]["macs_vs_plain"] < by["tgate m=2 ts=live"]["macs_vs_plain"] < 1
    assert by["tgate m=2"]["macs_vs_plain"] < by["tgate m=2 kc=1"]["macs_vs_plain"] < 1
    assert by["tgate m=2 ts=frozen_mean"]["macs_vs_plain"] == pytest.approx(by["tgate m=2"]["macs_vs_plain"])
    capsys.readouterr()
    joint_study.report([tmp_path / "out" / "smoke"])
    out = capsys.readouterr().out
    assert "| tgate m=2 kc=1 |" in out and "rule:" in out
