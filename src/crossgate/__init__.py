"""crossgate: TGATE for diffusers pipelines.

Cross-attention outputs converge in the first denoising steps; after the gate step ``m`` crossgate
replays them from a cache and drops the classifier-free-guidance branch, through module hooks on
the pipeline's own ``__call__``.

    import crossgate
    crossgate.apply(pipe, gate_step=0.4)
    image = pipe("a photo of a cat", num_inference_steps=25).images[0]
    print(crossgate.last_call(pipe))     # CallStats: the gate used, batches, per-layer counts
    crossgate.remove(pipe)

Names are imported lazily, so ``import crossgate`` (and ``crossgate --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossgate._version import __version__

if TYPE_CHECKING:
    from crossgate.adapters import UnsupportedPipelineError
    from crossgate.config import ConfigError, TGateConfig
    from crossgate.gate import CallStats
    from crossgate.integrations.deepcache import compose_deepcache
    from crossgate.pipeline import apply, check, enabled, get_session, is_applied, last_call, remove

_EXPORTS = {
    "CallStats": "crossgate.gate",
    "ConfigError": "crossgate.config",
    "TGateConfig": "crossgate.config",
    "UnsupportedPipelineError": "crossgate.adapters",
    "apply": "crossgate.pipeline",
    "check": "crossgate.pipeline",
    "compose_deepcache": "crossgate.integrations.deepcache",
    "enabled": "crossgate.pipeline",
    "get_session": "crossgate.pipeline",
    "is_applied": "crossgate.pipeline",
    "last_call": "crossgate.pipeline",
    "remove": "crossgate.pipeline",
}

__all__ = [
    "CallStats",
    "ConfigError",
    "TGateConfig",
    "UnsupportedPipelineError",
    "__version__",
    "apply",
    "check",
    "compose_deepcache",
    "enabled",
    "get_session",
    "is_applied",
    "last_call",
    "remove",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crossgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
