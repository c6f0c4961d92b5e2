"""Procedural captioned scenes: two coloured shapes in a spatial relation on a light background.

This is the ground truth for the embedded text-to-image model and for the judge that scores it, so
everything here is deterministic given a ``numpy.random.Generator`` and uses only numpy and PIL.

Compositions are tuples ``(shape1, colour1, relation, shape2, colour2)``. The two objects always have
different colours, so an image can be read back unambiguously by colour. Every composition has a
mirrored phrasing that describes the same layout ("a red circle left of a blue square" is "a blue
square right of a red circle"); the held-out set is closed under mirroring, so a held-out layout is
never seen in training under either phrasing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 195, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

MIRROR: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
FLIP = MIRROR  # the flipped relation used as the judge's control is the same mapping
AXIS: dict[str, str] = {"left of": "x", "right of": "x", "above": "y", "below": "y"}

IMAGE_SIZE = 32
MIN_SIZE, MAX_SIZE = 7.0, 12.0  # object extent (diameter / side) in pixels of the 32x32 image
MIN_GAP = 2.0  # pixels of clear background between the two objects along the relation's axis
MAX_CROSS = 4.0  # largest centre offset across the relation's axis
HELD_OUT_SEED = 8
HELD_OUT_PAIRS = 48  # canonical compositions held out; with their mirrors 96 of 432

Composition = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class SceneObject:
    """One shape; ``cx, cy`` is its bounding-box centre and ``size`` its extent, in image pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    first: SceneObject
    relation: str
    second: SceneObject
    background: tuple[int, int, int]

    @property
    def caption(self) -> str:
        return composition_caption(self.composition)

    @property
    def composition(self) -> Composition:
        f, s = self.first, self.second
        return (f.shape, f.colour, self.relation, s.shape, s.colour)


def composition_caption(comp: Composition) -> str:
    """Template caption, e.g. ``a red circle left of a blue square``."""
    shape1, colour1, relation, shape2, colour2 = comp
    return f"a {colour1} {shape1} {relation} a {colour2} {shape2}"


def mirror_composition(comp: Composition) -> Composition:
    """The other phrasing of the same layout: swap the objects and invert the relation."""
    shape1, colour1, relation, shape2, colour2 = comp
    return (shape2, colour2, MIRROR[relation], shape1, colour1)


def flipped_composition(comp: Composition) -> Composition:
    """The same objects in the opposite relation (the judge's control)."""
    shape1, colour1, relation, shape2, colour2 = comp
    return (shape1, colour1, FLIP[relation], shape2, colour2)


_CAPTION_RE = re.compile(
    r"^a (?P<c1>\w+) (?P<s1>\w+) (?P<rel>left of|right of|above|below) a (?P<c2>\w+) (?P<s2>\w+)$"
)


def parse_caption(text: str) -> Composition:
    """Parse a template caption into ``(shape1, colour1, relation, shape2, colour2)``.

    Raises ValueError naming the accepted vocabulary for anything that is not a template caption.
    """
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {type(text).__name__}")
    norm = " ".join(text.strip().lower().split())
    m = _CAPTION_RE.match(norm)
    help_text = (
        "expected 'a <colour> <shape> <relation> a <colour> <shape>' with colour in "
        f"{sorted(COLOURS)}, shape in {list(SHAPES)}, relation in {list(RELATIONS)}, "
        "e.g. 'a red circle left of a blue square'"
    )
    if m is None:
        raise ValueError(f"cannot parse caption {text!r}: {help_text}")
    for key, allowed in (("c1", COLOURS), ("c2", COLOURS), ("s1", SHAPES), ("s2", SHAPES)):
        if m[key] not in allowed:
            raise ValueError(f"unknown word {m[key]!r} in caption {text!r}: {help_text}")
    return (m["s1"], m["c1"], m["rel"], m["s2"], m["c2"])


def all_compositions() -> list[Composition]:
    """All 432 compositions (objects of different colours), in a fixed order."""
    return [
        (s1, c1, rel, s2, c2)
        for s1 in SHAPES
        for c1 in COLOURS
        for rel in RELATIONS
        for s2 in SHAPES
        for c2 in COLOURS
        if c1 != c2
    ]


@cache
def _held_out() -> tuple[Composition, ...]:
    # Canonical phrasings use "left of" / "above"; draw half of the pairs on each axis, then add mirrors.
    rng = np.random.default_rng(HELD_OUT_SEED)
    chosen: list[Composition] = []
    for rel in ("left of", "above"):
        canon = [c for c in all_compositions() if c[2] == rel]
        idx = rng.choice(len(canon), size=HELD_OUT_PAIRS // 2, replace=False)
        chosen.extend(canon[i] for i in sorted(idx))
    with_mirrors = set(chosen) | {mirror_composition(c) for c in chosen}
    return tuple(c for c in all_compositions() if c in with_mirrors)


def held_out_compositions() -> list[Composition]:
    """96 compositions never used in training: 48 seeded layouts and their mirrored phrasings."""
    return list(_held_out())


def training_compositions() -> list[Composition]:
    """The 336 compositions the model is trained on (all minus held out)."""
    held = set(_held_out())
    return [c for c in all_compositions() if c not in held]


def _place(rng: np.random.Generator, r1: float, r2: float) -> tuple[float, float, float, float]:
    """Centres (a1, a2) along the axis with a1 < a2 and a clear gap, and (b1, b2) across it."""
    lo1, hi1 = r1 + 1.0, IMAGE_SIZE - 1.0 - r1
    lo2, hi2 = r2 + 1.0, IMAGE_SIZE - 1.0 - r2
    min_sep = r1 + r2 + MIN_GAP
    while True:
        a1 = rng.uniform(lo1, hi1)
        a2 = rng.uniform(lo2, hi2)
        if a2 - a1 >= min_sep:
            break
    while True:
        centre = rng.uniform(max(lo1, lo2), min(hi1, hi2))
        off = rng.uniform(-MAX_CROSS, MAX_CROSS)
        b1, b2 = centre + off / 2, centre - off / 2
        if lo1 <= b1 <= hi1 and lo2 <= b2 <= hi2:
            return a1, a2, b1, b2


def sample_scene(rng: np.random.Generator, composition: Composition | None = None) -> Scene:
    """A random scene; ``composition`` defaults to a uniformly drawn training composition."""
    if composition is None:
        train = training_compositions()
        composition = train[int(rng.integers(len(train)))]
    shape1, colour1, relation, shape2, colour2 = composition
    parse_caption(composition_caption(composition))  # validates the vocabulary
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {list(RELATIONS)}")
    s1, s2 = rng.uniform(MIN_SIZE, MAX_SIZE, size=2)
    # "first left of second": first has the smaller x; "first above second": first has the smaller y.
    if relation in ("left of", "above"):
        a1, a2, b1, b2 = _place(rng, s1 / 2, s2 / 2)
    else:
        a2, a1, b2, b1 = _place(rng, s2 / 2, s1 / 2)
    if AXIS[relation] == "x":
        (x1, y1), (x2, y2) = (a1, b1), (a2, b2)
    else:
        (x1, y1), (x2, y2) = (b1, a1), (b2, a2)
    base = rng.uniform(222, 250)
    tint = rng.uniform(-6, 6, size=3)
    background = tuple(round(float(min(255.0, base + t))) for t in tint)
    return Scene(
        first=SceneObject(shape1, colour1, float(x1), float(y1), float(s1)),
        relation=relation,
        second=SceneObject(shape2, colour2, float(x2), float(y2), float(s2)),
        background=background,  # type: ignore[arg-type]
    )


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: float, fill: object = None) -> None:
    """Draw ``obj`` on ``draw`` at ``scale`` pixels per scene unit, in its colour or ``fill``."""
    cx, cy, h = obj.cx * scale, obj.cy * scale, obj.size * scale / 2
    box = (cx - h, cy - h, cx + h, cy + h)
    fill = COLOURS[obj.colour] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {list(SHAPES)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render to a ``(size, size, 3)`` uint8 array; drawn at 4x and box-downsampled for antialiasing."""
    big = size * 4
    scale = big / IMAGE_SIZE
    img = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(img)
    draw_object(draw, scene.first, scale)
    draw_object(draw, scene.second, scale)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
