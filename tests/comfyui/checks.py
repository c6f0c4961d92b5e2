"""The TGATE node (comfyui/) against a real ComfyUI: facts for tests/test_comfyui.py.

Runs in the ComfyUI venv (`make comfy-env`), never in the main one:

    .venv-comfy/bin/python tests/comfyui/checks.py [--json results.json] [--only NAME ...]

Each check returns plain facts (equalities, batch sizes per step, counts, max differences); the
assertions live in tests/test_comfyui.py. Without --json the facts are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    WAN_LATENT,
    Comfy,
    Probe,
    expected_steps,
    reference_sample,
    reference_sample_wan,
    run_sigmas,
)

SAMPLERS = ("euler", "dpmpp_2m", "heun")
STEPS = 10
GATE = 4
PROMPT = "a red circle left of a blue square"
PROMPT_B = "a green triangle above a yellow circle"
WAN_STEPS, WAN_GATE = 8, 3  # Wan 2.1: 8 steps, gate 3
WAN22_BOUNDARY = 4  # Wan 2.2: the high-noise model runs steps 0-3, the low-noise model 4-7
WAN22_GATES = {"gate-before-boundary": 2, "gate-after-boundary": 6}


class Checks:
    def __init__(self, env: Comfy) -> None:
        self.env = env
        self.torch = env.torch
        self.model = env.build_model()
        self.pos = env.conditioning(PROMPT)
        self.pos_b = env.conditioning(PROMPT_B)
        self.neg = env.conditioning("")

    # -- helpers ---------------------------------------------------------------------------------

    def sample(self, model, **kw):
        kw.setdefault("steps", STEPS)
        positive = kw.pop("positive", self.pos)
        return self.env.sample(model, positive, self.neg, **kw)

    def diff(self, a, b) -> dict:
        d = (a - b).abs()
        return {
            "max_abs": float(d.max()),
            "max_rel": float(d.max() / b.abs().max().clamp_min(1e-12)),
            "equal": bool(self.torch.equal(a, b)),
        }

    def probed(self, model, widgets=None, **kw):
        probe = Probe(self.env, model)
        patched = self.env.tgate(probe.model, **widgets) if widgets is not None else probe.model
        try:
            out = self.sample(patched, **kw)
        finally:
            probe.remove()
        report = self.env.controller(patched).last_report if widgets is not None else None
        return out, probe.calls, report

    def per_step(self, calls, sampler, steps=STEPS, scheduler="simple") -> list[dict]:
        sigmas = [float(s) for s in run_sigmas(self.env, self.model, steps, scheduler)]
        step_of = expected_steps(sampler, sigmas)
        if len(step_of) != len(calls):
            raise AssertionError(f"{sampler}: {len(calls)} UNet calls, the algorithm makes {len(step_of)}")
        return [dict(c, step=s) for c, s in zip(calls, step_of)]

    # -- checks ----------------------------------------------------------------------------------

    def check_node_loads(self) -> dict:
        """ComfyUI loads the pack from custom_nodes and parses its pyproject.toml."""
        import nodes
        from comfy_config import config_parser

        cfg = config_parser.extract_node_configuration(str(self.env.pack_dir))
        spec = self.env.TGate.INPUT_TYPES()
        return {
            "comfyui_version": self.env.version,
            "node_registered": "TGATE" in nodes.NODE_CLASS_MAPPINGS,
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get("TGATE"),
            "return_types": list(self.env.TGate.RETURN_TYPES),
            "required_inputs": list(spec["required"]),
            "optional_inputs": list(spec.get("optional", {})),
            "pyproject_name": cfg.project.name if cfg else None,
            "pyproject_display_name": cfg.tool_comfy.display_name if cfg else None,
        }

    def check_sdxl(self) -> dict:
        """SDXL (ComfyUI's own SDXL model class, tiny): the same past-the-end, batch and reference
        checks as for SD-1.5."""
        sdxl = SDXLChecks(self.env)
        return {
            "transformer_blocks": len(self.env.transformer_blocks(sdxl.model)),
            "past_end": sdxl.check_past_end_exact(),
            "batches": sdxl.check_batches(),
            "reference": sdxl.check_reference(),
        }

    def check_wan(self) -> dict:
        """Wan 2.1 (ComfyUI's WAN21 / WanModel, tiny): past the end exact, batch 2 then 1 with each
        block's cross_attn idle after the gate, bit-identical to the hand-written TGATE, input untouched."""
        return WanChecks(self.env).run_wan21()

    def check_wan22(self) -> dict:
        """Wan 2.2's two models over one schedule (two KSamplerAdvanced), gate before and after the
        boundary, vs the hand-written TGATE with the diffusers engine's rule for experts."""
        return WanChecks(self.env).run_wan22()

    def check_node_apis(self) -> dict:
        """This ComfyUI loads the V3 node; the V1 export (older ComfyUI) has the same inputs and
        gives the same model output, and is what the pack exports when ``comfy_api`` is missing."""
        import importlib.util

        torch = self.torch
        v1 = self.env.node_module.TGate
        widgets = {"gate_mode": "step", "gate_step": 2}
        outs = {}
        for api, gated in (
            ("v3", self.env.tgate(self.model, **widgets)),
            ("v1", v1().patch(self.model, **widgets)[0]),
        ):
            outs[api] = self.sample(gated)
        spec_v1, spec_v3 = v1.INPUT_TYPES(), self.env.TGate.INPUT_TYPES()
        # the pack imported as on a ComfyUI without comfy_api: the V1 mappings
        blocked = {name: sys.modules.get(name) for name in ("comfy_api", "comfy_api.latest")}
        sys.modules.update(dict.fromkeys(blocked))  # None: importing them raises ImportError
        try:
            init = self.env.pack_dir / "__init__.py"
            spec = importlib.util.spec_from_file_location(
                "crossgate_tgate_v1only", init, submodule_search_locations=[str(self.env.pack_dir)]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            v1_only = module.NODE_CLASS_MAPPINGS
        finally:
            for name, mod in blocked.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod
        return {
            "loaded_is_v3": hasattr(self.env.TGate, "define_schema"),
            "same_inputs": list(spec_v1["required"]) == list(spec_v3["required"])
            and list(spec_v1.get("optional", {})) == list(spec_v3.get("optional", {})),
            "same_output": bool(torch.equal(outs["v1"], outs["v3"])),
            "gated_differs_from_plain": not torch.equal(outs["v3"], self.sample(self.model)),
            "v1_only_exports": sorted(v1_only or {}),
            "v1_only_class": getattr((v1_only or {}).get("TGATE"), "FUNCTION", None),
        }

    def check_past_end_exact(self) -> dict:
        """A gate at or past the last step: bit-identical to the unpatched model, every sampler."""
        out = {}
        for sampler in SAMPLERS:
            plain = self.sample(self.model, sampler=sampler)
            for label, widgets in {
                "step=steps": {"gate_mode": "step", "gate_step": STEPS},
                "step=steps+5": {"gate_mode": "step", "gate_step": STEPS + 5},
                "fraction=1.0": {"gate_mode": "fraction", "gate_fraction": 1.0},
                "v2 step=steps": {"gate_mode": "step", "gate_step": STEPS, "self_attention_interval": 2},
            }.items():
                patched = self.env.tgate(self.model, **widgets)
                out[f"{sampler} {label}"] = bool(
                    self.torch.equal(self.sample(patched, sampler=sampler), plain)
                )
        return out

    def check_batches(self) -> dict:
        """Per step: UNet batch, cross-attention projection tokens, attention computations."""
        out = {}
        blocks = len(self.env.transformer_blocks(self.model))
        out["transformer_blocks"] = blocks
        for sampler in SAMPLERS:
            for label, widgets in {"plain": None, "tgate": {"gate_mode": "step", "gate_step": GATE}}.items():
                _, calls, report = self.probed(self.model, widgets, sampler=sampler)
                rows = self.per_step(calls, sampler)
                out[f"{sampler} {label}"] = {
                    "steps": [r["step"] for r in rows],
                    "batch": [r["batch"] for r in rows],
                    "attn2_tokens": [r["attn2_tokens"] for r in rows],
                    "attention": [r["attention"] for r in rows],
                    "report": report,
                }
        # the gate as a fraction: 0.4 of 10 steps is 4, of 5 steps is 2 (same patched model)
        patched_widgets = {"gate_mode": "fraction", "gate_fraction": 0.4}
        for steps in (10, 5):
            _, calls, report = self.probed(self.model, patched_widgets, sampler="euler", steps=steps)
            out[f"fraction 0.4 of {steps}"] = {"batch": [c["batch"] for c in calls], "gate": report["gate"]}
        return out

    def check_reference(self) -> dict:
        """The node's output vs the hand-written TGATE (and plain ComfyUI vs the hand-written loop)."""
        out = {}
        for sampler in SAMPLERS:
            plain = self.sample(self.model, sampler=sampler)
            ref_plain, _ = reference_sample(
                self.env, self.model, self.pos, self.neg, steps=STEPS, sampler=sampler
            )
            out[f"{sampler} plain vs hand loop"] = self.diff(plain, ref_plain)
            node = self.sample(self.env.tgate(self.model, gate_mode="step", gate_step=GATE), sampler=sampler)
            ref, counts = reference_sample(
                self.env, self.model, self.pos, self.neg, steps=STEPS, sampler=sampler, gate=GATE
            )
            out[f"{sampler} tgate vs reference"] = dict(self.diff(node, ref), reference_counts=counts)
            out[f"{sampler} tgate vs plain"] = self.diff(node, plain)
        # no CFG (cfg 1): the batch is B throughout, cross-attention still replayed
        node = self.sample(self.env.tgate(self.model, gate_mode="step", gate_step=GATE), cfg=1.0)
        ref, _ = reference_sample(self.env, self.model, self.pos, self.neg, steps=STEPS, cfg=1.0, gate=GATE)
        out["euler cfg=1 tgate vs reference"] = self.diff(node, ref)
        # two latents per prompt
        node = self.sample(self.env.tgate(self.model, gate_mode="step", gate_step=GATE), batch=2, seed=3)
        ref, _ = reference_sample(
            self.env, self.model, self.pos, self.neg, steps=STEPS, batch=2, seed=3, gate=GATE
        )
        out["euler batch=2 tgate vs reference"] = self.diff(node, ref)
        return out

    def check_v2(self) -> dict:
        """TGATE v2: self-attention reuse on the published schedule, vs the reference."""
        out = {}
        steps, gate, k, k_after, warm = 12, 8, 3, 2, 2
        widgets = {
            "gate_mode": "step",
            "gate_step": gate,
            "self_attention_interval": k,
            "self_attention_interval_after": k_after,
            "self_attention_warm_up": warm,
        }
        for sampler in ("euler", "heun"):
            node, calls, report = self.probed(self.model, widgets, sampler=sampler, steps=steps)
            rows = self.per_step(calls, sampler, steps=steps)
            ref, counts = reference_sample(
                self.env,
                self.model,
                self.pos,
                self.neg,
                steps=steps,
                sampler=sampler,
                gate=gate,
                v2=(k, k_after, warm),
            )
            out[sampler] = dict(
                self.diff(node, ref),
                steps=[r["step"] for r in rows],
                batch=[r["batch"] for r in rows],
                attention=[r["attention"] for r in rows],
                report=report,
                reference_counts=counts,
            )
        out["plan"] = {
            "steps": steps,
            "gate": gate,
            "interval": k,
            "interval_after": k_after,
            "warm_up": warm,
        }
        return out

    def check_other_patches(self) -> dict:
        """A LoRA, another node's attn2 replace (before TGATE) and an attn2 output patch (after it)."""
        import comfy.ldm.modules.attention as attention
        import comfy.lora
        import comfy.sd

        torch = self.torch
        out = {}
        # a LoRA in the kohya format, loaded by ComfyUI's own loader, on a model of its own
        base = self.env.build_model()
        key_map = comfy.lora.model_lora_keys_unet(base.model, {})
        gen = torch.Generator().manual_seed(7)
        lora = {}
        targets = [  # kohya names (diffusers module paths); ComfyUI maps them onto its own keys
            k
            for k in key_map
            if k.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks"))
            and k.endswith(("attn2_to_q", "attn2_to_k", "ff_net_2"))
        ]
        state = base.model.state_dict()
        for name in targets:
            shape = state[key_map[name]].shape
            rank = 4
            lora[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=gen) * 0.3
            lora[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=gen) * 0.3
            lora[f"{name}.alpha"] = torch.tensor(float(rank))
        lora_model, _ = comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0.0)
        out["lora_layers"] = len(targets)
        plain_lora = self.sample(lora_model)
        plain_base = self.sample(base)
        out["lora changes the output"] = float((plain_lora - plain_base).abs().max())
        out["lora past end exact"] = bool(
            torch.equal(
                self.sample(self.env.tgate(lora_model, gate_mode="step", gate_step=STEPS)), plain_lora
            )
        )
        node = self.sample(self.env.tgate(lora_model, gate_mode="step", gate_step=GATE))
        ref, _ = reference_sample(self.env, lora_model, self.pos, self.neg, steps=STEPS, gate=GATE)
        out["lora tgate vs reference"] = self.diff(node, ref)
        node_no_lora = self.sample(self.env.tgate(base, gate_mode="step", gate_step=GATE))
        out["lora tgate vs tgate without lora"] = float((node - node_no_lora).abs().max())

        # another node's attn2 replace on every block (sharper attention) + an output patch after TGATE
        calls = {"replace": 0, "output": 0}

        def sharper(q, k, v, extra):
            calls["replace"] += 1
            return attention.optimized_attention(
                q * 1.5, k, v, extra["n_heads"], attn_precision=extra["attn_precision"]
            )

        def damp(n, extra):
            calls["output"] += 1
            return n * 0.8

        other = self.model.clone()
        for key, _ in self.env.transformer_blocks(other):
            other.set_model_attn2_replace(sharper, key[0], key[1], key[2])
        plain_other = self.sample(other)
        past = self.env.tgate(other, gate_mode="step", gate_step=STEPS)
        past.set_model_attn2_output_patch(damp)
        plain_other_damped = other.clone()
        plain_other_damped.set_model_attn2_output_patch(damp)
        out["other patches past end exact"] = bool(
            torch.equal(self.sample(past), self.sample(plain_other_damped))
        )
        gated = self.env.tgate(other, gate_mode="step", gate_step=GATE)
        gated.set_model_attn2_output_patch(damp)
        calls.update(replace=0, output=0)
        node = self.sample(gated)
        out["other patches calls"] = dict(calls)
        ref, _ = reference_sample(
            self.env,
            self.model,
            self.pos,
            self.neg,
            steps=STEPS,
            gate=GATE,
            # the other node's patches, as the plain (TGATE-free) model carries them
            transformer_options=dict(plain_other_damped.model_options["transformer_options"]),
        )
        out["other patches tgate vs reference"] = self.diff(node, ref)
        out["other replace changes the output"] = float((plain_other - self.sample(self.model)).abs().max())
        out["blocks"] = len(self.env.transformer_blocks(self.model))
        return out

    def check_patches_after_tgate(self) -> dict:
        """Other nodes' attn2 code that cannot take 0-token tensors (IPAdapter divides by the query
        length), in either order around TGATE: sampling completes and equals the reference."""
        import comfy.ldm.modules.attention as attention

        out = {}
        seen = {"replace_empty": 0, "patch_empty": 0, "output_empty": 0, "replace": 0}

        def strict_replace(q, k, v, extra):
            seen["replace"] += 1
            seen["replace_empty"] += int(q.shape[1] == 0)
            _ = q.shape[-1] // q.shape[1]  # IPAdapter's per-token arithmetic: fails on 0 tokens
            return attention.optimized_attention(
                q, k, v, extra["n_heads"], attn_precision=extra["attn_precision"]
            )

        def strict_patch(n, context, value, extra):
            seen["patch_empty"] += int(n.shape[1] == 0)
            _ = n.shape[-1] // n.shape[1]
            return n, context, value

        def strict_output(n, extra):
            seen["output_empty"] += int(n.shape[1] == 0)
            _ = n.shape[-1] // n.shape[1]
            return n

        blocks = self.env.transformer_blocks(self.model)
        plain_ref = self.sample(self.model)
        reference, _ = reference_sample(self.env, self.model, self.pos, self.neg, steps=STEPS, gate=GATE)
        tgate_alone = self.sample(self.env.tgate(self.model, gate_mode="step", gate_step=GATE))
        out["tgate alone vs reference"] = self.diff(tgate_alone, reference)
        # after TGATE: a replace on every block and an attn2 patch
        after = self.env.tgate(self.model, gate_mode="step", gate_step=GATE)
        for key, _ in blocks:
            after.set_model_attn2_replace(strict_replace, key[0], key[1], key[2])
        after.set_model_attn2_patch(strict_patch)
        seen.update(replace_empty=0, patch_empty=0, output_empty=0, replace=0)
        result = self.sample(after)
        out["after"] = {**seen, "vs tgate alone": self.diff(result, tgate_alone)}
        # before TGATE: an output patch (it runs before TGATE's) and a replace (TGATE wraps it)
        before = self.model.clone()
        before.set_model_attn2_output_patch(strict_output)
        for key, _ in blocks:
            before.set_model_attn2_replace(strict_replace, key[0], key[1], key[2])
        gated = self.env.tgate(before, gate_mode="step", gate_step=GATE)
        seen.update(replace_empty=0, patch_empty=0, output_empty=0, replace=0)
        result = self.sample(gated)
        out["before"] = {**seen, "vs tgate alone": self.diff(result, tgate_alone)}
        # TGATE last, nothing after it: the 0-token path (no attention computed after the gate)
        last = self.env.tgate(self.model, gate_mode="step", gate_step=GATE)
        out["tgate last replays"] = self.env_report(last)
        out["blocks"] = len(blocks)
        out["plain differs"] = float((plain_ref - tgate_alone).abs().max())
        return out

    def env_report(self, model) -> dict:
        """Sample ``model`` and return its TGATE report's cross-attention counts."""
        self.sample(model)
        return dict(self.env.controller(model).last_report["cross_attention"])

    def check_no_state(self) -> dict:
        """Nothing is kept between prompts: a second prompt on the same patched model equals a fresh one."""
        torch = self.torch
        out = {}
        for sampler in SAMPLERS:
            patched = self.env.tgate(self.model, gate_mode="fraction", gate_fraction=0.4)
            self.sample(patched, sampler=sampler)  # prompt A first
            b_after_a = self.sample(patched, sampler=sampler, positive=self.pos_b)
            fresh = self.env.tgate(self.model, gate_mode="fraction", gate_fraction=0.4)
            b_fresh = self.sample(fresh, sampler=sampler, positive=self.pos_b)
            out[f"{sampler} second prompt equals fresh"] = bool(torch.equal(b_after_a, b_fresh))
            # and a different step count on the same model resolves its own gate
            self.sample(patched, sampler=sampler, steps=6)
            out[f"{sampler} after a 6-step run"] = bool(
                torch.equal(self.sample(patched, sampler=sampler, positive=self.pos_b), b_fresh)
            )
        run_cls = self.env.node_module._Run
        out["live runs"] = _live(run_cls)
        out["live caches"] = _live(self.env.node_module._Store)
        to = patched.model_options.get("transformer_options", {})
        out["key left in model_options"] = self.env.node_module.KEY in to
        out["plain model untouched"] = bool(
            torch.equal(self.sample(self.model), self.sample(self.env.build_model()))
        )
        # a run that raises inside the sampler leaves nothing behind either
        broken = self.env.tgate(self.model, gate_mode="step", gate_step=1)

        def boom(n, extra):
            if extra.get("sigmas") is not None and len(extra["cond_or_uncond"]) == 1:
                raise RuntimeError("boom")
            return n

        broken.set_model_attn1_output_patch(boom)
        try:
            self.sample(broken)
            out["error propagated"] = False
        except RuntimeError as e:
            out["error propagated"] = "boom" in str(e)
        out["live runs after error"] = _live(run_cls)
        return out

    def check_sampler_steps(self) -> dict:
        """The node's evaluations-per-step table vs what every ComfyUI sampler really does.

        Measured without the node: a PREDICT_NOISE wrapper marks each evaluation, the sampler's
        callback marks each step's report, which follows the step's first evaluation.
        """
        import comfy.patcher_extension as ext
        import comfy.sample
        import comfy.samplers

        torch = self.torch
        node = self.env.node_module
        steps = 6
        sigmas = run_sigmas(self.env, self.model, steps)
        sigma_list = [float(v) for v in sigmas]
        out = {"measured": {}, "predicted": {}, "function": {}}
        for name in comfy.samplers.SAMPLER_NAMES:
            if name in ("dpm_fast", "dpm_adaptive"):
                continue  # their own internal step sizes: not a fixed schedule
            events = []
            probe = self.model.clone()

            def predict(executor, x, timestep, model_options, seed, _events=events):
                _events.append(("eval", x))
                return executor(x, timestep, model_options, seed)

            probe.add_wrapper_with_key(ext.WrappersMP.PREDICT_NOISE, "probe", predict)
            sampler = comfy.samplers.sampler_object(name)
            latent = torch.zeros(1, 4, 8, 8)

            def callback(i, x0, x, total, _events=events):
                _events.append(("step", i, x))

            comfy.sample.sample_custom(
                probe,
                comfy.sample.prepare_noise(latent, 0),
                5.0,
                sampler,
                sigmas,
                self.pos,
                self.neg,
                latent,
                callback=callback,
                disable_pbar=True,
                seed=0,
            )
            # step i's first evaluation is the last one before its report; the others up to the next
            # step's first are its extras (and after the last report: the last step's extras)
            reports = [k for k, ev in enumerate(events) if ev[0] == "step"]
            measured = []
            for j, k in enumerate(reports):
                end = reports[j + 1] - 1 if j + 1 < len(reports) else len(events)
                measured.append(sum(1 for ev in events[k + 1 : end] if ev[0] == "eval"))
            fn = node.sampler_name(sampler)
            out["function"][name] = fn
            out["measured"][name] = measured
            out["predicted"][name] = [node.extra_evaluations(fn, i, sigma_list) for i in range(len(measured))]
        return out

    def check_unknown_sampler(self) -> dict:
        """A sampler the table does not know (Heun under another name): steps learned at each callback."""
        import comfy.k_diffusion.sampling as kd
        import comfy.sample
        import comfy.samplers

        torch = self.torch

        def my_second_order(model, x, sigmas, extra_args=None, callback=None, disable=None):
            return kd.sample_heun(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

        sigmas = run_sigmas(self.env, self.model, STEPS)
        latent = torch.zeros(1, 4, 8, 8)
        out = {}
        for gate in (2, GATE):
            results = {}
            for label, sampler in {
                "heun": comfy.samplers.sampler_object("heun"),
                "unknown": comfy.samplers.KSAMPLER(my_second_order),
            }.items():
                probe = Probe(self.env, self.model)
                patched = self.env.tgate(probe.model, gate_mode="step", gate_step=gate)
                try:
                    x = comfy.sample.sample_custom(
                        patched,
                        comfy.sample.prepare_noise(latent, 0),
                        7.5,
                        sampler,
                        sigmas,
                        self.pos,
                        self.neg,
                        latent,
                        disable_pbar=True,
                        seed=0,
                    )
                finally:
                    probe.remove()
                results[label] = (
                    x,
                    [c["batch"] for c in probe.calls],
                    self.env.controller(patched).last_report,
                )
            out[f"gate {gate}"] = {
                "equal": bool(torch.equal(results["heun"][0], results["unknown"][0])),
                "batch heun": results["heun"][1],
                "batch unknown": results["unknown"][1],
                "sampler reported": results["unknown"][2]["sampler"],
            }
        return out

    def check_misc(self) -> dict:
        """denoise < 1 counts the steps that run; refusals; a second TGATE replaces the first."""
        torch = self.torch
        out = {}
        patched = self.env.tgate(self.model, gate_mode="fraction", gate_fraction=0.4)
        probe = Probe(self.env, patched)
        try:
            self.sample(probe.model, denoise=0.6)
        finally:
            probe.remove()
        out["denoise 0.6 report"] = {
            k: self.env.controller(patched).last_report[k] for k in ("steps", "gate")
        }
        out["denoise 0.6 batch"] = [c["batch"] for c in probe.calls]
        errors = {}
        for label, widgets in {
            "gate_fraction 0": {"gate_mode": "fraction", "gate_fraction": 0.0},
            "gate_step 0": {"gate_mode": "step", "gate_step": 0},
            "gate_mode bad": {"gate_mode": "percent"},
            "interval_after 0": {"self_attention_interval_after": 0},
        }.items():
            try:
                self.env.tgate(self.model, **widgets)
                errors[label] = None
            except ValueError as e:
                errors[label] = str(e)
        out["errors"] = errors
        import comfy.model_patcher

        no_cross = comfy.model_patcher.ModelPatcher(
            _no_cross_model(torch), load_device=torch.device("cpu"), offload_device=torch.device("cpu")
        )
        try:
            self.env.tgate(no_cross)
            out["no cross-attention refused"] = None
        except ValueError as e:
            out["no cross-attention refused"] = str(e)
        twice = self.env.tgate(
            self.env.tgate(self.model, gate_mode="step", gate_step=2), gate_mode="step", gate_step=GATE
        )
        once = self.env.tgate(self.model, gate_mode="step", gate_step=GATE)
        out["second TGATE replaces the first"] = bool(torch.equal(self.sample(twice), self.sample(once)))
        to = twice.model_options["transformer_options"]
        out["patch lists after twice"] = {k: len(v) for k, v in to.get("patches", {}).items()}
        return out


def _live(cls) -> int:
    """How many objects of ``cls`` are alive (after a collection)."""
    import warnings

    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(type(o) is cls for o in gc.get_objects())


def _no_cross_model(torch):
    """A stand-in BaseModel whose diffusion model has no transformer blocks (like a DiT)."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Sequential(torch.nn.Linear(4, 4))
            self.model_sampling = torch.nn.Identity()

        def memory_required(self, *args, **kwargs):
            return 0

    return Model()


class SDXLChecks(Checks):
    """The SD-1.5 checks on the tiny SDXL (its model, SDXL-shaped conditioning)."""

    def __init__(self, env: Comfy) -> None:
        self.env = env
        self.torch = env.torch
        self.model = env.build_sdxl_model()
        self.pos = env.sdxl_conditioning(PROMPT)
        self.pos_b = env.sdxl_conditioning(PROMPT_B)
        self.neg = env.sdxl_conditioning("")


class WanChecks:
    """The Wan checks: tiny ComfyUI Wan models, 5-D latents, samplers via the KSampler nodes' code."""

    def __init__(self, env: Comfy) -> None:
        self.env = env
        self.torch = env.torch
        self.model = env.build_wan_model(0)
        self.pos = env.wan_conditioning(PROMPT)
        self.neg = env.wan_conditioning("")

    def diff(self, a, b) -> dict:
        return Checks.diff(self, a, b)

    def latent(self) -> dict:
        return {"samples": self.torch.zeros(1, *WAN_LATENT)}

    def sample(self, model, sampler="euler", steps=WAN_STEPS, cfg=5.0):
        (out,) = self.env.nodes.common_ksampler(
            model, 0, steps, cfg, sampler, "simple", self.pos, self.neg, self.latent()
        )
        return out["samples"]

    def advanced(self, model, start, end, sampler, first: bool):
        """One KSamplerAdvanced of Wan 2.2's chain (the first adds noise and keeps the leftover)."""
        node = self.env.nodes.KSamplerAdvanced()
        return node.sample(
            model,
            "enable" if first else "disable",
            0,
            WAN_STEPS,
            5.0,
            sampler,
            "simple",
            self.pos,
            self.neg,
            self.latent() if first else {"samples": start},
            0 if first else WAN22_BOUNDARY,
            WAN22_BOUNDARY if first else 10000,
            "enable" if first else "disable",
        )[0]["samples"]

    def probed(self, model, sample):
        probe = Probe(self.env, model, wan=True)
        try:
            out = sample(probe.model)
        finally:
            probe.remove()
        return out, probe.calls

    def untouched(self, model, originals) -> bool:
        """The input MODEL once it runs again after a patched clone: its own cross_attn modules (ComfyUI
        restores object patches when it swaps the loaded patcher), no object patch of its own, no
        instance ``forward`` left on a module."""
        blocks = model.model.diffusion_model.blocks
        return (
            all(b.cross_attn is o for b, o in zip(blocks, originals))
            and not model.object_patches
            and not any("forward" in vars(o) for o in originals)
        )

    def run_wan21(self) -> dict:
        torch, env = self.torch, self.env
        out: dict = {}
        originals = [b.cross_attn for _, b in env.wan_blocks(self.model)]
        out["blocks"] = len(originals)
        plain = {}
        for sampler in SAMPLERS:
            plain[sampler] = self.sample(self.model, sampler)
            for label, widgets in {
                "step=steps": {"gate_mode": "step", "gate_step": WAN_STEPS},
                "step=steps+5": {"gate_mode": "step", "gate_step": WAN_STEPS + 5},
                "fraction=1.0": {"gate_mode": "fraction", "gate_fraction": 1.0},
            }.items():
                gated = self.sample(env.tgate(self.model, **widgets), sampler)
                out.setdefault("past_end", {})[f"{sampler} {label}"] = bool(
                    torch.equal(gated, plain[sampler])
                )
        for sampler in SAMPLERS:
            patched = env.tgate(self.model, gate_mode="step", gate_step=WAN_GATE)
            node, calls = self.probed(patched, lambda m, s=sampler: self.sample(m, s))
            _, plain_calls = self.probed(self.model, lambda m, s=sampler: self.sample(m, s))
            sigmas = [float(v) for v in run_sigmas(env, self.model, WAN_STEPS)]
            steps = expected_steps(sampler, sigmas)
            ref_plain, _ = reference_sample_wan(
                env, [(self.model, 0, WAN_STEPS)], self.pos, self.neg, steps=WAN_STEPS, sampler=sampler
            )
            ref, counts = reference_sample_wan(
                env,
                [(self.model, 0, WAN_STEPS)],
                self.pos,
                self.neg,
                steps=WAN_STEPS,
                sampler=sampler,
                gate=WAN_GATE,
            )
            out[sampler] = {
                "steps": steps,
                "batch": [c["batch"] for c in calls],
                "cross_projections": [c["attn2_projections"] for c in calls],
                "attention": [c["attention"] for c in calls],
                "plain batch": [c["batch"] for c in plain_calls],
                "plain attention": [c["attention"] for c in plain_calls],
                "report": env.controller(patched).last_report,
                "plain vs hand loop": self.diff(plain[sampler], ref_plain),
                "tgate vs reference": dict(self.diff(node, ref), reference_counts=counts),
                "tgate vs plain": self.diff(node, plain[sampler]),
            }
        node = self.sample(env.tgate(self.model, gate_mode="step", gate_step=WAN_GATE), cfg=1.0)
        ref, _ = reference_sample_wan(
            env, [(self.model, 0, WAN_STEPS)], self.pos, self.neg, steps=WAN_STEPS, cfg=1.0, gate=WAN_GATE
        )
        out["euler cfg=1 tgate vs reference"] = self.diff(node, ref)
        out["input model untouched"] = self.untouched(self.model, originals) and bool(
            torch.equal(self.sample(self.model), plain["euler"])
        )
        try:
            env.tgate(self.model, self_attention_interval=2)
            out["v2 refused"] = None
        except ValueError as e:
            out["v2 refused"] = str(e)
        twice = env.tgate(
            env.tgate(self.model, gate_mode="step", gate_step=2), gate_mode="step", gate_step=WAN_GATE
        )
        once = env.tgate(self.model, gate_mode="step", gate_step=WAN_GATE)
        out["second TGATE replaces the first"] = bool(torch.equal(self.sample(twice), self.sample(once)))
        return out

    def run_wan22(self) -> dict:
        torch, env = self.torch, self.env
        high, low = self.model, env.build_wan_model(1)
        originals = [b.cross_attn for _, b in env.wan_blocks(low)]
        out: dict = {"boundary": WAN22_BOUNDARY, "steps": WAN_STEPS}
        experts = [(high, 0, WAN22_BOUNDARY), (low, WAN22_BOUNDARY, WAN_STEPS)]
        for sampler in ("euler", "heun"):
            first = self.advanced(high, None, None, sampler, True)
            plain = self.advanced(low, first, None, sampler, False)
            ref_plain, _ = reference_sample_wan(
                env, experts, self.pos, self.neg, steps=WAN_STEPS, sampler=sampler
            )
            out[f"{sampler} plain vs hand loop"] = self.diff(plain, ref_plain)
            for label, gate in WAN22_GATES.items():
                hi = env.tgate(high, gate_mode="step", gate_step=gate, start_at_step=0, total_steps=WAN_STEPS)
                lo = env.tgate(low, gate_mode="step", gate_step=gate, start_at_step=WAN22_BOUNDARY)
                x, hi_calls = self.probed(hi, lambda m, s=sampler: self.advanced(m, None, None, s, True))
                node, lo_calls = self.probed(
                    lo, lambda m, s=sampler, x=x: self.advanced(m, x, None, s, False)
                )
                ref, counts = reference_sample_wan(
                    env, experts, self.pos, self.neg, steps=WAN_STEPS, sampler=sampler, gate=gate
                )
                out[f"{sampler} {label}"] = {
                    "gate": gate,
                    "high batch": [c["batch"] for c in hi_calls],
                    "low batch": [c["batch"] for c in lo_calls],
                    "high cross_projections": [c["attn2_projections"] for c in hi_calls],
                    "low cross_projections": [c["attn2_projections"] for c in lo_calls],
                    "high report": env.controller(hi).last_report,
                    "low report": env.controller(lo).last_report,
                    "tgate vs reference": dict(self.diff(node, ref), reference_counts=counts),
                    "tgate vs plain": self.diff(node, plain),
                }
        # the gate as a fraction of the whole schedule: 0.25 of 8 steps is step 2, in both models
        hi = env.tgate(high, gate_mode="fraction", gate_fraction=0.25, total_steps=WAN_STEPS)
        lo = env.tgate(low, gate_mode="fraction", gate_fraction=0.25, start_at_step=WAN22_BOUNDARY)
        by_fraction = self.advanced(lo, self.advanced(hi, None, None, "euler", True), None, "euler", False)
        hi = env.tgate(high, gate_mode="step", gate_step=2, total_steps=WAN_STEPS)
        lo = env.tgate(low, gate_mode="step", gate_step=2, start_at_step=WAN22_BOUNDARY)
        by_step = self.advanced(lo, self.advanced(hi, None, None, "euler", True), None, "euler", False)
        out["fraction 0.25 equals step 2"] = bool(torch.equal(by_fraction, by_step))
        # total_steps too small for the run: a clear error at sampling
        bad = env.tgate(low, gate_mode="step", gate_step=2, start_at_step=WAN22_BOUNDARY, total_steps=6)
        try:
            self.advanced(bad, by_step, None, "euler", False)
            out["schedule error"] = None
        except ValueError as e:
            out["schedule error"] = str(e)
        try:  # a start at or past the whole schedule's end: refused when the node runs
            env.tgate(low, start_at_step=WAN_STEPS, total_steps=WAN_STEPS)
            out["start past total refused"] = None
        except ValueError as e:
            out["start past total refused"] = str(e)
        again = self.advanced(low, first, None, "heun", False)  # the plain low-noise model once more
        out["input models untouched"] = self.untouched(low, originals) and bool(torch.equal(again, plain))
        return out


CHECKS = [name.removeprefix("check_") for name in dir(Checks) if name.startswith("check_")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the facts here")
    parser.add_argument("--only", nargs="*", choices=CHECKS, help="run only these checks")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI folder (default .venv-comfy/ComfyUI)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    env = Comfy(args.comfyui)
    checks = Checks(env)
    results: dict = {"comfyui": env.version, "setup_s": round(time.perf_counter() - start, 2), "checks": {}}
    try:
        for name in args.only or CHECKS:
            t0 = time.perf_counter()
            try:
                facts = getattr(checks, f"check_{name}")()
                results["checks"][name] = {"ok": True, "facts": facts}
            except Exception as e:
                results["checks"][name] = {
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc(),
                }
            results["checks"][name]["seconds"] = round(time.perf_counter() - t0, 2)
            print(f"{name}: {results['checks'][name]['seconds']} s", file=sys.stderr)
    finally:
        env.close()
    results["total_s"] = round(time.perf_counter() - start, 2)
    text = json.dumps(results, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
