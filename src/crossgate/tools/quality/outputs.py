"""What every quality tool writes: JSON without inf/nan, matplotlib figures, image grids.

Shared by ``analyze`` (:mod:`.convergence`, :mod:`.null_text`) and ``eval`` (:mod:`.runner`,
:mod:`.report`), so none of them imports another for a helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """``value`` with every inf/nan float written as a string (JSON has neither), nested dicts/lists too."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError saying what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib, a crossgate dependency: pip install matplotlib") from error
    return plt


def image_grid(columns: Sequence[np.ndarray], labels: Sequence[str], scale: int = 4) -> Any:
    """A PIL grid: one column per image set (rows are prompts), labels on top, nearest upscaling."""
    from PIL import Image, ImageDraw

    rows = min(len(c) for c in columns)
    h, w = columns[0].shape[1:3]
    cell_w, cell_h, header = w * scale + 4, h * scale + 4, 16
    canvas = Image.new("RGB", (cell_w * len(columns), header + cell_h * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for ci, (images, label) in enumerate(zip(columns, labels)):
        draw.text((ci * cell_w + 2, 2), label, fill="black")
        for ri in range(rows):
            tile = Image.fromarray(images[ri]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (ci * cell_w + 2, header + ri * cell_h + 2))
    return canvas
