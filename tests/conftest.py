"""Shared fixtures: tiny random-weight pipelines (built offline, cached per session)."""

from __future__ import annotations

import copy
import os
import warnings

# Idle OpenMP threads sleep instead of spinning: on a shared or loaded machine two spinning torch
# threads starve each other (one family test measured 67 s spinning, 2.4 s passive). Set before
# torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from crossgate.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

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


def live_call_records() -> int:
    """How many per-call hook records (caches, counts) are still alive; 0 once every call has ended."""
    import gc

    from crossgate.hooks import CrossAttentionRecord, SelfAttentionRecord

    gc.collect()
    return sum(isinstance(o, (CrossAttentionRecord, SelfAttentionRecord)) for o in gc.get_objects())


def run(pipe, prompt="a red circle", steps=8, seed=0, **kwargs):
    """One call with a fixed seed, returning latents (exact comparisons need no VAE)."""
    kwargs.setdefault("output_type", "latent")
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=generator, **kwargs).images


class ProcessorCounter:
    """Wraps the attention processor of each given module: counts real attention computations."""

    def __init__(self, modules):
        self.calls: dict[str, int] = {}
        for name, module in modules:
            self.calls[name] = 0
            module.set_processor(self._wrap(name, module.processor))

    def _wrap(self, name, processor):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return processor(*args, **kwargs)

        return counted
