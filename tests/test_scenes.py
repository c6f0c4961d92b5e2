"""Procedural scene ground truth: determinism, geometry and the held-out split."""

import numpy as np
import pytest

from crossgate.embedded import scenes
from crossgate.embedded.scenes import (
    AXIS,
    COLOURS,
    RELATIONS,
    SHAPES,
    all_compositions,
    composition_caption,
    held_out_compositions,
    mirror_composition,
    parse_caption,
    render,
    sample_scene,
    training_compositions,
)


def test_vocabulary():
    assert {"red", "green", "blue", "yellow"} <= set(COLOURS)
    assert SHAPES == ("circle", "square", "triangle")
    assert RELATIONS == ("left of", "right of", "above", "below")


def test_sampling_and_rendering_are_deterministic():
    a = [sample_scene(np.random.default_rng(5)) for _ in range(3)]
    b = [sample_scene(np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    img1, img2 = render(a[0]), render(b[0])
    assert img1.shape == (32, 32, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2)
    assert render(a[0], size=64).shape == (64, 64, 3)


def test_objects_are_separated_along_the_relation_axis():
    rng = np.random.default_rng(0)
    for comp in all_compositions()[::7]:
        scene = sample_scene(rng, comp)
        f, s = scene.first, scene.second
        dx, dy = s.cx - f.cx, s.cy - f.cy  # second minus first
        along, cross = (dx, dy) if AXIS[scene.relation] == "x" else (dy, dx)
        sign = 1 if scene.relation in ("left of", "above") else -1
        gap = sign * along - (f.size + s.size) / 2
        assert gap >= scenes.MIN_GAP - 1e-9, (comp, gap)
        assert abs(cross) <= scenes.MAX_CROSS + 1e-9
        assert sign * along > 3 and sign * along > abs(cross)
        for o in (f, s):
            assert o.size / 2 <= o.cx <= 32 - o.size / 2 and o.size / 2 <= o.cy <= 32 - o.size / 2


def test_rendered_colours_sit_where_the_objects_are():
    scene = sample_scene(np.random.default_rng(1), ("square", "red", "left of", "circle", "blue"))
    img = render(scene).astype(int)
    for obj in (scene.first, scene.second):
        px = img[int(obj.cy), int(obj.cx)]
        assert np.abs(px - np.array(COLOURS[obj.colour])).max() <= 30
    bg = img[0, 0] if scene.first.cx > 8 else img[31, 31]
    assert bg.min() >= 200  # light background


def test_parse_round_trip_and_errors():
    for comp in all_compositions():
        assert parse_caption(composition_caption(comp)) == comp
    assert parse_caption("  A Red  circle left of a blue square ") == (
        "circle",
        "red",
        "left of",
        "square",
        "blue",
    )
    for bad in ("a purple circle left of a blue square", "a red circle near a blue square", "", "red circle"):
        with pytest.raises(ValueError, match="expected"):
            parse_caption(bad)


def test_scene_caption_matches_composition():
    comp = ("triangle", "yellow", "below", "circle", "green")
    scene = sample_scene(np.random.default_rng(2), comp)
    assert scene.caption == "a yellow triangle below a green circle"
    assert parse_caption(scene.caption) == comp


def test_held_out_is_fixed_disjoint_and_closed_under_mirroring():
    held, train = held_out_compositions(), training_compositions()
    assert len(all_compositions()) == 432 and len(held) == 96 and len(train) == 336
    assert not set(held) & set(train)
    assert set(held) | set(train) == set(all_compositions())
    assert all(mirror_composition(c) in set(held) for c in held)
    assert {c[2] for c in held} == set(RELATIONS)
    assert held == held_out_compositions()  # seeded, stable
    rng = np.random.default_rng(3)
    assert all(sample_scene(rng).composition in set(train) for _ in range(300))
