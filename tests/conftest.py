"""Shared fixtures: tiny random-weight pipelines (built offline, cached per session)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from crossgate.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

warnings.filterwarnings("ignore", category=FutureWarning)
# One thread: the tiny models gain nothing from two (measured: test_core + test_v2 52.9 s with one,
# 56.2 s with two on an idle machine), and a single thread never spins against another on a loaded
# one (two spinning OpenMP threads made one family test 67 s instead of 2.4 s).
torch.set_num_threads(1)


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
