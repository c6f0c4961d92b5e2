"""crossgate composed with accelerate's model CPU offload, crossgate applied first.

accelerate re-installs its forward wrapper at the end of every call (`maybe_free_model_hooks`), so a
forward wrapper on the denoiser would be dropped after the first call; crossgate's denoiser hook is a
PyTorch module hook, which survives that. (The other order is a row of test_families.py.)
"""

from __future__ import annotations

import torch

import crossgate
from conftest import run


def test_crossgate_then_model_offload(sd_pipe, _sd_template):
    import copy

    reference = copy.deepcopy(_sd_template)
    crossgate.apply(reference, gate_step=3)
    expected = run(reference, steps=6)
    plain = run(copy.deepcopy(_sd_template), steps=6)

    crossgate.apply(sd_pipe, gate_step=3)
    sd_pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):  # the second call runs after accelerate re-installed its hooks
        assert torch.equal(run(sd_pipe, steps=6), expected)
        assert crossgate.last_call(sd_pipe).denoiser_batches == [2, 2, 2, 1, 1, 1]

    crossgate.remove(sd_pipe)
    assert hasattr(sd_pipe.unet, "_hf_hook"), "remove() must leave accelerate's offload hook in place"
    assert torch.equal(run(sd_pipe, steps=6), plain)
