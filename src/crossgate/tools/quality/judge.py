"""An analytic judge: read a 32x32 scene image back into objects and decide whether its caption holds.

No learned weights, so the judge can never share a blind spot with the model it scores:

1. Background: the median colour of the image border (scenes have a light, flat background).
2. Colour coverage: every pixel is explained as ``background + alpha * (palette colour - background)``
   for the palette colour with the smallest residual; ``alpha`` in [0, 1] is the fraction of the pixel
   the object covers (the renderer antialiases edges, a generator blurs them). Pixels that no palette
   colour explains within ``residual_tol`` count as background.
3. Objects: per colour, the largest 4-connected blob of ``alpha > 0.5`` pixels (grown by one pixel to
   keep its antialiased rim) is that colour's object, when its covered area is at least ``min_area``.
4. Shape from two scale-free coverage moments, nearest of the continuous shapes' values:
   ``E[dx^2 dy^2] / E[dx^2 + dy^2]^2`` (circle 1/6, triangle 0.196, square 1/4: corners weigh the
   diagonals) and the vertical skewness ``E[dy^3] / E[dx^2 + dy^2]^1.5`` (triangle -0.244 -- apex up,
   mass low -- circle and square 0).
5. Position: the coverage centroid, moved to the bounding-box centre for a triangle (its centroid
   lies ``size / 6`` below it), so positions match the scene generator's ``cx, cy``.

Relations are judged strictly: the displacement along the relation's axis must exceed ``margin``
pixels (3 by default) in the relation's direction AND exceed the cross-axis displacement, so diagonal
or overlapping layouts never pass by luck. Every relation score comes with a control: the same image
judged against the flipped relation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossgate.embedded.scenes import AXIS, COLOURS, FLIP, Composition, parse_caption

# Continuous-shape values of the two moment features (triangle: apex up, base = height).
SHAPE_PROTOTYPES: dict[str, tuple[float, float]] = {
    "circle": (1 / 6, 0.0),
    "square": (1 / 4, 0.0),
    "triangle": (0.1959, -0.2444),
}
# Feature scales for the nearest-prototype distance (about half the gap between neighbouring classes).
_SHAPE_SCALE = np.array([0.015, 0.06])


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image; positions in pixels of the image (x right, y down)."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: float
    cross_moment: float
    skewness: float


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one image against one caption."""

    objects_ok: bool  # both objects found with the captioned colour AND shape
    located: bool  # both captioned colours found (their positions can be compared)
    relation_ok: bool  # located and the captioned relation holds strictly
    flipped_ok: bool  # located and the flipped relation holds strictly (the control)
    first: DetectedObject | None
    second: DetectedObject | None

    @property
    def caption_ok(self) -> bool:
        return self.objects_ok and self.relation_ok


@dataclass(frozen=True)
class Accuracy:
    """Fractions over ``n`` images."""

    n: int
    object_accuracy: float
    relation_accuracy: float
    relation_flipped_accuracy: float
    caption_accuracy: float
    located: float

    @property
    def relation_margin(self) -> float:
        """Relation accuracy minus its flipped control (0 for a model that ignores the relation)."""
        return self.relation_accuracy - self.relation_flipped_accuracy


def relation_holds(first: DetectedObject, second: DetectedObject, relation: str, margin: float = 3.0) -> bool:
    """Strict test of "``first`` <relation> ``second``" (y grows downwards, so "above" is smaller y)."""
    if relation not in AXIS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(AXIS)}")
    dx, dy = second.cx - first.cx, second.cy - first.cy
    along, across = (dx, dy) if AXIS[relation] == "x" else (dy, dx)
    if relation in ("right of", "below"):
        along = -along
    return along > margin and along > abs(across)


class Judge:
    """Detects the palette's coloured shapes in scene images and checks captions against them."""

    def __init__(
        self,
        colours: dict[str, tuple[int, int, int]] | None = None,
        min_area: float = 10.0,
        residual_tol: float = 60.0,
        margin: float = 3.0,
    ) -> None:
        self.colours = dict(COLOURS if colours is None else colours)
        self.names = list(self.colours)
        self.palette = np.array([self.colours[n] for n in self.names], dtype=np.float64)
        self.min_area = min_area
        self.residual_tol = residual_tol
        self.margin = margin

    # -- reading images -------------------------------------------------------------------------
    def coverage(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(H, W, K)`` per-colour coverage in [0, 1] and the estimated background colour."""
        img = _check_image(image).astype(np.float64)
        h, w, _ = img.shape
        border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
        background = np.median(border, axis=0)
        direction = self.palette - background  # (K, 3)
        pixels = img.reshape(-1, 3) - background
        norms = np.maximum((direction**2).sum(axis=1), 1e-6)
        alpha = np.clip(pixels @ direction.T / norms, 0.0, 1.0)  # (N, K)
        residual = np.linalg.norm(pixels[:, None, :] - alpha[:, :, None] * direction[None], axis=2)
        best = residual.argmin(axis=1)
        rows = np.arange(len(pixels))
        keep = residual[rows, best] < self.residual_tol
        cover = np.zeros_like(alpha)
        cover[rows[keep], best[keep]] = alpha[rows[keep], best[keep]]
        return cover.reshape(h, w, -1), background

    def detect(self, image: np.ndarray) -> dict[str, DetectedObject]:
        """The largest object of each palette colour present in ``image``."""
        cover, _ = self.coverage(image)
        found: dict[str, DetectedObject] = {}
        for k, name in enumerate(self.names):
            obj = self._object(cover[:, :, k], name)
            if obj is not None:
                found[name] = obj
        return found

    def _object(self, alpha: np.ndarray, colour: str) -> DetectedObject | None:
        mask = alpha > 0.5
        if not mask.any():
            return None
        labels = _label(mask)
        sizes = np.bincount(labels[mask])
        blob = labels == int(sizes.argmax())
        grown = _dilate(blob) & (alpha > 0)
        a = np.where(grown, alpha, 0.0)
        area = float(a.sum())
        if area < self.min_area:
            return None
        ys, xs = np.mgrid[: a.shape[0], : a.shape[1]] + 0.5
        cx, cy = float((a * xs).sum() / area), float((a * ys).sum() / area)
        dx, dy = xs - cx, ys - cy
        spread = float((a * (dx**2 + dy**2)).sum() / area)
        if spread <= 0:
            return None
        cross = float((a * dx**2 * dy**2).sum() / area / spread**2)
        skew = float((a * dy**3).sum() / area / spread**1.5)
        shape = classify_shape(cross, skew)
        if shape == "triangle":  # centroid -> bounding-box centre (area = size^2 / 2)
            cy -= float(np.sqrt(2 * area)) / 6
        return DetectedObject(colour, shape, cx, cy, area, cross, skew)

    # -- judging captions -----------------------------------------------------------------------
    @staticmethod
    def parse(caption: str) -> Composition:
        """A template caption as a composition (ValueError for anything else)."""
        return parse_caption(caption)

    def judge(self, image: np.ndarray, caption: str | Composition) -> Verdict:
        """Does ``caption`` hold for ``image``? Objects, strict relation and the flipped control."""
        comp = parse_caption(caption) if isinstance(caption, str) else caption
        shape1, colour1, relation, shape2, colour2 = comp
        found = self.detect(image)
        first, second = found.get(colour1), found.get(colour2)
        located = first is not None and second is not None
        objects_ok = located and first.shape == shape1 and second.shape == shape2
        relation_ok = located and relation_holds(first, second, relation, self.margin)
        flipped_ok = located and relation_holds(first, second, FLIP[relation], self.margin)
        return Verdict(bool(objects_ok), located, bool(relation_ok), bool(flipped_ok), first, second)

    def features(self, image: np.ndarray) -> np.ndarray:
        """A fixed-length description of an image in the judge's terms (for Frechet distances).

        Per palette colour: present, area / 100, centre x and y / 32, the two shape moments (zeros
        when absent); then the background colour / 255 and the covered fraction of the image.
        """
        cover, background = self.coverage(image)
        found = self.detect(image)
        h, w = cover.shape[:2]
        parts: list[float] = []
        for name in self.names:
            obj = found.get(name)
            if obj is None:
                parts.extend([0.0] * 6)
            else:
                parts.extend([1.0, obj.area / 100, obj.cx / w, obj.cy / h, obj.cross_moment, obj.skewness])
        parts.extend((background / 255).tolist())
        parts.append(float(cover.sum() / (h * w)))
        return np.array(parts)


def classify_shape(cross_moment: float, skewness: float) -> str:
    """Nearest continuous-shape prototype in the (cross moment, skewness) plane."""
    point = np.array([cross_moment, skewness])
    distances = {
        shape: float((((point - np.array(proto)) / _SHAPE_SCALE) ** 2).sum())
        for shape, proto in SHAPE_PROTOTYPES.items()
    }
    return min(distances, key=distances.__getitem__)


def score_images(judge: Judge, images: np.ndarray, captions: Sequence[str | Composition]) -> Accuracy:
    """Object, strict relation (with flipped control) and whole-caption accuracy over a batch."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise ValueError("no images to score")
    verdicts = [judge.judge(image, caption) for image, caption in zip(images, captions)]
    n = len(verdicts)

    def frac(values: list[bool]) -> float:
        return sum(values) / n

    return Accuracy(
        n=n,
        object_accuracy=frac([v.objects_ok for v in verdicts]),
        relation_accuracy=frac([v.relation_ok for v in verdicts]),
        relation_flipped_accuracy=frac([v.flipped_ok for v in verdicts]),
        caption_accuracy=frac([v.caption_ok for v in verdicts]),
        located=frac([v.located for v in verdicts]),
    )


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    return array


def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels (0 = background) by iterated min-propagation (images are tiny)."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    labels = np.where(mask, labels, 0)
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(h, w)


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    return mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
