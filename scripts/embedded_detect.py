"""A simple analytic detector for progress checks while training the embedded model.

Not the official judge (that lives in crossgate.tools.quality): colour masks by nearest palette colour, shape by
how much of its bounding box a mask fills (square ~1, circle ~0.79, triangle ~0.5), position by the
bounding-box centre. Relations are judged strictly: displacement along the relation's axis > 3 px and
larger than the cross-axis displacement, always next to the flipped-relation control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from crossgate.embedded.scenes import (
    COLOURS,
    FLIP,
    SHAPES,
    Composition,
    SceneObject,
    composition_caption,
    draw_object,
)

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


@dataclass
class Blob:
    shape: str
    cx: float
    cy: float
    area: int


def _coverage(shape: str, cx: float, cy: float, size: float, hw: int) -> np.ndarray:
    """Antialiased coverage (0..1) of one shape, drawn like scenes.render (4x, box-downsampled)."""
    big = Image.new("L", (hw * 4, hw * 4), 0)
    draw_object(ImageDraw.Draw(big), SceneObject(shape, "red", cx, cy, size), 4.0 * hw / 32, fill=255)
    return np.asarray(big.resize((hw, hw), Image.Resampling.BOX), dtype=np.float32) / 255.0


def detect(img: np.ndarray, min_area: float = 8.0) -> dict[str, Blob]:
    """Colour name -> blob for each palette colour covering at least ``min_area`` pixels.

    Each pixel is unmixed as ``background + alpha * (colour - background)``; the shape is the template
    (circle, square, triangle of the same area and centroid) that best matches the alpha map.
    """
    px = img.reshape(-1, 3).astype(np.float32)
    d = np.linalg.norm(px[:, None, :] - _PALETTE[None], axis=2)
    nearest = d.argmin(1)
    far = d.min(1) > 120
    bg = np.median(px[far], axis=0) if far.any() else np.full(3, 240.0, dtype=np.float32)
    hw = img.shape[0]
    out: dict[str, Blob] = {}
    for k, name in enumerate(_NAMES):
        diff = _PALETTE[k] - bg
        alpha = np.clip((px - bg) @ diff / float(diff @ diff), 0.0, 1.0)
        resid = np.linalg.norm(px - (bg + alpha[:, None] * diff), axis=1)
        alpha = np.where((nearest == k) | (alpha > 0.5), alpha, 0.0) * (resid < 60)
        a = alpha.reshape(hw, hw)
        area = float(a.sum())
        if area < min_area or (a > 0.5).sum() < min_area / 2:
            continue
        ys, xs = np.mgrid[0:hw, 0:hw].astype(np.float32) + 0.5
        mx, my = float((a * xs).sum() / area), float((a * ys).sum() / area)
        best = None
        for shape in SHAPES:
            size = {
                "square": np.sqrt(area),
                "circle": np.sqrt(4 * area / np.pi),
                "triangle": np.sqrt(2 * area),
            }[shape]
            size *= 32.0 / hw
            cy = my * 32.0 / hw - (size / 6 if shape == "triangle" else 0.0)  # triangle centroid is low
            cx = mx * 32.0 / hw
            err = float(((_coverage(shape, cx, cy, size, hw) - a) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, shape, cx, cy)
        assert best is not None
        out[name] = Blob(best[1], best[2], best[3], round(area))
    return out


def relation_holds(a: Blob, b: Blob, relation: str, margin: float = 3.0) -> bool:
    """Strict rule: ``a`` is ``relation`` ``b`` by > margin px along the axis, more than across it."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    along, cross = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[
        relation
    ]
    return along > margin and along > abs(cross)


def judge(img: np.ndarray, comp: Composition) -> tuple[bool, bool, bool]:
    """(objects right, relation right, flipped relation right) for one image."""
    shape1, colour1, relation, shape2, colour2 = comp
    blobs = detect(img)
    a, b = blobs.get(colour1), blobs.get(colour2)
    objects = a is not None and b is not None and a.shape == shape1 and b.shape == shape2
    if a is None or b is None:
        return objects, False, False
    return objects, relation_holds(a, b, relation), relation_holds(a, b, FLIP[relation])


@torch.no_grad()
def evaluate(
    pipe,
    compositions: Sequence[Composition],
    seeds: Sequence[int],
    steps: int = 25,
    guidance_scale: float = 7.5,
    batch: int = 96,
) -> dict[str, float]:
    """Generate one image per (composition, seed) and return accuracies in percent."""
    jobs = [(c, s) for s in seeds for c in compositions]
    res = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        gens = [torch.Generator().manual_seed(int(s)) for _, s in chunk]
        images = pipe(
            [composition_caption(c) for c, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type="np",
        ).images
        for (c, _), im in zip(chunk, images):
            res.append(judge((np.clip(im, 0, 1) * 255).round().astype(np.uint8), c))
    arr = np.array(res, dtype=np.float64)
    return {
        "n": float(len(res)),
        "object_acc": 100 * arr[:, 0].mean(),
        "relation_acc": 100 * arr[:, 1].mean(),
        "flipped_acc": 100 * arr[:, 2].mean(),
    }
