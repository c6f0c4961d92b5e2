"""A real ComfyUI, the embedded model inside it, and an independent TGATE to check the node against.

Test code: runs in the ComfyUI test venv (`make comfy-env`), never in the main one. Shared by
tests/comfyui/checks.py (what tests/test_comfyui.py runs) and scripts/comfy_bench.py.

* ``Comfy(...)``: imports ComfyUI on CPU (``args.cpu = True`` before ``comfy.model_management``), loads
  the node pack the way ComfyUI loads custom nodes (``nodes.load_custom_node`` on a copy of
  ``comfyui/`` in a temporary ``custom_nodes`` folder), and builds a ComfyUI SD1.5-style model from
  the embedded diffusers UNet (``comfy.utils.unet_to_diffusers`` with a config written for it).
  Conditioning comes from the embedded CLIP text model through transformers (ComfyUI's own loaders
  refuse the tiny CLIP and VAE).
* ``Probe``: counts what the UNet really does, per UNet call: the batch (forward pre-hook on the
  diffusion model), the tokens every cross-attention projection (to_q/to_k/to_v/to_out) receives
  (forward pre-hooks) and the attention computations (ComfyUI's own ``optimized_attention_override``).
* ``reference_sample``: TGATE written again by hand, sharing nothing with the node: a hand-written
  sampling loop (Euler, Heun, DPM-Solver++(2M)) around ``BaseModel.apply_model`` with explicit CFG
  batches, and torch forward hooks on every attn2.to_out (attn1.to_out for v2) that keep and replay
  the outputs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/comfyui/harness.py -> the repository
PACK = ROOT / "comfyui"
EMBEDDED = ROOT / "src" / "crossgate" / "embedded" / "crossgate-shapes-32"
DEFAULT_COMFY = ROOT / ".venv-comfy" / "ComfyUI"

# The embedded UNet (unet/config.json) in ComfyUI's UNetModel terms: 2 levels (64, 128 channels),
# 1 res block each, transformer depth 1 then 2 (mid 2), heads of 16 channels, text width 128.
UNET_CONFIG = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 2],
    "transformer_depth_output": [1, 1, 2, 2],
    "transformer_depth_middle": 2,
    "context_dim": 128,
    "num_heads": -1,
    "num_head_channels": 16,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "use_spatial_transformer": True,
    "legacy": False,
}


def load_schedule_reference():
    """crossgate's own v2 schedule (src/crossgate/schedule.py, pure), loaded without the package."""
    spec = importlib.util.spec_from_file_location(
        "crossgate_schedule_ref", ROOT / "src/crossgate/schedule.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SDXL_WIDTH = 32  # the tiny SDXL's text width (cross-attention context and pooled output)
# The tiny Wan 2.1 T2V (ComfyUI's WanModel): 2 blocks of width 32 (2 heads), text width 24, 16 text tokens.
WAN_CONFIG = {
    "image_model": "wan2.1",
    "model_type": "t2v",
    "dim": 32,
    "ffn_dim": 64,
    "freq_dim": 16,
    "text_dim": 24,
    "num_heads": 2,
    "num_layers": 2,
    "in_dim": 16,
    "out_dim": 16,
    "text_len": 16,
    "patch_size": (1, 2, 2),
    "eps": 1e-6,
    "qk_norm": True,
    "cross_attn_norm": True,
}
WAN_LATENT = (16, 2, 8, 8)  # channels, frames, height, width of one latent


def build_sd15_model(unet_file: Path | None = None):
    """A ComfyUI ModelPatcher (``supported_models.SD15``, ``model_base.BaseModel``, v-prediction, zero
    terminal SNR) over the embedded UNet's diffusers weights (or ``unet_file``, the same layout),
    mapped by ``comfy.utils.unet_to_diffusers``. ComfyUI's checkpoint loader detects SD1.5 only at
    full size; this is what it would build for this UNet config."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import safetensors.torch
    import torch

    path = unet_file or EMBEDDED / "unet" / "diffusion_pytorch_model.safetensors"
    diffusers_sd = safetensors.torch.load_file(str(path))
    config = dict(UNET_CONFIG, dtype=torch.float32)
    mapping = comfy.utils.unet_to_diffusers(config)
    missing = sorted(set(diffusers_sd) - set(mapping))
    if missing:
        raise RuntimeError(f"unet_to_diffusers does not map {missing[:3]} (+{len(missing) - 3})")
    comfy_sd = {mapping[k]: v for k, v in diffusers_sd.items()}
    model_config = comfy.supported_models.SD15(config)
    # rescale_betas_zero_snr (ComfyUI's default betas are the scheduler's scaled_linear 0.00085..0.012)
    model_config.sampling_settings = {"zsnr": True}
    model_config.unet_config.update({"num_heads": -1, "num_head_channels": 16})
    model_config.set_inference_dtype(torch.float32, None)
    # the embedded VAE's scaling_factor: sampled latents come out in that VAE's space
    model_config.latent_format.scale_factor = json.loads((EMBEDDED / "vae" / "config.json").read_text())[
        "scaling_factor"
    ]
    model = comfy.model_base.BaseModel(
        model_config, model_type=comfy.model_base.ModelType.V_PREDICTION, device=torch.device("cpu")
    )
    result = model.diffusion_model.load_state_dict(comfy_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


_TEXT: list = []  # the embedded CLIP tokenizer and text model, loaded once


def clip_conditioning(prompt: str):
    """ComfyUI CONDITIONING from the embedded CLIP text model (transformers; ComfyUI's own loaders
    refuse the tiny CLIP)."""
    import torch

    if not _TEXT:
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(EMBEDDED / "tokenizer"))
        _TEXT.extend([tokenizer, CLIPTextModel.from_pretrained(str(EMBEDDED / "text_encoder")).eval()])
    tokenizer, encoder = _TEXT
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        out = encoder(ids)
    return [[out.last_hidden_state.clone(), {"pooled_output": out.pooler_output.clone()}]]


class Comfy:
    def __init__(self, comfy_path: Path | None = None, threads: int = 1) -> None:
        comfy_path = Path(comfy_path or os.environ.get("CROSSGATE_COMFYUI") or DEFAULT_COMFY)
        if not (comfy_path / "comfy").is_dir():
            raise SystemExit(f"no ComfyUI at {comfy_path} (make comfy-env)")
        sys.path.insert(0, str(comfy_path))
        import torch

        torch.set_num_threads(threads)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        logging.getLogger().setLevel(logging.WARNING)
        import comfy.model_management
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import nodes

        comfy.utils.PROGRESS_BAR_ENABLED = False
        self.torch = torch
        self.nodes = nodes
        self.comfy = comfy
        self.comfy_path = comfy_path
        self.version = (comfy_path / "comfyui_version.py").read_text().split('"')[1]
        self._custom_nodes = Path(tempfile.mkdtemp(prefix="crossgate-custom-nodes-"))
        self.pack_dir = self._custom_nodes / "crossgate-tgate"
        shutil.copytree(PACK, self.pack_dir, ignore=shutil.ignore_patterns("__pycache__"))
        loaded = asyncio.run(nodes.load_custom_node(str(self.pack_dir)))
        if not loaded or "TGATE" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("ComfyUI did not load the node pack")
        self.TGate = nodes.NODE_CLASS_MAPPINGS["TGATE"]  # the V3 node where ComfyUI has that API
        pack = sys.modules[self.TGate.__module__].__name__.rsplit(".", 1)[0]
        self.node_module = sys.modules[f"{pack}.tgate_node"]  # the mechanism (either API calls it)

    def close(self) -> None:
        shutil.rmtree(self._custom_nodes, ignore_errors=True)

    # -- the model ---------------------------------------------------------------------------

    def build_model(self):
        """A fresh ComfyUI ModelPatcher over the embedded UNet (v-prediction, zero terminal SNR)."""
        return build_sd15_model()

    def build_sdxl_model(self):
        """A fresh ComfyUI ModelPatcher over a tiny SDXL (``supported_models.SDXL``, ``model_base.SDXL``:
        linear projections in the transformers, the ADM vector of pooled text and six size embeddings),
        random weights. ComfyUI detects SDXL only from a full-depth checkpoint, so it is built from
        the config as ComfyUI's loader would, at two levels and 32 channels."""
        import comfy.model_base
        import comfy.model_patcher
        import comfy.supported_models

        torch = self.torch
        unet = {
            "model_channels": 32,
            "use_linear_in_transformer": True,
            "transformer_depth": [0, 1],
            "transformer_depth_output": [0, 0, 1, 1],
            "transformer_depth_middle": 1,
            "context_dim": SDXL_WIDTH,
            "adm_in_channels": SDXL_WIDTH + 6 * 256,  # pooled text + height, width, crops, target size
            "use_temporal_attention": False,
            "in_channels": 4,
            "out_channels": 4,
            "num_res_blocks": [1, 1],
            "channel_mult": [1, 2],
            "num_head_channels": 16,
            "num_heads": -1,
            "image_size": 32,
            "use_spatial_transformer": True,
            "legacy": False,
            "num_classes": "sequential",
            "dtype": torch.float32,
        }
        config = comfy.supported_models.SDXL(unet)
        config.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.SDXL(config, device=torch.device("cpu"))
        _randomize(torch, model.diffusion_model, 0)
        model.eval()
        cpu = torch.device("cpu")
        return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    def build_wan_model(self, seed: int = 0):
        """A fresh ComfyUI ModelPatcher over a tiny Wan 2.1 T2V: ``supported_models.WAN21_T2V`` makes
        ``model_base.WAN21`` (its ``WanModel``, flow matching with shift 8) from ``WAN_CONFIG``, as
        ComfyUI's loader would from a detected checkpoint; random weights (``seed``)."""
        import comfy.model_patcher
        import comfy.supported_models

        torch = self.torch
        config = comfy.supported_models.WAN21_T2V(dict(WAN_CONFIG, dtype=torch.float32))
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model({}, device=torch.device("cpu"))
        _randomize(torch, model.diffusion_model, seed)
        model.eval()
        cpu = torch.device("cpu")
        return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    def wan_conditioning(self, prompt: str):
        """Wan-shaped CONDITIONING (text tokens of the tiny model's width), random but fixed per prompt."""
        generator = self.torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return [
            [self.torch.randn(1, WAN_CONFIG["text_len"], WAN_CONFIG["text_dim"], generator=generator), {}]
        ]

    def wan_blocks(self, model):
        """(key, WanAttentionBlock) of every block."""
        diffusion_model = model.get_model_object("diffusion_model")
        keys = self.node_module.wan_block_keys(diffusion_model)
        return list(zip(keys, diffusion_model.blocks))

    def sdxl_conditioning(self, prompt: str):
        """SDXL-shaped CONDITIONING (tokens and pooled output), random but fixed per prompt."""
        generator = self.torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        tokens = self.torch.randn(1, 77, SDXL_WIDTH, generator=generator)
        return [[tokens, {"pooled_output": self.torch.randn(1, SDXL_WIDTH, generator=generator)}]]

    def conditioning(self, prompt: str):
        """ComfyUI CONDITIONING from the embedded CLIP text model (as the diffusers pipeline encodes)."""
        return clip_conditioning(prompt)

    def tgate(self, model, **widgets):
        """The node exactly as a workflow calls it (V3: the ``execute`` classmethod; V1: ``patch``)."""
        if hasattr(self.TGate, "execute"):
            return self.TGate.execute(model, **widgets)[0]
        return self.TGate().patch(model, **widgets)[0]

    def sample(
        self,
        model,
        positive,
        negative,
        *,
        steps=10,
        cfg=7.5,
        sampler="euler",
        scheduler="simple",
        seed=0,
        batch=1,
        size=8,
        denoise=1.0,
    ):
        """nodes.common_ksampler (the KSampler node's code path); returns the latent tensor."""
        latent = {"samples": self.torch.zeros(batch, 4, size, size)}
        (out,) = self.nodes.common_ksampler(
            model, seed, steps, cfg, sampler, scheduler, positive, negative, latent, denoise=denoise
        )
        return out["samples"]

    def controller(self, model):
        return self.node_module.controller_of(model)

    def transformer_blocks(self, model):
        """(key, BasicTransformerBlock) of every transformer block, in module order."""
        diffusion_model = model.get_model_object("diffusion_model")
        keys = self.node_module.transformer_block_keys(diffusion_model)
        blocks = [
            m
            for name, m in diffusion_model.named_modules()
            if name.rsplit(".", 2)[-2:-1] == ["transformer_blocks"]
        ]
        assert len(blocks) == len(keys)
        return list(zip(keys, blocks))


def _randomize(torch, module, seed: int) -> None:
    """Random weights (comfy.ops leaves them uninitialised): fan-in scaled matrices, small vectors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            scale = fan_in**-0.5 if param.ndim > 1 else 0.02
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


class Probe:
    """Per UNet call: batch, sigma, tokens each attn2 projection got, attention computations.
    ``wan=True``: the projections of each Wan block's cross_attn (q, k, v, o) instead of attn2's."""

    def __init__(self, comfy_env: Comfy, model, wan: bool = False) -> None:
        self.env = comfy_env
        self.calls: list[dict] = []
        self.handles = []
        self.model = model.clone()
        diffusion_model = self.model.get_model_object("diffusion_model")
        self.handles.append(diffusion_model.register_forward_pre_hook(self._unet, with_kwargs=True))
        if wan:
            projections = [
                proj
                for _, block in comfy_env.wan_blocks(self.model)
                for proj in (block.cross_attn.q, block.cross_attn.k, block.cross_attn.v, block.cross_attn.o)
            ]
        else:
            projections = [
                proj
                for _, block in comfy_env.transformer_blocks(self.model)
                for proj in (block.attn2.to_q, block.attn2.to_k, block.attn2.to_v, block.attn2.to_out[0])
            ]
        for proj in projections:
            self.handles.append(proj.register_forward_pre_hook(self._proj))
        to = self.model.model_options.setdefault("transformer_options", {})
        to["optimized_attention_override"] = self._attention

    def _unet(self, module, args, kwargs):
        x = args[0]
        timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
        to = kwargs.get("transformer_options", {})
        self.calls.append(
            {
                "batch": int(x.shape[0]),
                "t": float(timesteps.reshape(-1)[0]),
                "sigma": float(to["sigmas"].reshape(-1)[0]) if "sigmas" in to else None,
                "attn2_tokens": 0,
                "attn2_projections": 0,
                "attention": 0,
            }
        )

    def _proj(self, module, args):
        call = self.calls[-1]
        call["attn2_projections"] += 1
        call["attn2_tokens"] += int(args[0].shape[1])

    def _attention(self, func, *args, **kwargs):
        self.calls[-1]["attention"] += 1
        return func(*args, **kwargs)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def expected_steps(sampler: str, sigmas: list[float]) -> list[int]:
    """The step of each model evaluation, worked out from the sampler's algorithm (not its callback)."""
    steps = []
    for i in range(len(sigmas) - 1):
        steps.append(i)
        if sampler == "heun" and sigmas[i + 1] != 0:
            steps.append(i)
    return steps


def run_sigmas(comfy_env: Comfy, model, steps: int, scheduler: str = "simple"):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


class _ReferenceCache:
    """Forward hooks on to_out of each attention layer: record, store, replay (the TGATE reference)."""

    def __init__(self, modules):
        self.mode = "compute"  # "compute" | "store" | "replay", for the next UNet call
        self.stored: dict[int, object] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in modules]
        self.computed = 0
        self.replayed = 0

    def set(self, mode: str) -> None:
        self.mode = mode

    def halve(self) -> None:
        """At the gate: the kept [uncond; cond] outputs become their mean (batch B)."""
        for key, t in list(self.stored.items()):
            u, c = t.chunk(2)
            self.stored[key] = (u + c) / 2

    def _hook(self, module, inputs, output):
        mode = self.mode
        if mode == "replay":
            self.replayed += 1
            return self.stored[id(module)]
        self.computed += 1
        if mode == "store":
            self.stored[id(module)] = output
        return output

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def reference_sample(
    comfy_env: Comfy,
    model,
    positive,
    negative,
    *,
    steps=10,
    cfg=7.5,
    sampler="euler",
    scheduler="simple",
    seed=0,
    batch=1,
    size=8,
    gate=None,
    v2=None,
    transformer_options=None,
):
    """TGATE by hand. ``gate=None``: plain CFG sampling. ``v2``: (interval, interval_after, warm_up).

    The loop mirrors k-diffusion's Euler / Heun / DPM-Solver++(2M) (s_churn 0), the model call
    mirrors ComfyUI's CFG (batch [uncond; cond], ``u + cfg (c - u)``); after the gate the denoiser
    runs on the conditional half only and its prediction is used unguided.
    """
    import comfy.model_management
    import comfy.sample

    torch = comfy_env.torch
    comfy.model_management.load_models_gpu([model])  # weights as ComfyUI patches them (LoRA)
    base = model.model
    ms = base.model_sampling
    sigmas = run_sigmas(comfy_env, model, steps, scheduler)
    n = len(sigmas) - 1
    m = n if gate is None else gate
    use_cfg = abs(cfg - 1.0) > 1e-9
    schedule = load_schedule_reference()

    blocks = [b for _, b in comfy_env.transformer_blocks(model)]
    cross = _ReferenceCache([b.attn2.to_out for b in blocks])
    selfc = _ReferenceCache([b.attn1.to_out for b in blocks]) if v2 is not None else None
    cond_ctx = positive[0][0].expand(batch, -1, -1)
    uncond_ctx = negative[0][0].expand(batch, -1, -1)
    # SDXL's ADM vector (pooled text and size embeddings) as ComfyUI's encode_model_conds builds it:
    # the size defaults to the latent's times 8
    pixels = {"width": size * 8, "height": size * 8}
    cond_y = base.encode_adm(**{**pixels, **positive[0][1]})
    uncond_y = base.encode_adm(**{**pixels, **negative[0][1]})
    extra = {} if cond_y is None else {"y": cond_y.expand(batch, -1)}
    options = dict(transformer_options or {})
    gated_once = [False, False]

    def self_mode(step):
        action = schedule.self_attention_action(step, m, v2[0], v2[1], v2[2])
        name = action.value
        if name == "reuse":
            return "replay"
        return name  # compute | store

    def denoise(x, sigma, step):
        after = step >= m
        if after and not gated_once[0]:
            gated_once[0] = True
            if use_cfg:
                cross.halve()
        cross.set("replay" if after else ("store" if step == m - 1 else "compute"))
        if selfc is not None:
            mode = self_mode(step)
            if after and not gated_once[1]:
                gated_once[1] = True
                if use_cfg:
                    selfc.halve()
            selfc.set(mode)
        s = sigma * torch.ones(x.shape[0])
        if use_cfg and not after:
            x_in = torch.cat([x, x])
            ctx = torch.cat([uncond_ctx, cond_ctx])
            both = {} if cond_y is None else {"y": torch.cat([uncond_y.expand(batch, -1), extra["y"]])}
            out = base.apply_model(
                x_in, torch.cat([s, s]), c_crossattn=ctx, transformer_options=dict(options), **both
            )
            u, c = out.chunk(2)
            return u + (c - u) * cfg
        return base.apply_model(x, s, c_crossattn=cond_ctx, transformer_options=dict(options), **extra)

    latent = torch.zeros(batch, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    max_denoise = True
    x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
    try:
        with torch.no_grad():
            x = _solve(sampler, denoise, x, sigmas)
    finally:
        cross.remove()
        if selfc is not None:
            selfc.remove()
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    out = base.process_latent_out(x.to(torch.float32))
    counts = {"cross_computed": cross.computed, "cross_replayed": cross.replayed}
    if selfc is not None:
        counts.update(self_computed=selfc.computed, self_replayed=selfc.replayed)
    return out, counts


def _solve(sampler, denoise, x, sigmas):
    n = len(sigmas) - 1
    if sampler == "euler":
        for i in range(n):
            den = denoise(x, sigmas[i], i)
            d = (x - den) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x
    if sampler == "heun":
        for i in range(n):
            den = denoise(x, sigmas[i], i)
            d = (x - den) / sigmas[i]
            dt = sigmas[i + 1] - sigmas[i]
            if sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x2 = x + d * dt
                den2 = denoise(x2, sigmas[i + 1], i)  # the same step: Heun's second evaluation
                d2 = (x2 - den2) / sigmas[i + 1]
                x = x + (d + d2) / 2 * dt
        return x
    if sampler == "dpmpp_2m":
        old = None
        for i in range(n):
            den = denoise(x, sigmas[i], i)
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            ratio = (-t_next).exp() / (-t).exp()
            if old is None or sigmas[i + 1] == 0:
                x = ratio * x - (-h).expm1() * den
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                den_d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
                x = ratio * x - (-h).expm1() * den_d
            old = den
        return x
    raise ValueError(sampler)


def reference_sample_wan(
    comfy_env: Comfy,
    experts,
    positive,
    negative,
    *,
    steps=6,
    cfg=5.0,
    sampler="euler",
    scheduler="simple",
    seed=0,
    gate=None,
):
    """TGATE by hand on Wan, over one schedule split between models: ``experts`` is a list of
    ``(model, start, end)`` (steps ``start .. end-1`` of the ``steps``-step schedule each), run as
    ComfyUI's KSamplerAdvanced chain runs them (noise added by the first, the latent handed on through
    ``process_latent_out`` / ``process_latent_in``). ``gate=None``: plain CFG.

    Forward hooks on each block's ``cross_attn`` keep its output at step ``gate - 1`` and replay the
    mean of the CFG halves after it; a model whose first step is at or after the gate has nothing kept
    and computes (the diffusers engine's rule for experts). After the gate only the conditional batch runs.
    """
    import comfy.model_management
    import comfy.sample

    torch = comfy_env.torch
    m = steps if gate is None else gate
    use_cfg = abs(cfg - 1.0) > 1e-9
    cond_ctx, uncond_ctx = positive[0][0], negative[0][0]
    out = torch.zeros(1, *WAN_LATENT)
    counts = {"cross_computed": 0, "cross_replayed": 0}
    for index, (model, start, end) in enumerate(experts):
        comfy.model_management.load_models_gpu([model])
        base = model.model
        ms = base.model_sampling
        full = run_sigmas(comfy_env, model, steps, scheduler)
        sigmas = full[start : end + 1]
        cross = _ReferenceCache([b.cross_attn for _, b in comfy_env.wan_blocks(model)])
        halved = [False]

        def denoise(x, sigma, step, base=base, cross=cross, halved=halved, start=start):
            g = start + step  # the step in the whole schedule
            after = g >= m
            if after and start < m and not halved[0]:
                halved[0] = True
                if use_cfg:
                    cross.halve()
            if after:
                cross.set("replay" if start < m else "compute")
            else:
                cross.set("store" if g == m - 1 else "compute")
            s = sigma * torch.ones(x.shape[0])
            if use_cfg and not after:
                both = base.apply_model(
                    torch.cat([x, x]), torch.cat([s, s]), c_crossattn=torch.cat([uncond_ctx, cond_ctx])
                )
                u, c = both.chunk(2)
                return u + (c - u) * cfg
            return base.apply_model(x, s, c_crossattn=cond_ctx)

        latent = out
        if torch.count_nonzero(latent) > 0:
            latent = base.process_latent_in(latent)
        noise = comfy.sample.prepare_noise(latent, seed) if index == 0 else torch.zeros_like(latent)
        x = ms.noise_scaling(sigmas[0], noise, latent, True)
        try:
            with torch.no_grad():
                x = _solve(sampler, denoise, x, sigmas)
        finally:
            cross.remove()
        counts["cross_computed"] += cross.computed
        counts["cross_replayed"] += cross.replayed
        out = base.process_latent_out(ms.inverse_noise_scaling(sigmas[-1], x).to(torch.float32))
    return out, counts
