"""The TGATE node on ComfyUI's V3 node API (``comfy_api.latest``), for ComfyUI releases that have it.

Same node id ("TGATE"), inputs, tooltips and behaviour as the V1 class in tgate_node.py: both are
built from ``tgate_node.INPUTS`` and call ``tgate_node.patch_model``. Importing this module fails on
an older ComfyUI; the pack's ``__init__`` then exports the V1 class instead.
"""

from comfy_api.latest import ComfyExtension, io

from .tgate_node import DESCRIPTION, DISPLAY_NAME, INPUTS, patch_model

_TYPES = {"COMBO": io.Combo, "FLOAT": io.Float, "INT": io.Int}


def _v3_input(name: str, kind: str, options: dict, required: bool):
    return _TYPES[kind].Input(name, optional=not required, **options)


class TGateNode(io.ComfyNode):
    """MODEL in, MODEL out with TGATE (V3 schema)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TGATE",
            display_name=DISPLAY_NAME,
            description=DESCRIPTION,
            category="model_patches",
            inputs=[
                io.Model.Input("model", tooltip="The model to gate (SD 1.x, SD 2.x, SDXL, Wan 2.1 / 2.2)."),
                *(_v3_input(*spec) for spec in INPUTS),
            ],
            outputs=[io.Model.Output(tooltip="The model with TGATE.")],
        )

    @classmethod
    def execute(cls, model, **widgets) -> io.NodeOutput:
        return io.NodeOutput(patch_model(model, **widgets))


class TGateExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TGateNode]


def comfy_entrypoint() -> TGateExtension:
    return TGateExtension()
