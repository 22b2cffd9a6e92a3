"""Scenes: determinism, tight boxes from the drawn pixels, aspect ratios, occlusion, held-out combinations."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from tinygroundinggpt.world.scene import (
    COLOURS,
    DEFAULT_HELDOUT,
    ROTATING,
    SHAPES,
    TINT,
    Scene,
    SceneConfig,
    WorldObject,
    _pattern_periods,
    generate_scene,
    render_mirrored,
    render_scene,
)

HELD = frozenset({("red", "star"), ("blue", "triangle")})


def test_same_seed_same_scene_and_pixels():
    a_img, a = generate_scene(random.Random(7), 96)
    b_img, b = generate_scene(7, 96)
    assert a == b
    assert a_img.tobytes() == b_img.tobytes()
    assert generate_scene(8, 96)[0].tobytes() != a_img.tobytes()


def _drawn_box(scene: Scene, i: int) -> tuple[int, int, int, int]:
    """Bounding box of the pixels that change when object i alone is repainted a different solid colour."""
    obj = scene.objects[i]
    other = next(c for c in COLOURS if c != obj.colour)
    changed = dataclasses.replace(scene, objects=list(scene.objects))
    changed.objects[i] = dataclasses.replace(obj, colour=other, pattern="solid")
    before = np.asarray(render_scene(scene)[0]).astype(int)
    after = np.asarray(render_scene(changed)[0]).astype(int)
    ys, xs = np.nonzero(np.abs(before - after).sum(axis=2))
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.mark.parametrize("size", [64, 200])
def test_boxes_tightly_enclose_drawn_pixels(size):
    occluded = 0
    for seed in range(40 if size == 64 else 10):
        image, scene = generate_scene(seed, size, SceneConfig(occlusion=0.6))
        assert image.size == (scene.width, scene.height) and max(image.size) == size
        occluded += len(scene.occludes)
        for i, obj in enumerate(scene.objects):
            assert tuple(obj.box) == _drawn_box(scene, i), (seed, i)
    assert occluded > 0  # partial occlusion is exercised, and boxes then cover the visible part only


def test_both_orientations_and_object_counts():
    scenes = [generate_scene(s, 64, SceneConfig(min_objects=1, max_objects=3))[1] for s in range(60)]
    assert any(s.width > s.height for s in scenes) and any(s.width < s.height for s in scenes)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    one = [generate_scene(s, 64, SceneConfig(min_objects=1, max_objects=1))[1] for s in range(10)]
    assert all(len(s.objects) == 1 for s in one)


def test_default_scenes_hold_out_the_compositional_pairs():
    for seed in range(60):
        assert not any((o.colour, o.shape) in DEFAULT_HELDOUT for o in generate_scene(seed, 64)[1].objects)


def test_heldout_modes():
    for seed in range(60):
        excl = generate_scene(seed, 64, SceneConfig(heldout=HELD))[1]
        assert not any((o.colour, o.shape) in HELD for o in excl.objects)
        req = generate_scene(seed, 64, SceneConfig(heldout=HELD, heldout_mode="require"))[1]
        assert any((o.colour, o.shape) in HELD for o in req.objects)
    with pytest.raises(ValueError, match="heldout_mode"):
        generate_scene(0, 64, SceneConfig(heldout=frozenset(), heldout_mode="require"))


def test_mirrored_scene_mirrors_the_shapes_and_keeps_the_worlds_stripes():
    """The DINOv2's augmentation: the scene mirrored and drawn again. Shapes land where a mirror puts them, but the
    stripes keep the one diagonal the world draws (``(x + y) // period``), which a mirrored image would turn."""
    period = _pattern_periods(64, 48)[0]
    for k, shape in enumerate(SHAPES):
        angle = 12.0 - 5 * k if shape in ROTATING else 0.0
        obj = WorldObject(shape, "red", "striped", "large", cx=21.3 + 3 * k, cy=25.0, extent=22.0, angle=angle)
        scene = Scene(64, 48, "dark", "flat", 0, [obj])
        image = np.asarray(render_scene(scene)[0]).astype(int)
        mirrored = np.asarray(render_mirrored(scene)).astype(int)
        background = image[0, 0]
        drawn, drawn_mirrored = (image != background).any(-1), (mirrored != background).any(-1)
        assert (drawn_mirrored != np.fliplr(drawn)).sum() <= 2, shape  # the same pixels, up to rounding
        base = np.array(COLOURS["red"])
        tint = np.round(base + (255 - base) * TINT)
        for picture, ok in ((mirrored, True), (np.fliplr(image), False)):
            yy, xx = np.nonzero((np.abs(picture - tint) <= 1).all(-1))
            on_world_stripes = (((xx + yy) // period) % 2 == 1).mean()
            assert bool(on_world_stripes == 1.0) is ok, (shape, on_world_stripes)
