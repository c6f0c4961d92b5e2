"""The analytic judge against procedural ground truth (it must read real scenes >= 98% right)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from crossgate.embedded.scenes import FLIP, all_compositions, render, sample_scene
from crossgate.tools.quality.judge import DetectedObject, Judge, classify_shape, relation_holds, score_images
from crossgate.tools.quality.metrics import frechet_distance


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(1234)
    comps = all_compositions()
    chosen = [sample_scene(rng, comps[int(rng.integers(len(comps)))]) for _ in range(300)]
    return chosen, np.stack([render(s) for s in chosen])


def _degrade(image: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    return np.clip(soft + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)


def test_judge_reads_real_scenes(scenes):
    chosen, images = scenes
    judge = Judge()
    acc = score_images(judge, images, [s.composition for s in chosen])
    assert acc.n == 300
    assert acc.object_accuracy >= 0.98
    assert acc.relation_accuracy >= 0.98
    assert acc.relation_flipped_accuracy <= 0.02  # the control: same images, flipped relation
    assert acc.caption_accuracy >= 0.98


def test_detected_objects_match_ground_truth(scenes):
    chosen, images = scenes
    judge = Judge()
    right, errors = 0, []
    for scene, image in zip(chosen[:150], images[:150]):
        found = judge.detect(image)
        for obj in (scene.first, scene.second):
            got = found.get(obj.colour)
            if got is not None and got.shape == obj.shape:
                right += 1
                errors.append(np.hypot(got.cx - obj.cx, got.cy - obj.cy))
    assert right / 300 >= 0.98
    assert np.percentile(errors, 98) < 1.0  # positions in pixels (bounding-box centre)


def test_judge_tolerates_a_generators_softer_images(scenes):
    chosen, images = scenes
    rng = np.random.default_rng(0)
    soft = np.stack([_degrade(im, blur=0.5, noise=4.0, rng=rng) for im in images])
    acc = score_images(Judge(), soft, [s.composition for s in chosen])
    assert acc.object_accuracy >= 0.98
    assert acc.relation_accuracy >= 0.98
    assert acc.relation_flipped_accuracy <= 0.02


def test_wrong_caption_is_rejected(scenes):
    chosen, images = scenes
    judge = Judge()
    scene, image = chosen[0], images[0]
    shape1, colour1, relation, shape2, colour2 = scene.composition
    other_shape = next(s for s in ("circle", "square", "triangle") if s != shape1)
    verdict = judge.judge(image, (other_shape, colour1, relation, shape2, colour2))
    assert verdict.located and not verdict.objects_ok
    flipped = judge.judge(image, (shape1, colour1, FLIP[relation], shape2, colour2))
    assert flipped.objects_ok and not flipped.relation_ok and flipped.flipped_ok
    missing = next(c for c in ("red", "green", "blue", "yellow") if c not in (colour1, colour2))
    absent = judge.judge(image, (shape1, missing, relation, shape2, colour2))
    assert not absent.located and not absent.objects_ok and not absent.relation_ok


def test_blank_background_has_no_objects():
    blank = np.full((32, 32, 3), 238, dtype=np.uint8)
    judge = Judge()
    assert judge.detect(blank) == {}
    verdict = judge.judge(blank, "a red circle left of a blue square")
    assert not (verdict.located or verdict.relation_ok or verdict.flipped_ok)


def _obj(cx: float, cy: float) -> DetectedObject:
    return DetectedObject("red", "circle", cx, cy, 50.0, 1 / 6, 0.0)


@pytest.mark.parametrize(
    ("dx", "dy", "relation", "holds"),
    [
        (3.5, 0.0, "left of", True),
        (3.0, 0.0, "left of", False),  # not clearly more than 3 px
        (5.0, 6.0, "left of", False),  # diagonal: cross-axis displacement is larger
        (5.0, 4.0, "left of", True),
        (-5.0, 0.0, "right of", True),
        (5.0, 0.0, "right of", False),
        (0.0, 6.0, "above", True),  # y grows downwards: the second object is lower
        (0.0, -6.0, "below", True),
        (0.0, 6.0, "below", False),
    ],
)
def test_strict_relation_rule(dx, dy, relation, holds):
    assert relation_holds(_obj(10, 10), _obj(10 + dx, 10 + dy), relation) is holds


def test_relation_rule_rejects_unknown_relation():
    with pytest.raises(ValueError, match="unknown relation"):
        relation_holds(_obj(0, 0), _obj(5, 0), "near")


def test_shape_prototypes_classify_to_themselves():
    assert classify_shape(1 / 6, 0.0) == "circle"
    assert classify_shape(0.25, 0.0) == "square"
    assert classify_shape(0.196, -0.244) == "triangle"


def test_judge_features_and_frechet(scenes):
    _, images = scenes
    judge = Judge()
    feats = np.stack([judge.features(im) for im in images[:100]])
    assert feats.shape == (100, 6 * 4 + 4)
    assert np.isfinite(feats).all()
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    blank = np.stack([judge.features(np.full((32, 32, 3), 240, np.uint8) + i % 3) for i in range(100)])
    assert frechet_distance(feats, blank) > 1.0


def test_bad_inputs_get_clear_errors():
    judge = Judge()
    with pytest.raises(ValueError, match="RGB image"):
        judge.detect(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="cannot parse caption"):
        judge.judge(np.zeros((32, 32, 3), np.uint8), "a cat")
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        score_images(judge, np.zeros((2, 32, 32, 3), np.uint8), ["a red circle left of a blue square"])
