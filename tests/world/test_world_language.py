"""Every referring expression denotes exactly its target, checked by an independent resolver."""

from __future__ import annotations

import random
from collections import Counter

from world_resolver import relation_holds, resolve

from tinygroundinggpt.world.language import KINDS, caption, referring_expressions, relation_triples
from tinygroundinggpt.world.scene import SceneConfig, generate_scene


def test_every_expression_refers_to_exactly_its_target():
    kinds: Counter[str] = Counter()
    for seed in range(300):
        _, scene = generate_scene(
            seed, 64 if seed % 3 else 160, SceneConfig(min_objects=2, max_objects=6, occlusion=0.5)
        )
        rng = random.Random(seed)
        for t in range(len(scene.objects)):
            for e in referring_expressions(scene, t, rng):
                assert e.target == t
                assert resolve(scene, e.text) == [t], (seed, e)
                if e.kind == "relation":  # unambiguous under the loose (centre) reading too
                    assert resolve(scene, e.text, loose=True) == [t], (seed, e)
                kinds[e.kind] += 1
    assert set(kinds) == set(KINDS), kinds


def test_size_expressions_need_the_size():
    for seed in range(300):
        _, scene = generate_scene(seed, 64, SceneConfig(min_objects=3, max_objects=6))
        for t in range(len(scene.objects)):
            for e in referring_expressions(scene, t, random.Random(seed), ("size",)):
                dropped = e.text.replace("small ", "").replace("large ", "")
                assert len(resolve(scene, dropped)) > 1
                return
    raise AssertionError("no size expression in 300 scenes")


def test_require_colour_names_colour_and_shape():
    held = frozenset({("red", "star")})
    for seed in range(40):
        _, scene = generate_scene(seed, 64, SceneConfig(heldout=held, heldout_mode="require"))
        t = next(i for i, o in enumerate(scene.objects) if (o.colour, o.shape) == ("red", "star"))
        for e in referring_expressions(scene, t, random.Random(seed), require_colour=True):
            assert "red star" in e.text and resolve(scene, e.text) == [t]


def test_caption_and_triples_describe_the_scene():
    _, scene = generate_scene(3, 64, SceneConfig(min_objects=3, max_objects=3))
    text = caption(scene, random.Random(0))
    assert all(o.shape in text and o.colour in text for o in scene.objects)
    for a, rel, b in relation_triples(scene):
        if rel in ("left of", "right of", "above", "below"):
            assert relation_holds(scene, a, rel, b, loose=False)
