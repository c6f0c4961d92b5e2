"""Side-by-side latency benchmark: plain vs crossgate vs the peers a user would pick instead.

Rooms: :mod:`.peers` (the configurations: crossgate's rows and the peer registry,
:func:`register_peer`), :mod:`.pipelines` (random-weight architectures to run on), :mod:`.runner`
(rotating timed rounds, MACs counted live, per-row results) and :mod:`.report` (markdown with
caveats, CSV, chart).
"""

from __future__ import annotations

from crossgate.tools.bench.peers import (
    PEER_REGISTRY,
    PEERS,
    BenchError,
    Peer,
    PeerRequest,
    Variant,
    build_variants,
    cfg_cutoff_variant,
    compiled_variants,
    crossgate_deepcache_variant,
    crossgate_v2_variant,
    crossgate_variant,
    deepcache_variant,
    official_tgate_variant,
    pab_variant,
    register_peer,
    tomesd_variant,
)
from crossgate.tools.bench.pipelines import (
    BENCH_MODELS,
    PROMPT,
    BenchSize,
    call_kwargs,
    default_size,
    random_pipeline,
)
from crossgate.tools.bench.report import markdown, write_chart, write_csv
from crossgate.tools.bench.runner import MIN_ROUNDS, BenchReport, Result, Timing, machine_load, run_bench

__all__ = [
    "BENCH_MODELS",
    "MIN_ROUNDS",
    "PEERS",
    "PEER_REGISTRY",
    "PROMPT",
    "BenchError",
    "BenchReport",
    "BenchSize",
    "Peer",
    "PeerRequest",
    "Result",
    "Timing",
    "Variant",
    "build_variants",
    "call_kwargs",
    "cfg_cutoff_variant",
    "compiled_variants",
    "crossgate_deepcache_variant",
    "crossgate_v2_variant",
    "crossgate_variant",
    "deepcache_variant",
    "default_size",
    "machine_load",
    "markdown",
    "official_tgate_variant",
    "pab_variant",
    "random_pipeline",
    "register_peer",
    "run_bench",
    "tomesd_variant",
    "write_chart",
    "write_csv",
]
