"""An independent reader of the world's referring expressions: parses the text and evaluates it on the
scene graph (attributes + pixel boxes) with the documented semantics, sharing no code with the generator."""

from __future__ import annotations

import re

from tinygroundinggpt.boxes import center
from tinygroundinggpt.world.scene import COLOURS, PATTERNS, SHAPES, SIZES, Scene

_D = rf"(?:({'|'.join(SIZES)}) )?(?:({'|'.join(PATTERNS)}) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)})"
_RELATION = re.compile(rf"^the {_D} (left of|right of|above|below) the {_D}$")
_ORDINAL = re.compile(rf"^the (first|second|third|fourth) {_D} from the (left|right|top|bottom)$")
_REGIONS = (
    r"in the (?:top|bottom) (?:left|right) corner|on the left|on the right|at the top|at the bottom|in the center"
)
_POSITION = re.compile(rf"^the {_D} ({_REGIONS})$")
_PLAIN = re.compile(rf"^the {_D}$")


def _matching(scene: Scene, size, pattern, colour, shape) -> list[int]:
    return [
        i
        for i, o in enumerate(scene.objects)
        if o.shape == shape
        and (size is None or o.size == size)
        and (pattern is None or o.pattern == pattern)
        and (colour is None or o.colour == colour)
    ]


def relation_holds(scene: Scene, a: int, rel: str, b: int, loose: bool) -> bool:
    ax1, ay1, ax2, ay2 = scene.objects[a].box
    bx1, by1, bx2, by2 = scene.objects[b].box
    if loose:
        (acx, acy), (bcx, bcy) = center(scene.objects[a].box), center(scene.objects[b].box)
        return {"left of": acx < bcx, "right of": acx > bcx, "above": acy < bcy, "below": acy > bcy}[rel]
    return {"left of": ax2 <= bx1, "right of": ax1 >= bx2, "above": ay2 <= by1, "below": ay1 >= by2}[rel]


def _in_region(scene: Scene, i: int, region: str) -> bool:
    cx, cy = center(scene.objects[i].box)
    left, right = cx < scene.width / 3, cx > 2 * scene.width / 3
    top, bottom = cy < scene.height / 3, cy > 2 * scene.height / 3
    words = set(region.split())
    if "center" in words:
        return not (left or right or top or bottom)
    return all(
        {"left": left, "right": right, "top": top, "bottom": bottom}[w]
        for w in words & {"left", "right", "top", "bottom"}
    )


def resolve(scene: Scene, text: str, loose: bool = False) -> list[int]:
    """Every object the expression can denote (a well-formed expression gives exactly one)."""
    if m := _RELATION.match(text):
        g = m.groups()
        anchors = _matching(scene, *g[5:9])
        if len(anchors) != 1:
            return []
        return [
            i
            for i in _matching(scene, *g[0:4])
            if i != anchors[0] and relation_holds(scene, i, g[4], anchors[0], loose)
        ]
    if m := _ORDINAL.match(text):
        g = m.groups()
        group = _matching(scene, *g[1:5])
        axis = 0 if g[5] in ("left", "right") else 1
        order = sorted(group, key=lambda i: center(scene.objects[i].box)[axis], reverse=g[5] in ("right", "bottom"))
        rank = ("first", "second", "third", "fourth").index(g[0])
        return [order[rank]] if rank < len(order) else []
    if m := _POSITION.match(text):
        g = m.groups()
        return [i for i in _matching(scene, *g[0:4]) if _in_region(scene, i, g[4])]
    if m := _PLAIN.match(text):
        return _matching(scene, *m.groups())
    raise ValueError(f"expression outside the grammar: {text!r}")
