"""An independent TGATE: an explicit sampling loop that caches and replays cross-attention by hand.

It shares nothing with crossgate's engine (no hooks registry, no progress bar, not its module
finder): plain torch forward hooks replace each cross-attention output after the gate, and the loop
itself drops CFG. Tests compare ``crossgate.apply`` against it.

Cross-attention is what the loop sees attending to the text: an attention module (found by its key
projection ``to_k``) whose key input is the very text tensor this loop handed the UNet as
``encoder_hidden_states``; every other attention module is self-attention.
"""

from __future__ import annotations

import torch

from families import attention_key_projections


@torch.no_grad()
def reference_latents(
    pipe,
    prompts,
    *,
    steps,
    gate,
    guidance,
    seed,
    sdxl=False,
    height=32,
    width=32,
    sa_plan=None,
    keep_guidance=0.0,
    keep_decay=1.0,
):
    """``sa_plan``: optional per-step letters for self-attention, "C" compute, "S" store, "R" reuse.

    ``keep_guidance`` w (with ``keep_decay`` d): after the gate the single prediction p becomes
    p + w d^(step - gate) (guidance - 1/2) delta, delta = cond - uncond of the step before the gate.
    """
    device = torch.device("cpu")
    cfg = guidance > 1
    batch = len(prompts)
    if sdxl:
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=[""] * batch,
        )
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=pos.dtype)
    else:
        pos, neg = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[""] * batch)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (
        batch,
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    latents = torch.randn(shape, generator=generator, dtype=pos.dtype) * scheduler.init_noise_sigma

    cache: dict[str, torch.Tensor] = {}
    mode = {"record": False, "replay": False}
    delta = None
    current: dict = {"step": 0, "text": None}
    key_is_text: dict[str, bool] = {}

    def key_hook(name):
        def hook(module, args):
            key_is_text[name] = args[0] is current["text"]

        return hook

    def make_hook(name):
        def hook(module, inputs, output):
            if not key_is_text[name]:
                return sa_hook(name, output) if sa_plan is not None else output
            if mode["replay"]:
                return cache[name]
            if mode["record"]:
                cache[name] = (output[:batch] + output[batch:]) / 2 if cfg else output
            return output

        return hook

    sa_cache: dict[str, torch.Tensor] = {}

    def sa_hook(name, output):
        action = sa_plan[current["step"]]
        if action == "R":
            return sa_cache[name]
        if action == "S":
            at_gate = current["step"] == gate - 1
            sa_cache[name] = (output[:batch] + output[batch:]) / 2 if (cfg and at_gate) else output
        return output

    handles = []
    for name, to_k in attention_key_projections(pipe.unet).items():
        handles.append(to_k.register_forward_pre_hook(key_hook(name)))
        handles.append(pipe.unet.get_submodule(name).register_forward_hook(make_hook(name)))
    try:
        for i, t in enumerate(scheduler.timesteps):
            step = i // scheduler.order
            current["step"] = step
            mode["record"] = step == gate - 1
            mode["replay"] = step >= gate
            two_branches = cfg and step < gate
            model_in = torch.cat([latents, latents]) if two_branches else latents
            model_in = scheduler.scale_model_input(model_in, t)
            text = torch.cat([neg, pos]) if two_branches else (neg if cfg else pos)
            kwargs = {}
            if sdxl:
                pooled_in = (
                    torch.cat([neg_pooled, pooled]) if two_branches else (neg_pooled if cfg else pooled)
                )
                ids = torch.cat([time_ids, time_ids]) if two_branches else time_ids
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled_in, "time_ids": ids}
            current["text"] = text
            noise = pipe.unet(model_in, t, encoder_hidden_states=text, return_dict=False, **kwargs)[0]
            if two_branches:
                uncond, cond = noise.chunk(2)
                if step == gate - 1:
                    delta = cond - uncond
                noise = uncond + guidance * (cond - uncond)
            elif cfg and keep_guidance and delta is not None:
                noise = noise + keep_guidance * keep_decay ** (step - gate) * (guidance - 0.5) * delta
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    assert any(key_is_text.values()), "no attention module received the text: nothing was gated"
    return latents
