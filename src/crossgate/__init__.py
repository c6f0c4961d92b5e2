"""crossgate: TGATE for diffusers pipelines.

Cross-attention outputs converge in the first denoising steps; after the gate step ``m`` crossgate
replays them from a cache and drops the classifier-free-guidance branch, through module hooks on
the pipeline's own ``__call__``.

    import crossgate
    crossgate.apply(pipe, crossgate.TGateConfig(gate_step=10))
    image = pipe("a photo of a cat", num_inference_steps=25).images[0]
    crossgate.remove(pipe)
"""

from crossgate.adapters import UnsupportedPipelineError
from crossgate.integrations.deepcache import compose_deepcache
from crossgate.config import ConfigError, TGateConfig
from crossgate.pipeline import apply, enabled, get_session, is_applied, remove

__all__ = [
    "ConfigError",
    "TGateConfig",
    "UnsupportedPipelineError",
    "apply",
    "compose_deepcache",
    "enabled",
    "get_session",
    "is_applied",
    "remove",
]
__version__ = "0.1.0"
