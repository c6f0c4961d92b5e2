"""Shared fixtures: tiny random-weight pipelines (built offline, cached per session)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from crossgate.random_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline

warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def _sd_template():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def _sdxl_template():
    return tiny_sdxl_pipeline(seed=0)


@pytest.fixture
def sd_pipe(_sd_template):
    """A fresh tiny SD-1.x pipeline (deep copy, so a test's hooks never reach another test)."""
    return copy.deepcopy(_sd_template)


@pytest.fixture
def sdxl_pipe(_sdxl_template):
    return copy.deepcopy(_sdxl_template)


def run(pipe, prompt="a red circle", steps=8, seed=0, **kwargs):
    """One call with a fixed seed, returning latents (exact comparisons need no VAE)."""
    kwargs.setdefault("output_type", "latent")
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=generator, **kwargs).images
