"""Images for people, shared by the CLI and the app: tiny outputs enlarged pixel for pixel, and
captioned rows. PIL only, imported inside each function."""

from __future__ import annotations

import math
from typing import Any


def upscale_for_viewing(image: Any, min_side: int = 256):
    """Tiny images (the embedded model makes 32x32) are enlarged with nearest-neighbour for people."""
    from PIL import Image

    factor = max(1, math.ceil(min_side / min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def labelled_row(images: list[Any], labels: list[str]):
    """Images side by side, each with a caption strip underneath (several lines where a label has them)."""
    from PIL import Image, ImageDraw

    line_height = 12
    lines = max(label.count("\n") + 1 for label in labels) if labels else 1
    strip = 10 + line_height * lines
    width = sum(im.width for im in images)
    height = max(im.height for im in images) + strip
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels):
        canvas.paste(image.convert("RGB"), (x, 0))
        draw.multiline_text((x + 4, image.height + 5), label, fill="black", spacing=2)
        x += image.width
    return canvas
