"""`torch.compile` of the denoiser composed with crossgate: it runs, matches eager, and we count recompiles.

The backend is `aot_eager` (dynamo tracing + AOT autograd, no C++ codegen) so the test takes seconds on
CPU; inductor goes through the same dynamo graphs and guards, which is where hooks could break.
"""

from __future__ import annotations

import crossgate
from conftest import run


def test_compiled_unet_matches_eager_and_recompiles_a_bounded_number_of_times(sd_pipe):
    import torch._dynamo

    crossgate.apply(sd_pipe, gate_step=3)
    eager = run(sd_pipe, steps=6)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    sd_pipe.unet.compile(backend="aot_eager", dynamic=False)
    compiled = run(sd_pipe, steps=6)
    frames_first = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = run(sd_pipe, steps=6)
    frames_second = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert torch.equal(again, compiled)
    # Graphs are compiled in the first call only (before-gate batch 2B and after-gate batch B shapes);
    # a second call with the same settings reuses them all.
    assert frames_first > 0
    assert frames_second == frames_first
    assert set(crossgate.last_call(sd_pipe).cross_attention_computed_steps.values()) == {3}
    print(f"unique dynamo graphs compiled: {frames_first}")
