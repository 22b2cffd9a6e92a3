"""Language of the synthetic world: referring expressions, captions, relation triples.

Public API (stable):

* :func:`referring_expressions` ``(scene, target, rng, kinds=KINDS, require_colour=False) ->
  list[Expression]`` – at most one expression per kind for one object, each referring to exactly
  that object; :func:`all_referring_expressions` ``(scene, rng)`` for every object.
* :func:`caption` ``(scene, rng) -> str``, :func:`object_phrase` ``(obj) -> str`` ("a small striped red
  circle"), :func:`relation_triples` ``(scene) -> list[(i, relation, j)]`` and
  :func:`triple_text` for their phrasing (of :func:`nameable_triples` only: a twin has no name of its own).

The grammar is small and regular (a tiny tokenizer is trained on it). A descriptor is
``the [size] [pattern] [colour] <shape>``; the kinds are

* ``attribute`` – ``the striped red circle``
* ``size`` – ``the small blue square`` (only where dropping the size would be ambiguous)
* ``relation`` – ``the star left of the green triangle`` (``left of``/``right of``/``above``/``below``)
* ``ordinal`` – ``the second circle from the left`` (``left``/``right``/``top``/``bottom``)
* ``position`` – ``the square in the top right corner``, ``… on the left``, ``… at the top``,
  ``… in the center`` (image cut in thirds)

Semantics, on the visible-pixel boxes: "A left of B" means A's box ends before B's begins
(``A.x2 <= B.x1``), likewise for the other directions; ordinals sort box centres; positions test the
box centre against thirds of the image. To be safe for a human reader too, the generator demands a
margin: no *other* object matching the descriptor may satisfy even the loose reading (centre-based
relations, thirds widened by :data:`MARGIN`, ordinal centres closer than :data:`MARGIN`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tinygroundinggpt.boxes import center
from tinygroundinggpt.world.scene import Scene, WorldObject

KINDS = ("attribute", "size", "relation", "ordinal", "position")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ORDINALS = ("first", "second", "third", "fourth")
POSITIONS = ("top left corner", "top right corner", "bottom left corner", "bottom right corner",
             "left", "right", "top", "bottom", "center")  # fmt: skip
POSITION_PREP = {"left": "on the", "right": "on the", "top": "at the", "bottom": "at the"}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_OBJECTS = len(NUMBERS) - 1  # counts are written as words
MARGIN = 0.08  # share of the image side a distractor must stay clear of the target's reading
DESCRIPTOR_ORDER = ("size", "pattern", "colour")


@dataclass(frozen=True)
class Expression:
    text: str
    target: int
    kind: str


def descriptor_text(desc: dict[str, str], shape: str) -> str:
    return " ".join([desc[k] for k in DESCRIPTOR_ORDER if k in desc] + [shape])


def object_phrase(obj: WorldObject, article: str = "a") -> str:
    """Full description: ``a small striped red circle``."""
    return f"{article} {descriptor_text(obj.attributes(), obj.shape)}"


def _matches(obj: WorldObject, desc: dict[str, str], shape: str) -> bool:
    return obj.shape == shape and all(getattr(obj, k) == v for k, v in desc.items())


def _descriptors(obj: WorldObject, with_size: bool) -> list[dict[str, str]]:
    keys = DESCRIPTOR_ORDER if with_size else DESCRIPTOR_ORDER[1:]
    attrs = obj.attributes()
    return [{k: attrs[k] for k in combo} for n in range(len(keys) + 1) for combo in itertools.combinations(keys, n)]


def _matching(scene: Scene, desc: dict[str, str], shape: str) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if _matches(o, desc, shape)]


def holds(scene: Scene, a: int, relation: str, b: int, loose: bool = False) -> bool:
    """Does ``objects[a] relation objects[b]`` hold (strict box reading, or loose centre reading)?"""
    ba, bb = scene.objects[a].box, scene.objects[b].box
    if loose:
        (ax, ay), (bx, by) = center(ba), center(bb)
        return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]
    return {"left of": ba[2] <= bb[0], "right of": ba[0] >= bb[2], "above": ba[3] <= bb[1], "below": ba[1] >= bb[3]}[
        relation
    ]


def in_position(scene: Scene, i: int, position: str, widen: float = 0.0) -> bool:
    """Is the box centre in that part of the image (thirds, widened by ``widen`` × the side)?"""
    x, y = center(scene.objects[i].box)
    fx, fy = x / scene.width, y / scene.height
    tests = {
        "left": fx < 1 / 3 + widen,
        "right": fx > 2 / 3 - widen,
        "top": fy < 1 / 3 + widen,
        "bottom": fy > 2 / 3 - widen,
    }
    tests["center"] = 1 / 3 - widen <= fx <= 2 / 3 + widen and 1 / 3 - widen <= fy <= 2 / 3 + widen
    return all(tests[part] for part in position.removesuffix(" corner").split())


def _position_phrase(position: str) -> str:
    return f"{POSITION_PREP.get(position, 'in the')} {position}"


def _attribute(scene: Scene, t: int, rng: random.Random, require_colour: bool) -> str | None:
    obj = scene.objects[t]
    options = [d for d in _descriptors(obj, with_size=False) if _matching(scene, d, obj.shape) == [t]]
    options = [d for d in options if "colour" in d] if require_colour else options
    return f"the {descriptor_text(rng.choice(options), obj.shape)}" if options else None


def _size(scene: Scene, t: int, rng: random.Random, require_colour: bool) -> str | None:
    obj = scene.objects[t]
    options = []
    for d in _descriptors(obj, with_size=False):
        if require_colour and "colour" not in d:
            continue
        sized = {**d, "size": obj.size}
        if _matching(scene, sized, obj.shape) == [t] and len(_matching(scene, d, obj.shape)) > 1:
            options.append(sized)
    return f"the {descriptor_text(rng.choice(options), obj.shape)}" if options else None


def _target_descriptors(scene: Scene, t: int, require_colour: bool) -> list[dict[str, str]]:
    ds = _descriptors(scene.objects[t], with_size=True)
    return [d for d in ds if "colour" in d] if require_colour else ds


def _relation(scene: Scene, t: int, rng: random.Random, require_colour: bool) -> str | None:
    obj, options = scene.objects[t], []
    for a, anchor in enumerate(scene.objects):
        if a == t:
            continue
        anchor_desc = _unique_descriptor(scene, a)  # the shortest name of the anchor keeps sentences short
        if anchor_desc is None:
            continue
        for rel in RELATIONS:
            if not holds(scene, t, rel, a):
                continue
            for d in _target_descriptors(scene, t, require_colour):
                rivals = [i for i in _matching(scene, d, obj.shape) if i not in (t, a)]
                if not any(holds(scene, i, rel, a, loose=True) for i in rivals):
                    options.append(
                        f"the {descriptor_text(d, obj.shape)} {rel} the {descriptor_text(anchor_desc, anchor.shape)}"
                    )
    return rng.choice(options) if options else None


def _ordinal(scene: Scene, t: int, rng: random.Random, require_colour: bool) -> str | None:
    obj, options = scene.objects[t], []
    for d in _target_descriptors(scene, t, require_colour):
        group = _matching(scene, d, obj.shape)
        if not 2 <= len(group) <= len(ORDINALS):
            continue
        for side, axis, reverse in (("left", 0, False), ("right", 0, True), ("top", 1, False), ("bottom", 1, True)):
            extent = scene.width if axis == 0 else scene.height
            coord = {i: center(scene.objects[i].box)[axis] for i in group}
            if any(abs(coord[i] - coord[t]) < MARGIN * extent for i in group if i != t):
                continue
            rank = sorted(group, key=lambda i: coord[i], reverse=reverse).index(t)
            options.append(f"the {ORDINALS[rank]} {descriptor_text(d, obj.shape)} from the {side}")
    return rng.choice(options) if options else None


def _position(scene: Scene, t: int, rng: random.Random, require_colour: bool) -> str | None:
    obj, options = scene.objects[t], []
    held = [pos for pos in POSITIONS if in_position(scene, t, pos)]
    near = {i: {pos for pos in held if in_position(scene, i, pos, widen=MARGIN)} for i in range(len(scene.objects))}
    for d in _target_descriptors(scene, t, require_colour):
        rivals = [i for i in _matching(scene, d, obj.shape) if i != t]
        for pos in held:
            if not any(pos in near[i] for i in rivals):
                options.append(f"the {descriptor_text(d, obj.shape)} {_position_phrase(pos)}")
    return rng.choice(options) if options else None


_BUILDERS = {"attribute": _attribute, "size": _size, "relation": _relation, "ordinal": _ordinal, "position": _position}


def referring_expressions(
    scene: Scene, target: int, rng: random.Random, kinds: Sequence[str] = KINDS, require_colour: bool = False
) -> list[Expression]:
    """One expression of each requested kind that exists for ``target`` (possibly none of some kind).

    ``require_colour`` keeps only expressions that name the target's colour next to its shape (the
    compositional split asks for the held-out colour+shape combination itself).
    """
    out = []
    for kind in kinds:
        text = _BUILDERS[kind](scene, target, rng, require_colour)
        if text is not None:
            out.append(Expression(text, target, kind))
    return out


def all_referring_expressions(scene: Scene, rng: random.Random, kinds: Sequence[str] = KINDS) -> list[Expression]:
    return [e for t in range(len(scene.objects)) for e in referring_expressions(scene, t, rng, kinds)]


def _unique_descriptor(scene: Scene, i: int) -> dict[str, str] | None:
    """The shortest descriptor (fewest attributes) that matches object ``i`` alone, if any."""
    obj = scene.objects[i]
    return next((d for d in _descriptors(obj, with_size=True) if _matching(scene, d, obj.shape) == [i]), None)


def unique_name(scene: Scene, i: int) -> str:
    """Shortest attribute description naming only object ``i`` ("the red circle"), else its full phrase."""
    obj, desc = scene.objects[i], _unique_descriptor(scene, i)
    return object_phrase(obj, "the") if desc is None else f"the {descriptor_text(desc, obj.shape)}"


def nameable(scene: Scene, i: int) -> bool:
    """Can object ``i`` be named by its attributes alone (it has no identical twin in the scene)?"""
    return _unique_descriptor(scene, i) is not None


def relation_triples(scene: Scene) -> list[tuple[int, str, int]]:
    """Every (a, relation, b) that holds strictly, plus occlusion as ``in front of`` / ``behind``."""
    n = len(scene.objects)
    triples = [
        (a, rel, b) for a in range(n) for b in range(n) if a != b for rel in RELATIONS if holds(scene, a, rel, b)
    ]
    for front, back in scene.occludes:
        triples += [(front, "in front of", back), (back, "behind", front)]
    return triples


def nameable_triples(scene: Scene) -> list[tuple[int, str, int]]:
    """:func:`relation_triples` whose two objects both have a name of their own, so that the sentence
    :func:`triple_text` writes cannot be read about an identical twin."""
    return [t for t in relation_triples(scene) if nameable(scene, t[0]) and nameable(scene, t[2])]


def triple_text(scene: Scene, triple: tuple[int, str, int]) -> str:
    a, rel, b = triple
    return f"{unique_name(scene, a)} is {rel} {unique_name(scene, b)}"


def count_phrase(n: int, noun: str) -> str:
    return f"{NUMBERS[n]} {noun if n == 1 else plural(noun)}"


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def join_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: random.Random) -> str:
    """A short caption listing every object: ``three shapes on a dark background: a red circle, ...``."""
    phrases = [object_phrase(o) for o in scene.objects]
    bg = f"a {scene.background} background"
    templates = (
        f"{count_phrase(len(phrases), 'shape')} on {bg}: {join_list(phrases)}.",
        f"{join_list(phrases)} on {bg}.",
        f"an image of {join_list(phrases)}.",
    )
    return rng.choice(templates)
