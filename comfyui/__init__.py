"""crossgate's ComfyUI node pack: one node, "TGATE" (MODEL in, patched MODEL out).

Install: put this folder into ``ComfyUI/custom_nodes/`` (see README.md here). Only ComfyUI's own
hook points are used; nothing of ComfyUI is replaced.
"""

from .tgate_node import TGate

NODE_CLASS_MAPPINGS = {"TGATE": TGate}
NODE_DISPLAY_NAME_MAPPINGS = {"TGATE": "TGATE (cache cross-attention, drop CFG after the gate)"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
