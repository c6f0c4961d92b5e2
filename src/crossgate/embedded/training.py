"""Training pieces for the embedded model: data, the VAE and diffusion steps, EMA.

Kept in the package (not only in the script) so the test suite can run a few real training steps.
The fixes for learning spatial relations (environment-notes.md) live here: the UNet trains on the VAE
posterior *mean* (no sampling noise floor), with v-prediction on a zero-terminal-SNR schedule and extra
samples at high-noise timesteps, where the layout is decided.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from crossgate.embedded.model import TOKEN_LENGTH
from crossgate.embedded.scenes import Composition, composition_caption, render, sample_scene


@dataclass
class SceneData:
    """Rendered scenes: images in [-1, 1] (N, 3, 32, 32) and the index of each caption in ``captions``."""

    images: torch.Tensor
    caption_index: torch.Tensor
    captions: list[str]  # captions[0] is the empty caption used for classifier-free guidance


def make_data(n: int, seed: int, compositions: Sequence[Composition]) -> SceneData:
    """Render ``n`` scenes drawn uniformly from ``compositions`` with a fixed seed."""
    rng = np.random.default_rng(seed)
    comps = list(compositions)
    captions = ["", *(composition_caption(c) for c in comps)]
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    index = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(len(comps)))
        images[i] = render(sample_scene(rng, comps[k]))
        index[i] = k + 1
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return SceneData(x.contiguous(), torch.from_numpy(index), captions)


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(captions), padding="max_length", max_length=TOKEN_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float = 1e-6) -> torch.Tensor:
    """Reconstruction from a posterior sample (so the decoder tolerates imprecise latents) + a small KL."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    return F.mse_loss(recon, x) + F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()


@torch.no_grad()
def encode_means(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Posterior means (unscaled) of all images: the diffusion model's training targets."""
    out = [vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(out)


def sample_timesteps(
    n: int, num_train: int, high_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Uniform timesteps, with ``high_fraction`` of them redrawn from the noisier half (layout steps)."""
    t = torch.randint(0, num_train, (n,), generator=generator)
    high = torch.randint(num_train // 2, num_train, (n,), generator=generator)
    use_high = torch.rand(n, generator=generator) < high_fraction
    return torch.where(use_high, high, t)


def diffusion_loss(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    generator: torch.Generator,
    high_fraction: float = 0.3,
) -> torch.Tensor:
    """One denoising loss on scaled latents, with the scheduler's own prediction type."""
    device = latents.device
    t = sample_timesteps(len(latents), scheduler.config.num_train_timesteps, high_fraction, generator)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    t = t.to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    encoded = text_encoder(input_ids.to(device))[0]
    pred = unet(noisy, t, encoded).sample
    return F.mse_loss(pred.float(), target.float())


def drop_captions(index: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a fraction ``p`` of caption indices with 0 (the empty caption), for CFG."""
    drop = torch.rand(len(index), generator=generator) < p
    return torch.where(drop, torch.zeros_like(index), index)


class EMA:
    """Exponential moving average of a module's parameters (with the usual warm-up of the decay)."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        ema = list(self.module.parameters())
        src = list(module.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in src], 1.0 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]
        self.decay = state["decay"]
