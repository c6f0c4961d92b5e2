"""The TGATE node: cross-attention replayed from a cache and the unconditional branch dropped after
the gate, through ComfyUI's own hook points only (no ComfyUI function is replaced or wrapped).

What runs where, for a MODEL patched by the node (``apply_tgate``):

* ``SAMPLER_SAMPLE`` wrapper (``add_wrapper_with_key``): one sampling run. It resolves the gate from
  the run's sigmas (the ``sample_sigmas`` of the run: ``len - 1`` steps, the steps that actually run,
  also for ``denoise < 1`` and KSamplerAdvanced's start/end steps) and keeps the run's state in the
  run's own ``transformer_options`` (gone when the run ends: nothing is kept between prompts). A gate
  at or past the last step installs nothing for the run: bit-identical to the unpatched model.
* ``PREDICT_NOISE`` wrapper: one model evaluation; it assigns the evaluation its step (``_Steps``).
  Steps, not calls: every ComfyUI sampler reports step ``i`` (its callback) right after the step's
  first evaluation, and a second-order step evaluates again after that report (Heun's corrector at
  the next sigma, DPM-2's midpoint). How many times is known for ComfyUI's samplers
  (``EXTRA_EVALUATIONS``, checked against ComfyUI by tests/comfyui/checks.py) and learned from the
  previous step for any other sampler.
* ``CALC_COND_BATCH`` wrapper: after the gate, under CFG, only the conditional batch is computed (the
  UNet really runs at batch B, not 2B), and its prediction is returned for both branches, so the
  guidance arithmetic ``u + s (c - u)`` returns it, exactly.
* attn2 (cross-attention) of every transformer block: ``attn2_patch`` + a per-block
  ``set_model_attn2_replace`` + ``attn2_output_patch``. Before the gate the replace runs ComfyUI's own
  ``optimized_attention`` (or the replace another node had installed for that block), and at the
  step before the gate the output patch keeps each block's output. After the gate the output patch
  returns the cache: the mean of the conditional and unconditional outputs. Where TGATE's hooks are
  the block's last attn2 patch, its attn2 replace and its first attn2 output patch (TGATE placed
  after the other patch nodes), the patch hands the block zero query/key/value tokens and the
  replace computes nothing: no projection, no attention. Where another node's attn2 patch, replace
  or output patch would see those tensors (it was applied after TGATE, or an output patch before
  it), nothing is shrunk: that node runs on the real inputs (it computes, and TGATE's cache is still
  what the block returns), so foreign code never gets 0-token tensors (IPAdapter divides by them).
* TGATE v2 (``self_attention_interval``): the same three hooks on attn1 (self-attention) follow the
  published schedule (``tgate_schedule.self_attention_action``).
* Wan 2.1 / 2.2 (``comfy.ldm.wan.model.WanModel``): its blocks have no attn2 hooks, so each block's
  ``cross_attn`` is swapped through an object patch (``add_object_patch``, applied and restored by
  ComfyUI with the model) for a shallow copy of that module sharing its weights, whose ``forward``
  keeps, replays or computes like the attn2 hooks above; after the gate it returns the cache without
  running q/k/v/o. The batch is dropped by the same ``CALC_COND_BATCH`` wrapper.
* Two models over one schedule (Wan 2.2's high- and low-noise experts in two KSamplerAdvanced):
  ``start_at_step`` / ``total_steps`` place the run in the whole schedule; the gate is a step of that
  schedule, and a model whose run starts after the gate computes its cross-attention on the
  conditional batch (it has no measured output to replay), as crossgate's diffusers engine does.

Supported: UNets with ComfyUI transformer blocks (SD 1.x, SD 2.x, SDXL and their fine-tunes) and Wan
(``WanModel``). A model without either is refused with a clear error.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from typing import Any

from .tgate_schedule import (
    COMPUTE,
    GATE_MODES,
    REUSE,
    STORE,
    resolve_gate,
    schedule_position,
    self_attention_action,
)

KEY = "crossgate_tgate"
log = logging.getLogger("crossgate.comfyui")

# Transformer blocks of ComfyUI's UNet (comfy.ldm.modules.diffusionmodules.openaimodel): the block id
# the UNet puts in transformer_options["block"], and the index inside the SpatialTransformer.
_BLOCK_PATH = re.compile(
    r"^(?:(?P<io>input_blocks|output_blocks)\.(?P<id>\d+)\.\d+|middle_block\.\d+)\.transformer_blocks\.(?P<j>\d+)$"
)


@dataclass(frozen=True)
class TGateSettings:
    """What the node's widgets say. ``validated()`` raises ValueError with a readable message."""

    gate_mode: str = "fraction"
    gate_step: int = 10
    gate_fraction: float = 0.4
    self_attention_interval: int | None = None
    self_attention_interval_after: int = 1
    self_attention_warm_up: int = 2
    start_at_step: int = 0  # where the run starts in the whole schedule (KSamplerAdvanced's)
    total_steps: int = 0  # the whole schedule's steps; 0: start_at_step + the run's own steps

    def validated(self) -> TGateSettings:
        resolve_gate(self.gate_mode, self.gate_step, self.gate_fraction, 25)
        if self.self_attention_interval is not None:
            _check_int("self_attention_interval", self.self_attention_interval, 1)
        _check_int("self_attention_interval_after", self.self_attention_interval_after, 1)
        _check_int("self_attention_warm_up", self.self_attention_warm_up, 0)
        _check_int("start_at_step", self.start_at_step, 0)
        _check_int("total_steps", self.total_steps, 0)
        if self.total_steps and self.start_at_step >= self.total_steps:
            raise ValueError(
                f"TGATE: start_at_step ({self.start_at_step}) must be below total_steps ({self.total_steps})"
            )
        return self

    def schedule(self, run_steps: int) -> tuple[int, int]:
        """``(start, total)``: the run's first step and the step count of the whole schedule."""
        start = self.start_at_step
        total = self.total_steps or start + run_steps
        if start + run_steps > total:
            raise ValueError(
                f"TGATE: this run's {run_steps} steps from start_at_step {start} go past total_steps "
                f"{total}; set start_at_step and total_steps to the KSamplerAdvanced's start_at_step "
                "and steps"
            )
        return start, total

    @property
    def caches_self_attention(self) -> bool:
        return self.self_attention_interval is not None or self.self_attention_interval_after > 1

    def gate(self, num_steps: int) -> int:
        return resolve_gate(self.gate_mode, self.gate_step, self.gate_fraction, num_steps)

    def self_attention_action(self, step: int, gate: int) -> str:
        return self_attention_action(
            step,
            gate,
            self.self_attention_interval,
            self.self_attention_interval_after,
            self.self_attention_warm_up,
        )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TGATE: {name} must be an integer >= {minimum}, got {value!r}")


def wan_block_keys(diffusion_model: Any) -> list[tuple[str, int, int]]:
    """``("wan", i, 0)`` of every block of a ComfyUI Wan model (``WanModel``) with ``cross_attn``."""
    try:
        from comfy.ldm.wan.model import WanModel
    except ImportError:  # a ComfyUI without Wan
        return []
    if not isinstance(diffusion_model, WanModel):
        return []
    return [("wan", i, 0) for i, b in enumerate(diffusion_model.blocks) if hasattr(b, "cross_attn")]


def _wan_path(key: tuple) -> str:
    return f"diffusion_model.blocks.{key[1]}.cross_attn"


def transformer_block_keys(diffusion_model: Any) -> list[tuple[str, int, int]]:
    """``(block, id, index)`` of every transformer block with a cross-attention (attn2) layer."""
    keys = []
    for name, module in diffusion_model.named_modules():
        match = _BLOCK_PATH.match(name)
        if match is None or getattr(module, "attn2", None) is None:
            continue
        if match["io"] is None:
            keys.append(("middle", 0, int(match["j"])))
        else:
            keys.append((match["io"].split("_")[0], int(match["id"]), int(match["j"])))
    return keys


class _Store:
    """Outputs of one kind of attention layer, per layer and per cond entry (ComfyUI's cond uuid).

    ``raw`` holds what the batch computed (before the gate: both CFG branches, each its own entry);
    ``post`` holds what the steps after the gate read (one entry per conditional cond, batch B).
    """

    def __init__(self) -> None:
        self.raw: dict[tuple, dict[Any, tuple[int, Any]]] = {}
        self.post: dict[tuple, dict[Any, Any]] = {}

    def put(self, key: tuple, extra: dict, tensor: Any) -> None:
        chunks = tensor.chunk(len(extra["uuids"]))
        entries = self.raw.setdefault(key, {})
        for uuid, branch, chunk in zip(extra["uuids"], extra["cond_or_uncond"], chunks):
            entries[uuid] = (branch, chunk)

    def put_post(self, key: tuple, extra: dict, tensor: Any) -> None:
        entries = self._post(key)
        for uuid, chunk in zip(extra["uuids"], tensor.chunk(len(extra["uuids"]))):
            entries[uuid] = chunk

    def get(self, key: tuple, extra: dict, after_gate: bool) -> Any | None:
        if after_gate:
            entries = self._post(key)
            parts = [entries.get(uuid) for uuid in extra["uuids"]]
        else:
            raw = self.raw.get(key, {})
            parts = [raw[uuid][1] if uuid in raw else None for uuid in extra["uuids"]]
        if not parts or any(p is None for p in parts):
            return None
        if len(parts) == 1:
            return parts[0]
        import torch

        return torch.cat(parts)

    def _post(self, key: tuple) -> dict:
        """The steps after the gate read, per conditional cond: its output averaged with the
        unconditional one (TGATE's mean of the CFG halves); without CFG, its output as is."""
        entries = self.post.get(key)
        if entries is None:
            raw = self.raw.pop(key, {})
            unconds = [t for branch, t in raw.values() if branch == 1]
            entries = {}
            for uuid, (branch, t) in raw.items():
                if branch != 0:
                    continue
                same = [u for u in unconds if u.shape == t.shape]
                if len(same) == 1:
                    entries[uuid] = (t + same[0]) / 2
                elif same:
                    entries[uuid] = (t + sum(same) / len(same)) / 2
                else:
                    entries[uuid] = t
            self.post[key] = entries
        return entries

    def clear(self) -> None:
        self.raw.clear()
        self.post.clear()


# Model evaluations a step of ComfyUI's built-in samplers makes after reporting the step through its
# callback (the k-diffusion function a KSAMPLER runs). Not listed: one evaluation per step, or unknown
# (learned from the previous step). The last step makes none (sigma 0 next); heunpp2 looks 2 ahead.
EXTRA_EVALUATIONS = {
    "sample_heun": 1,
    "sample_exp_heun_2_x0": 1,
    "sample_exp_heun_2_x0_sde": 1,
    "sample_dpm_2": 1,
    "sample_dpm_2_ancestral": 1,
    "sample_dpmpp_2s_ancestral": 1,
    "sample_dpmpp_2s_ancestral_cfg_pp": 1,
    "sample_dpmpp_sde": 1,
    "sample_dpmpp_sde_gpu": 1,
    "sample_seeds_2": 1,
    "sample_seeds_3": 2,
    "sample_heunpp2": 2,
}
_LOOKAHEAD = {"sample_heunpp2"}  # its extra evaluations run at sigmas[i+1] and sigmas[i+2]


def sampler_name(sampler: Any) -> str | None:
    """The k-diffusion function a ComfyUI KSAMPLER runs (``sample_euler``...), or None."""
    return getattr(getattr(sampler, "sampler_function", None), "__name__", None)


def extra_evaluations(name: str | None, step: int, sigmas: list[float]) -> int | None:
    """Evaluations of ``step`` after its callback for sampler ``name``; None if unknown."""
    if name in EXTRA_EVALUATIONS:
        ahead = sum(1 for s in sigmas[step + 1 :] if s != 0)  # sigmas still to evaluate at
        if name in _LOOKAHEAD:
            return min(EXTRA_EVALUATIONS[name], ahead)
        return EXTRA_EVALUATIONS[name] if ahead else 0
    if name == "sample_sa_solver_pece":
        return 0 if step == 0 else 1  # from step 1 on it re-evaluates at the step's sigma after correcting
    if name in _SINGLE:
        return 0
    return None


# Built-in samplers with exactly one evaluation per step (measured like EXTRA_EVALUATIONS).
_SINGLE = {
    "sample_euler",
    "sample_euler_cfg_pp",
    "sample_euler_ancestral",
    "sample_euler_ancestral_cfg_pp",
    "sample_lms",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_cfg_pp",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2m_sde_gpu",
    "sample_dpmpp_2m_sde_heun",
    "sample_dpmpp_2m_sde_heun_gpu",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_3m_sde_gpu",
    "sample_ddpm",
    "sample_lcm",
    "sample_ipndm",
    "sample_ipndm_v",
    "sample_deis",
    "sample_res_multistep",
    "sample_res_multistep_cfg_pp",
    "sample_res_multistep_ancestral",
    "sample_res_multistep_ancestral_cfg_pp",
    "sample_gradient_estimation",
    "sample_gradient_estimation_cfg_pp",
    "sample_er_sde",
    "sample_sa_solver",
    "sample_unipc",
    "sample_unipc_bh2",
}


class _Steps:
    """The step of each model evaluation of one run: steps, not calls.

    Step ``i`` reports itself (the sampler's callback) right after its first evaluation; the next
    ``extra`` evaluations still belong to it, the one after that starts step ``i + 1``. ``extra`` is
    known for ComfyUI's samplers; for another sampler it is learned at each callback (which of the
    evaluations since the previous one got the reported latent: that one was the step's first) and
    taken from the previous step (0 until then). A sampler that never reports is followed by sigma.
    """

    def __init__(self, sampler: str | None, sigmas: list[float]) -> None:
        self.sampler = sampler
        self.sigmas = sigmas
        self.reported: int | None = None
        self.inputs: list[Any] = []  # latents evaluated since the last callback
        self.learned = 0
        self.by_sigma = False
        self.step = 0

    def evaluation(self, x: Any, sigma: float) -> int:
        if self.reported is None:
            position = schedule_position(sigma, self.sigmas[:-1])
            if position is not None and (self.by_sigma or position > self.step + 1):
                self.by_sigma = True  # no callbacks: the sigma's place in the schedule
                self.step = max(self.step, position)
        else:
            extra = extra_evaluations(self.sampler, self.reported, self.sigmas)
            if extra is None:
                extra = self.learned
            self.step = max(self.step, self.reported if len(self.inputs) < extra else self.reported + 1)
        self.inputs.append(x)
        return self.step

    def callback(self, i: int, x: Any) -> None:
        if self.reported is not None:
            for k, seen in enumerate(self.inputs):
                if seen is x:
                    self.learned = k  # evaluations of the previous step after its callback
                    break
        self.reported = int(i)
        self.by_sigma = False
        self.inputs = []
        self.step = max(self.step, int(i))


class _Run:
    """One sampling run: its gate, its current step, its caches and what it did (``report``)."""

    def __init__(
        self, settings: TGateSettings, sigmas: list[float], sampler: str | None, start: int, total: int
    ) -> None:
        self.settings = settings
        self.num_steps = len(sigmas) - 1
        self.start = start  # the run's step 0 is step `start` of the whole schedule
        self.schedule_gate = settings.gate(total)
        self.gate = max(0, self.schedule_gate - start)  # in the run's own steps
        # a model whose run starts after the gate measured nothing to replay: it computes
        self.replays = self.gate > 0
        self.steps = _Steps(sampler, sigmas)
        self.disabled: str | None = None
        self.first_call = True
        self.cross = _Store()
        self.self_attn = _Store()
        self.shrinkable: frozenset = frozenset()  # blocks whose attn2 may get 0-token tensors
        self.report: dict[str, Any] = {
            "steps": self.num_steps,
            "gate": self.gate,
            "schedule": {"start": start, "total": total, "gate": self.schedule_gate},
            "sampler": sampler,
            "engaged": True,
            "cfg": None,
            "evaluations": [],  # per model evaluation: [step, sigma]
            "batches": [],  # per conditioning batch: [step, conds run (2 = cond + uncond)]
            "cross_attention": {"computed": 0, "replayed": 0},
            "self_attention": {"computed": 0, "reused": 0},
        }

    @property
    def step(self) -> int:
        return self.steps.step

    @property
    def gated(self) -> bool:
        return self.disabled is None and self.step >= self.gate

    def close(self) -> dict[str, Any]:
        self.cross.clear()
        self.self_attn.clear()
        self.steps.inputs = []
        self.report["disabled"] = self.disabled
        return self.report


def _run_of(options: dict | None) -> _Run | None:
    run = options.get(KEY) if options else None
    if run is None or run.disabled is not None:
        return None
    return run


def _layer_key(extra: dict) -> tuple | None:
    block = extra.get("block")
    if block is None:
        return None
    return (block[0], block[1], extra.get("block_index", 0))


class TGateController:
    """The hooks one TGATE node installs on one MODEL, bound to its settings. Holds no tensors: a
    run's state lives in that run's transformer_options; ``last_report`` is the last run's summary."""

    def __init__(self, settings: TGateSettings, keys: list[tuple[str, int, int]]) -> None:
        self.settings = settings
        self.keys = frozenset(keys)
        self.last_report: dict[str, Any] | None = None

    # -- one sampling run ------------------------------------------------------------------------

    def sampler_sample(self, executor, guider, sigmas, extra_args, callback, *args, **kwargs):
        sigma_list = [float(s) for s in sigmas]
        num_steps = len(sigma_list) - 1
        start, total = self.settings.schedule(max(num_steps, 1))
        gate = self.settings.gate(total) - start  # in this run's steps
        reason = None
        if num_steps < 1 or gate >= num_steps:
            reason = "the gate is at or after the last step"
        elif extra_args.get("model_options", {}).get("context_handler") is not None:
            reason = "context windows (each window would need caches of its own)"
        if reason is not None:
            self.last_report = {
                "steps": num_steps,
                "gate": gate,
                "schedule": {"start": start, "total": total, "gate": gate + start},
                "engaged": False,
                "disabled": reason,
            }
            return executor(guider, sigmas, extra_args, callback, *args, **kwargs)
        run = _Run(
            self.settings, sigma_list, sampler_name(getattr(executor, "class_obj", None)), start, total
        )
        model_options = dict(extra_args.get("model_options", {}))
        transformer_options = dict(model_options.get("transformer_options", {}))
        run.shrinkable = self._shrinkable(transformer_options)
        transformer_options[KEY] = run
        model_options["transformer_options"] = transformer_options
        extra_args = {**extra_args, "model_options": model_options}

        def step_done(step, x0, x, total_steps):
            run.steps.callback(step, x)
            if callback is not None:
                return callback(step, x0, x, total_steps)
            return None

        try:
            return executor(guider, sigmas, extra_args, step_done, *args, **kwargs)
        finally:
            self.last_report = run.close()
            transformer_options.pop(KEY, None)
            log.info(
                "TGATE: gate %d of %d steps, CFG %s, cross-attention computed %d / replayed %d",
                run.gate,
                run.num_steps,
                run.report["cfg"],
                run.report["cross_attention"]["computed"],
                run.report["cross_attention"]["replayed"],
            )

    def _shrinkable(self, transformer_options: dict) -> frozenset:
        """Blocks whose attn2 can be handed 0-token tensors after the gate without another node
        seeing them: TGATE's patch is the last attn2 patch, its replace the block's, and its output
        patch the first."""
        patches = transformer_options.get("patches", {})
        before, after = patches.get("attn2_patch", []), patches.get("attn2_output_patch", [])
        if not before or getattr(before[-1], "__self__", None) is not self:
            return frozenset()
        if not after or getattr(after[0], "__self__", None) is not self:
            return frozenset()
        replace = transformer_options.get("patches_replace", {}).get("attn2", {})
        return frozenset(
            k for k in self.keys if hasattr(replace.get(k) or replace.get(k[:2]), "_crossgate_previous")
        )

    def predict_noise(self, executor, x, timestep, model_options, seed):
        run = _run_of(model_options.get("transformer_options"))
        if run is not None:
            sigma = float(timestep.reshape(-1)[0])
            run.report["evaluations"].append([run.steps.evaluation(x, sigma), sigma])
        return executor(x, timestep, model_options, seed)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options):
        run = _run_of(model_options.get("transformer_options"))
        if run is None:
            return executor(model, conds, x_in, timestep, model_options)
        if run.first_call:
            run.first_call = False
            if len(conds) != 2:
                # Not the [cond, uncond] pair of CFGGuider (e.g. a guider with three conds): no TGATE.
                run.disabled = f"a guider with {len(conds)} conds"
                run.report["engaged"] = False
                return executor(model, conds, x_in, timestep, model_options)
        if len(conds) == 2 and conds[0] is not None:
            if run.report["cfg"] is None:
                run.report["cfg"] = conds[1] is not None
            if run.gated and conds[1] is not None:
                run.report["batches"].append([run.step, 1])
                out = executor(model, [conds[0], None], x_in, timestep, model_options)
                return [out[0], out[0]]
        run.report["batches"].append([run.step, sum(c is not None for c in conds)])
        return executor(model, conds, x_in, timestep, model_options)

    # -- cross-attention (attn2) -----------------------------------------------------------------

    def _cross_decision(self, extra: dict, key: tuple | None = None) -> tuple[str, Any]:
        run = _run_of(extra)
        key = _layer_key(extra) if key is None else key
        if run is None or key not in self.keys or "uuids" not in extra:
            return "pass", None
        if run.gated and not run.replays:
            return "compute", None
        if run.gated:
            cached = run.cross.get(key, extra, after_gate=True)
            return ("replay", cached) if cached is not None else ("compute", None)
        return ("store" if run.step == run.gate - 1 else "compute"), None

    def attn2_patch(self, n, context, value, extra):
        if self._cross_decision(extra)[0] == "replay" and _layer_key(extra) in _run_of(extra).shrinkable:
            return n[:, :0], context[:, :0], (value if value is None else value[:, :0])
        return n, context, value

    def attn2_replace(self, key: tuple, previous):
        def replace(q, k, v, extra):
            if self._cross_decision(extra)[0] == "replay":
                # shrunk: nothing to compute; otherwise zeros of q's shape (the output patch
                # returns the cache) for any output patch another node put before TGATE's
                return q[:, :0] if q.shape[1] == 0 else q.new_zeros(q.shape)
            return _attention(previous, q, k, v, extra)

        replace._crossgate_previous = previous  # type: ignore[attr-defined]
        replace._crossgate_owner = self  # type: ignore[attr-defined]
        return replace

    def attn2_output_patch(self, n, extra):
        decision, cached = self._cross_decision(extra)
        if decision == "pass":
            return n
        run = extra[KEY]
        if decision == "replay":
            run.report["cross_attention"]["replayed"] += 1
            return cached
        run.report["cross_attention"]["computed"] += 1
        if decision == "store":
            run.cross.put(_layer_key(extra), extra, n)
        return n

    def wan_cross_attn(self, key: tuple, module: Any) -> Any:
        """A shallow copy of a Wan block's ``cross_attn`` (same parameters and submodules) whose
        ``forward`` keeps, replays or computes the module's output; installed as an object patch."""
        original = getattr(module, "_crossgate_original", module)
        twin = copy.copy(original)
        compute = type(original).forward

        def forward(x, context, *args, transformer_options=None, **kwargs):
            extra = transformer_options if transformer_options is not None else {}
            decision, cached = self._cross_decision(extra, key)
            if decision == "replay":
                extra[KEY].report["cross_attention"]["replayed"] += 1
                return cached
            out = compute(twin, x, context, *args, transformer_options=extra, **kwargs)
            if decision != "pass":
                extra[KEY].report["cross_attention"]["computed"] += 1
            if decision == "store":
                extra[KEY].cross.put(key, extra, out)
            return out

        twin.forward = forward
        twin._crossgate_original = original
        twin._crossgate_owner = self
        return twin

    # -- self-attention (attn1), TGATE v2 --------------------------------------------------------

    def _self_decision(self, extra: dict) -> tuple[str, Any]:
        run = _run_of(extra)
        key = _layer_key(extra)
        if run is None or key not in self.keys or "uuids" not in extra:
            return "pass", None
        action = self.settings.self_attention_action(run.start + run.step, run.schedule_gate)
        after_gate = run.gated
        if action == REUSE:
            cached = run.self_attn.get(key, extra, after_gate=after_gate)
            return ("reuse", cached) if cached is not None else ("compute", None)
        if action == STORE:
            return ("store_post" if after_gate else "store"), None
        assert action == COMPUTE
        return "compute", None

    def attn1_patch(self, n, context, value, extra):
        if self._self_decision(extra)[0] == "reuse":
            return (
                n[:, :0],
                (context if context is None else context[:, :0]),
                (value if value is None else value[:, :0]),
            )
        return n, context, value

    def attn1_replace(self, key: tuple, previous):
        def replace(q, k, v, extra):
            if self._self_decision(extra)[0] == "reuse":
                return q[:, :0]
            return _attention(previous, q, k, v, extra)

        replace._crossgate_previous = previous  # type: ignore[attr-defined]
        return replace

    def attn1_output_patch(self, n, extra):
        decision, cached = self._self_decision(extra)
        if decision == "pass":
            return n
        run = extra[KEY]
        if decision == "reuse":
            run.report["self_attention"]["reused"] += 1
            return cached
        run.report["self_attention"]["computed"] += 1
        if decision == "store":
            run.self_attn.put(_layer_key(extra), extra, n)
        elif decision == "store_post":
            run.self_attn.put_post(_layer_key(extra), extra, n)
        return n


def _attention(previous, q, k, v, extra):
    """The attention a block runs when TGATE lets it: the replace another node installed for this
    block, or what ComfyUI's CrossAttention.forward calls (optimized_attention, same arguments)."""
    if previous is not None:
        return previous(q, k, v, extra)
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(
        q, k, v, extra["n_heads"], attn_precision=extra["attn_precision"], transformer_options=extra
    )


def _ours(fn) -> bool:
    owner = getattr(fn, "__self__", None)
    return isinstance(owner, TGateController) or hasattr(fn, "_crossgate_previous")


def _remove_previous_tgate(model) -> None:
    """A second TGATE node on the same chain replaces the first (settings are not stacked)."""
    import comfy.patcher_extension as ext

    for kind in (ext.WrappersMP.SAMPLER_SAMPLE, ext.WrappersMP.PREDICT_NOISE, ext.WrappersMP.CALC_COND_BATCH):
        model.remove_wrappers_with_key(kind, KEY)
    to = model.model_options.setdefault("transformer_options", {})
    patches = dict(to.get("patches", {}))
    for name in ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch"):
        if name in patches:
            patches[name] = [p for p in patches[name] if not _ours(p)]
    to["patches"] = patches
    replace = {name: dict(d) for name, d in to.get("patches_replace", {}).items()}
    for name in ("attn1", "attn2"):
        for block, fn in list(replace.get(name, {}).items()):
            if hasattr(fn, "_crossgate_previous"):
                if fn._crossgate_previous is None:
                    del replace[name][block]
                else:
                    replace[name][block] = fn._crossgate_previous
    to["patches_replace"] = replace


def apply_tgate(model, settings: TGateSettings):
    """A clone of ``model`` (a ComfyUI ModelPatcher) with TGATE installed; ``model`` is untouched."""
    settings = settings.validated()
    patched = model.clone()
    _remove_previous_tgate(patched)
    diffusion_model = patched.get_model_object("diffusion_model")
    wan_keys = wan_block_keys(diffusion_model)
    if wan_keys:
        return _apply_wan(patched, settings, wan_keys)
    keys = transformer_block_keys(diffusion_model)
    if not keys:
        raise ValueError(
            "TGATE: this model has no transformer blocks with cross-attention that ComfyUI can patch "
            "(supported: SD 1.x, SD 2.x and SDXL UNets, Wan 2.1 / 2.2)"
        )
    controller = TGateController(settings, keys)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {})
    for key in keys:
        previous = existing.get("attn2", {}).get(key) or existing.get("attn2", {}).get(key[:2])
        patched.set_model_attn2_replace(controller.attn2_replace(key, previous), key[0], key[1], key[2])
    patched.set_model_attn2_patch(controller.attn2_patch)
    patched.set_model_attn2_output_patch(controller.attn2_output_patch)
    if settings.caches_self_attention:
        for key in keys:
            previous = existing.get("attn1", {}).get(key) or existing.get("attn1", {}).get(key[:2])
            patched.set_model_attn1_replace(controller.attn1_replace(key, previous), key[0], key[1], key[2])
        patched.set_model_attn1_patch(controller.attn1_patch)
        patched.set_model_attn1_output_patch(controller.attn1_output_patch)
    return _add_wrappers(patched, controller)


def _add_wrappers(patched, controller: TGateController):
    import comfy.patcher_extension as ext

    patched.add_wrapper_with_key(ext.WrappersMP.SAMPLER_SAMPLE, KEY, controller.sampler_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.PREDICT_NOISE, KEY, controller.predict_noise)
    patched.add_wrapper_with_key(ext.WrappersMP.CALC_COND_BATCH, KEY, controller.calc_cond_batch)
    return patched


def _apply_wan(patched, settings: TGateSettings, keys: list[tuple[str, int, int]]):
    """Wan: each block's ``cross_attn`` object-patched (a previous TGATE's twin is replaced, another
    node's object patch is kept inside the twin). Self-attention caching (v2) is not offered here."""
    if settings.caches_self_attention:
        raise ValueError(
            "TGATE: self_attention_interval (TGATE v2) is not supported for Wan models; set it to 0"
        )
    controller = TGateController(settings, keys)
    for key in keys:
        path = _wan_path(key)
        patched.add_object_patch(path, controller.wan_cross_attn(key, patched.get_model_object(path)))
    return _add_wrappers(patched, controller)


def controller_of(model) -> TGateController | None:
    """The TGATE controller installed on a patched MODEL (for reports and tests), or None."""
    import comfy.patcher_extension as ext

    for fn in model.get_wrappers(ext.WrappersMP.SAMPLER_SAMPLE, KEY):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, TGateController):
            return owner
    return None


# The node's inputs, once: the V1 class (INPUT_TYPES) and the V3 schema (tgate_v3.py) are built from
# this table. (name, type, options with tooltip, required)
INPUTS: tuple[tuple[str, str, dict, bool], ...] = (
    (
        "gate_mode",
        "COMBO",
        {
            "options": list(GATE_MODES),
            "default": "fraction",
            "tooltip": "fraction: gate_fraction of the steps; step: gate_step.",
        },
        True,
    ),
    (
        "gate_fraction",
        "FLOAT",
        {
            "default": 0.4,
            "min": 0.01,
            "max": 1.0,
            "step": 0.01,
            "tooltip": "Share of the sampling steps that still run cross-attention and CFG "
            "(rounded half up, at least 1). 1.0 never gates.",
        },
        True,
    ),
    (
        "gate_step",
        "INT",
        {
            "default": 10,
            "min": 1,
            "max": 10000,
            "tooltip": "Steps that still run cross-attention and CFG. At or past the last step: no change.",
        },
        True,
    ),
    (
        "self_attention_interval",
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 1000,
            "tooltip": "TGATE v2: before the gate, recompute self-attention every "
            "k-th step after the warm-up and reuse it in between. 0: off (TGATE v1).",
        },
        True,
    ),
    (
        "self_attention_interval_after",
        "INT",
        {
            "default": 1,
            "min": 1,
            "max": 1000,
            "tooltip": "TGATE v2: interval after the gate (1: always compute).",
        },
        False,
    ),
    (
        "self_attention_warm_up",
        "INT",
        {"default": 2, "min": 0, "max": 1000, "tooltip": "TGATE v2: steps that always compute first."},
        False,
    ),
    (
        "start_at_step",
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 10000,
            "tooltip": "Two models over one schedule (Wan 2.2 high/low noise, two KSamplerAdvanced): "
            "the start_at_step of the KSamplerAdvanced this model runs in. The gate is then a step of "
            "the whole schedule. 0: the run is the whole schedule.",
        },
        False,
    ),
    (
        "total_steps",
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 10000,
            "tooltip": "Two models over one schedule: the steps of that KSamplerAdvanced (the whole "
            "schedule). 0: start_at_step plus the steps this run samples.",
        },
        False,
    ),
)
DESCRIPTION = (
    "TGATE: after the gate, cross-attention is replayed from a cache (the mean of the conditional "
    "and unconditional outputs at the step before the gate) and the unconditional CFG branch is "
    "dropped, so the model runs at half the batch. No retraining. A gate at or after the last step "
    "changes nothing. SD 1.x/2.x, SDXL, Wan 2.1/2.2 (for Wan 2.2's two models in two "
    "KSamplerAdvanced, set start_at_step/total_steps on each). Place it after other attention-patch "
    "nodes (IPAdapter, ...) to skip all cross-attention work; placed before them it still works, but "
    "their attention keeps running."
)
DISPLAY_NAME = "TGATE (cache cross-attention, drop CFG after the gate)"


def patch_model(
    model,
    gate_mode="fraction",
    gate_fraction=0.4,
    gate_step=10,
    self_attention_interval=0,
    self_attention_interval_after=1,
    self_attention_warm_up=2,
    start_at_step=0,
    total_steps=0,
):
    """What the node does, whichever node API calls it: the widgets' values to a patched clone."""
    settings = TGateSettings(
        gate_mode=gate_mode,
        gate_step=int(gate_step),
        gate_fraction=float(gate_fraction),
        self_attention_interval=int(self_attention_interval) or None,
        self_attention_interval_after=int(self_attention_interval_after),
        self_attention_warm_up=int(self_attention_warm_up),
        start_at_step=int(start_at_step),
        total_steps=int(total_steps),
    )
    return apply_tgate(model, settings)


def _v1_input(kind: str, options: dict) -> tuple:
    if kind == "COMBO":
        rest = {k: v for k, v in options.items() if k != "options"}
        return (list(options["options"]), rest)
    return (kind, dict(options))


class TGate:
    """ComfyUI node (V1 API, for ComfyUI releases without ``comfy_api``): MODEL in, MODEL out."""

    DESCRIPTION = DESCRIPTION
    CATEGORY = "model_patches"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        required = {"model": ("MODEL",)}
        optional = {}
        for name, kind, options, is_required in INPUTS:
            (required if is_required else optional)[name] = _v1_input(kind, options)
        return {"required": required, "optional": optional}

    def patch(self, model, **widgets):
        return (patch_model(model, **widgets),)
