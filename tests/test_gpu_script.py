"""The prepared GPU run (scripts/gpu_bench.sh + scripts/gpu_extras.py) checked on CPU: it parses, its
time caps fit one device call, and the Python half's dry run measures and records what it promises."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_bench.sh"
PER_CALL_LIMIT = 600  # the device tool's limit for one command, seconds


def _caps() -> dict[str, int]:
    """Each section's cap, as the script's code sets it."""
    text = SCRIPT.read_text()
    found = [(m.start(), m[1], int(m[2])) for m in re.finditer(r"^bench (\w+) .* (\d+)$", text, re.M)]
    found += [(m.start(), m[1], int(m[2])) for m in re.finditer(r"^section (\w+) (\d+) ", text, re.M)]
    return {name: cap for _, name, cap in sorted(found)}  # in the order the script runs them


def test_script_parses_and_its_caps_fit_one_device_call() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    caps = _caps()
    assert list(caps) == ["sd15", "sdxl", "pixart", "wan", "compile", "sd3", "flux", "offload"]
    text = SCRIPT.read_text()
    budget = int(re.search(r'BUDGET="\$\{BUDGET:-(\d+)\}"', text)[1])
    env_cap = 40  # wheels (25 s timeout, seconds in practice) and the environment check (15 s)
    assert sum(caps.values()) + env_cap <= budget <= PER_CALL_LIMIT - 30
    assert re.findall(r"timeout (\d+) \"\$PY\"", text) == ["25", "15"]  # the env section's own caps
    # the header documents the same caps as the code runs
    for name, cap in caps.items():
        assert re.search(rf"#\s+\d {name}\s+\(cap\s+{cap} s\)", text), name
    assert f"(sum of caps {sum(caps.values()) + env_cap} s;" in text


def _extras():
    spec = importlib.util.spec_from_file_location("gpu_extras", ROOT / "scripts" / "gpu_extras.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_extras_dry_run_compiles_and_offloads_with_crossgate(tmp_path) -> None:
    """Tiny SD on CPU, dynamo with the eager backend (inductor's C++ build is what the GPU run adds): the compiled
    denoiser matches eager under crossgate, no recompiles after the second call, every row timed;
    each offload order either runs and matches on-device crossgate, or fails exactly as offload
    without crossgate does on this machine (never because of crossgate)."""
    extras = _extras()
    out = tmp_path / "extras"
    argv = ["--dry-run", "--device", "cpu", "--backend", "eager", "--out", str(out)]
    status = extras.main([*argv, "--section", "compile", "offload"])
    data = json.loads((out / "extras.json").read_text())
    compile_, offload = data["compile"], data["offload"]
    assert status == 0 and compile_["status"] == "done" and offload["status"] == "done"
    assert compile_["output_vs_eager"]["matches"] and compile_["output_vs_eager"]["rel_l2"] <= 1e-4
    assert compile_["crossgate_engaged"] == {"gate": 2, "denoiser_batches": [2, 2, 1, 1]}
    assert compile_["first_compiled_call"]["unique_graphs"] > 0
    assert compile_["first_compiled_call"]["graph_breaks"] == 0  # fullgraph=True: a break would raise
    # the second call still compiles a few frames (crossgate paths first taken then), the third none
    frames = compile_["frames_compiled_after_each_call"]
    assert len(frames) == 3 and frames[1] == frames[2] and compile_["recompiles_after_second_call"] == 0
    for key in ("eager_plain", "eager_crossgate", "compiled_crossgate", "compiled_plain"):
        assert compile_[key]["rounds"] == 1 and compile_[key]["median_s"] > 0
    for order in ("offload-then-crossgate", "crossgate-then-offload"):
        result = offload[order]
        if result["status"] == "ran":
            assert result["matches"] and result["plain_after_remove"]["matches"]
            assert result["denoiser_batches"] == [2, 1, 1]
        else:
            assert result["status"].startswith("failed") and result["plain_offload_alone"].startswith(
                "fails too"
            )
    summary = (out / "extras.md").read_text()
    assert "## torch.compile (eager) with crossgate" in summary and "crossgate-then-offload" in summary


@pytest.mark.slow
def test_extras_compile_section_takes_compile_split_cfg(tmp_path) -> None:
    """``--compile-split-cfg``: the compile section gates with the split passes, records that it did,
    and the compiled output still matches eager crossgate."""
    extras = _extras()
    out = tmp_path / "extras"
    argv = ["--dry-run", "--device", "cpu", "--backend", "eager", "--out", str(out), "--compile-split-cfg"]
    assert extras.main([*argv, "--section", "compile"]) == 0
    compile_ = json.loads((out / "extras.json").read_text())["compile"]
    assert compile_["status"] == "done" and compile_["compile_split_cfg"] is True
    assert compile_["output_vs_eager"]["matches"] and compile_["first_compiled_call"]["graph_breaks"] == 0
    assert compile_["crossgate_engaged"] == {"gate": 2, "denoiser_batches": [2, 2, 1, 1]}
