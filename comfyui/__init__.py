"""crossgate's ComfyUI node pack: one node, "TGATE" (MODEL in, patched MODEL out).

Install: put this folder into ``ComfyUI/custom_nodes/`` (see README.md here). Only ComfyUI's own
hook points are used; nothing of ComfyUI is replaced.

On a ComfyUI with the V3 node API (``comfy_api.latest``) the pack exports ``comfy_entrypoint`` (the
V3 node, tgate_v3.py) and ``NODE_CLASS_MAPPINGS = None`` (ComfyUI reads the V1 mappings first when
they are set); on an older ComfyUI, the V1 class. Same node id, inputs and behaviour either way.
"""

from .tgate_node import DISPLAY_NAME, TGate

try:
    from .tgate_v3 import TGateNode, comfy_entrypoint
except ImportError:  # a ComfyUI without the V3 API
    NODE_CLASS_MAPPINGS = {"TGATE": TGate}
    NODE_DISPLAY_NAME_MAPPINGS = {"TGATE": DISPLAY_NAME}
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
else:
    NODE_CLASS_MAPPINGS = None
    NODE_DISPLAY_NAME_MAPPINGS = None
    __all__ = ["TGateNode", "comfy_entrypoint"]
