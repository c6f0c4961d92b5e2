"""Test-only ComfyUI nodes for the server test (tests/comfyui/server.py): never part of the pack.

ComfyUI's CheckpointLoaderSimple detects SD1.5 only from a full-size checkpoint, and its CLIP and VAE
loaders refuse the project's tiny embedded model. ``CrossgateTinyCheckpointLoader`` takes its place in
the example workflow (same outputs: MODEL, CLIP, VAE) and loads the tiny UNet from the server's
``models/checkpoints`` folder:

* MODEL: the UNet weights of ``ckpt_name`` (diffusers layout) as ComfyUI's SD15 model
  (``harness.build_sd15_model``);
* CLIP: the embedded CLIP text model through transformers (``harness.clip_conditioning``);
* VAE: a stand-in decoder (the embedded VAE uses 16 normalization groups, ComfyUI's VAE code 32): the
  first three latent channels squashed to [0, 1] and upscaled 8x. The test checks that the workflow
  runs and saves an image through the server, not what the image looks like.

The test sets ``CROSSGATE_HARNESS`` to tests/comfyui so that this copy can import the harness.
"""

from __future__ import annotations

import os
import sys

import folder_paths
import torch

sys.path.insert(0, os.environ["CROSSGATE_HARNESS"])
import harness


class TinyClip:
    """What CLIPTextEncode calls on a CLIP: ``tokenize`` and ``encode_from_tokens_scheduled``."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str):
        return harness.clip_conditioning(tokens)


class StandInVAE:
    """What VAEDecode calls on a VAE: ``decode`` (latents B x 4 x h x w to images B x 8h x 8w x 3)."""

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rgb = torch.sigmoid(latent[:, :3].float())
        return rgb.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).movedim(1, -1)


class CrossgateTinyCheckpointLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def load(self, ckpt_name: str):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        return (harness.build_sd15_model(path), TinyClip(), StandInVAE())


NODE_CLASS_MAPPINGS = {"CrossgateTinyCheckpointLoader": CrossgateTinyCheckpointLoader}
