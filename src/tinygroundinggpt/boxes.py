"""Every box conversion, parse, validation and IoU in the project lives here.

Three frames:

* **pixel** – absolute ``[x1, y1, x2, y2]`` in the *original* image, ``x2``/``y2`` exclusive edges
  (a box covering pixel columns 3..5 is ``[3, y1, 6, y2]``). Data files store this frame.
* **model** – normalised to the image after it is padded to a square (centred padding, as LLaVA's
  ``expand2square``), printed with three decimals. This is what the LLM reads and writes.
* **norm** – normalised to the original width and height (what lmms-eval's REC scorer uses).

Nothing outside this module should do box arithmetic; call these functions instead.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence

Box = tuple[float, float, float, float]

DECIMALS = 3
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_BOX_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
# Two or more numbers in brackets or parentheses, however separated: what coordinates look like in any spelling.
_NUMBER_GROUP_RE = re.compile(rf"[\[(]\s*{_NUM}(?:(?:\s*[,;]\s*|\s+){_NUM})+\s*[\])]")


class BoxError(ValueError):
    """A box that is malformed for the image it refers to; ``kind`` says how, for counting skipped boxes:
    ``malformed`` (not four finite numbers), ``inverted``, ``outside`` or ``zero_area``."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


# How far past the image's border a published annotation's box may reach and still be clamped into it (COCO's float
# boxes and 1-based inclusive corners overshoot by rounding, up to a pixel); further, the box is wrong, not rounded.
ANNOTATION_OVERSHOOT = 1.0


def _as_box(box: Sequence[float], what: str = "box") -> Box:
    # A manifest or a reply can hold anything where a box belongs: a number or a mapping is no box, nor is a
    # string, whatever its length ("1234" would otherwise read as four digits).
    if isinstance(box, str | bytes | Mapping) or not _has_len(box):
        raise BoxError(f"{what} must be a list of 4 numbers [x1, y1, x2, y2], got {type(box).__name__}: {box!r}")
    if len(box) != 4:
        raise BoxError(f"{what} must have 4 numbers [x1, y1, x2, y2], got {len(box)}: {list(box)!r}")
    try:
        vals = tuple(float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise BoxError(f"{what} has a non-numeric coordinate: {list(box)!r}") from exc
    if not all(math.isfinite(v) for v in vals):
        raise BoxError(f"{what} has a non-finite coordinate: {list(box)!r}")
    return vals  # type: ignore[return-value]


def _has_len(value: object) -> bool:
    try:
        len(value)  # type: ignore[arg-type]
    except TypeError:  # a number, or a 0-d array
        return False
    return True


def validate_pixel_box(
    box: Sequence[float],
    width: int,
    height: int,
    *,
    repair: bool = False,
    max_overshoot: float = math.inf,
    what: str = "box",
) -> Box:
    """Check a pixel-frame box against its image; return it (clamped into the image when ``repair``).

    Without ``repair`` an inverted, out-of-image or zero-area box raises :class:`BoxError` naming the
    problem. With ``repair`` coordinates are clamped to the image, unless one lies more than ``max_overshoot``
    pixels past its border (a dataset's box that far out belongs to another frame or size: it raises); an
    inverted box is never swapped, and one that is empty once clamped raises all the same (nothing is invented).
    """
    x1, y1, x2, y2 = _as_box(box, what)
    if width <= 0 or height <= 0:
        raise BoxError(f"{what}: image size must be positive, got {width}x{height}")
    if repair:
        overshoot = max(0.0, -min(x1, y1, x2, y2), max(x1, x2) - width, max(y1, y2) - height)
        if overshoot > max_overshoot:
            raise BoxError(
                f"{what} {[x1, y1, x2, y2]} lies {overshoot:g} px outside the {width}x{height} image "
                f"(at most {max_overshoot:g} px is clamped)",
                "outside",
            )
        if x1 < x2 and y1 < y2 and (x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0):
            # clamped, it would be an empty box on the border: no pixel of it is in the image
            raise BoxError(f"{what} {[x1, y1, x2, y2]} lies entirely outside the {width}x{height} image", "outside")
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return _check_corners((x1, y1, x2, y2), width, height, what)


def union_box(boxes: Sequence[Sequence[float]]) -> Box:
    """The smallest box holding all of ``boxes`` (one frame, any): e.g. one object for a phrase that names several."""
    if not boxes:
        raise BoxError("the union of no boxes is not a box")
    x1s, y1s, x2s, y2s = zip(*(_as_box(b) for b in boxes), strict=True)
    return min(x1s), min(y1s), max(x2s), max(y2s)


def validate_box_shape(box: Sequence[float], *, what: str = "box") -> Box:
    """What can be checked of a pixel-frame box without its image's size: four finite numbers, none
    negative, ``x2 > x1`` and ``y2 > y1``. Raises :class:`BoxError` naming the problem."""
    return _check_corners(_as_box(box, what), math.inf, math.inf, what)


def _check_corners(box: Box, width: float, height: float, what: str) -> Box:
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise BoxError(f"{what} is inverted (x2 < x1 or y2 < y1): {[x1, y1, x2, y2]}", "inverted")
    if x1 < 0 or y1 < 0:
        raise BoxError(f"{what} has a negative coordinate (lies outside the image): {[x1, y1, x2, y2]}", "outside")
    if x2 > width or y2 > height:
        raise BoxError(f"{what} {[x1, y1, x2, y2]} lies outside the {width}x{height} image", "outside")
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise BoxError(f"{what} has zero area: {[x1, y1, x2, y2]}", "zero_area")
    return box


def validate_unit_box(box: Sequence[float], *, repair: bool = False, what: str = "box") -> Box:
    """Like :func:`validate_pixel_box` for a box normalised to [0, 1] (model or norm frame)."""
    return validate_pixel_box(box, 1, 1, repair=repair, what=what)


def square_side(width: int, height: int) -> int:
    return max(width, height)


def pad_offsets(width: int, height: int) -> tuple[int, int]:
    """Left and top padding added when the image is centred on a square canvas."""
    side = square_side(width, height)
    return (side - width) // 2, (side - height) // 2


def pixel_to_model(box: Sequence[float], width: int, height: int) -> Box:
    """Original pixels → normalised to the centred padded square (unrounded)."""
    x1, y1, x2, y2 = _as_box(box)
    side = square_side(width, height)
    dx, dy = pad_offsets(width, height)
    return ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)


def model_to_pixel(box: Sequence[float], width: int, height: int, *, clamp: bool = True) -> Box:
    """Model frame → original pixels; clamped to the image (the padding is not part of it)."""
    x1, y1, x2, y2 = _as_box(box)
    side = square_side(width, height)
    dx, dy = pad_offsets(width, height)
    out = (x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy)
    return clamp_pixel_box(out, width, height) if clamp else out


def pixel_to_norm(box: Sequence[float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = _as_box(box)
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def norm_to_pixel(box: Sequence[float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = _as_box(box)
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def model_to_norm(box: Sequence[float], width: int, height: int) -> Box:
    """Model frame → normalised by the image's own size; unclamped (a box reaching into the padding goes past
    0 or 1), so a scorer sees the box as the model wrote it."""
    return pixel_to_norm(model_to_pixel(box, width, height, clamp=False), width, height)


def clamp_pixel_box(box: Sequence[float], width: int, height: int) -> Box:
    """Clamp each coordinate into the image; does not reorder (see :func:`validate_pixel_box` with ``repair``)."""
    x1, y1, x2, y2 = _as_box(box)
    cx = lambda v: min(max(v, 0.0), float(width))  # noqa: E731
    cy = lambda v: min(max(v, 0.0), float(height))  # noqa: E731
    return (cx(x1), cy(y1), cx(x2), cy(y2))


def round_box(box: Sequence[float], decimals: int = DECIMALS) -> Box:
    return tuple(round(float(v), decimals) for v in box)  # type: ignore[return-value]


def format_box(box: Sequence[float], decimals: int = DECIMALS, *, clamp: bool = True) -> str:
    """Model-frame box → its text form ``[0.120, 0.300, 0.560, 0.910]`` (clamped to [0, 1] unless ``clamp`` is
    False, for a box in another frame)."""
    vals = [min(max(float(v), 0.0), 1.0) if clamp else float(v) for v in _as_box(box)]
    return "[" + ", ".join(f"{v:.{decimals}f}" for v in vals) + "]"


def _box_matches(text: str) -> list[tuple[re.Match[str], Box]]:
    """Every ``[a, b, c, d]`` in ``text`` with its floats; one whose number has too many digits to be finite
    (a degenerate model answer can write hundreds) is no box."""
    found = [(m, tuple(float(g) for g in m.groups())) for m in _BOX_RE.finditer(text)]
    return [(m, b) for m, b in found if all(math.isfinite(v) for v in b)]  # type: ignore[misc]


def parse_boxes(text: str) -> list[Box]:
    """Every ``[a, b, c, d]`` in ``text``, in order, as floats (no validation: see ``validate_*``)."""
    return [b for _, b in _box_matches(text)]


def box_spans(text: str) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of every box :func:`parse_boxes` finds in ``text``, in the same order."""
    return [m.span() for m, _ in _box_matches(text)]


def number_groups(text: str) -> list[str]:
    """Every bracketed or parenthesised run of two or more numbers in ``text``: the boxes :func:`parse_boxes`
    reads and every other way of writing coordinates (``[a b c d]``, ``(a, b, c, d)``, five numbers, a point).
    Text that must hold no coordinates (a data file's, which refers to boxes by placeholder) holds none of these."""
    return _NUMBER_GROUP_RE.findall(text)


def in_model_frame(box: Sequence[float]) -> bool:
    """Whether four numbers can be a model-frame box: all in [0, 1]. Others (pixels such as ``[0, 0, 640, 480]``,
    a list ``[3, 5, 7, 9]``) are not, and are neither clamped into the image nor converted."""
    return all(0.0 <= v <= 1.0 for v in box)


def model_frame_boxes(text: str) -> list[Box]:
    """Every box in ``text`` that :func:`in_model_frame` accepts, in order."""
    return [b for b in parse_boxes(text) if in_model_frame(b)]


def model_text_to_norm(text: str, width: int, height: int) -> str:
    """``text`` with every box the model wrote (model frame) rewritten in the norm frame of a ``width`` x
    ``height`` image, for scorers that normalise by the image's own size (lmms-eval); the rest unchanged. Four
    numbers outside [0, 1] are no model-frame box (:func:`in_model_frame`) and stay as written; a box reaching into
    the padding is written past 0 or 1, not clamped (lmms-eval scores the box as written)."""
    out, end = [], 0
    for m, box in _box_matches(text):
        if not in_model_frame(box):
            continue
        out += [text[end : m.start()], format_box(model_to_norm(box, width, height), clamp=False)]
        end = m.end()
    return "".join(out) + text[end:]


def parse_first_box(text: str) -> Box | None:
    """The first box in ``text`` or ``None`` when there is none (the REC answer rule)."""
    found = parse_boxes(text)
    return found[0] if found else None


def grid_cell_box(row: int, col: int, grid: int, width: int, height: int) -> Box:
    """Original-image pixel box of cell ``(row, col)`` of a ``grid``×``grid`` patch grid laid over the padded
    square (what the vision encoders see); zero area when the cell lies entirely in the padding."""
    return model_to_pixel((col / grid, row / grid, (col + 1) / grid, (row + 1) / grid), width, height)


def pixel_to_cell(x: float, y: float, grid: int, width: int, height: int) -> tuple[int, int]:
    """``(row, col)`` of the patch-grid cell (see :func:`grid_cell_box`) holding the original-image pixel ``(x, y)``."""
    if not (0 <= x < width and 0 <= y < height):
        raise BoxError(f"point ({x}, {y}) lies outside the {width}x{height} image")
    mx, my, _, _ = pixel_to_model((x, y, x, y), width, height)
    return min(int(my * grid), grid - 1), min(int(mx * grid), grid - 1)


def area(box: Sequence[float]) -> float:
    x1, y1, x2, y2 = _as_box(box)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def center(box: Sequence[float]) -> tuple[float, float]:
    x1, y1, x2, y2 = _as_box(box)
    return ((x1 + x2) / 2, (y1 + y2) / 2)


def contains_point(box: Sequence[float], point: Sequence[float]) -> bool:
    x1, y1, x2, y2 = _as_box(box)
    return x1 <= point[0] <= x2 and y1 <= point[1] <= y2


def intersection(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = _as_box(a)
    bx1, by1, bx2, by2 = _as_box(b)
    return max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same frame; 0 for degenerate (inverted) boxes."""
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO ``[x, y, w, h]`` → ``[x1, y1, x2, y2]``."""
    x, y, w, h = _as_box(box)
    return (x, y, x + w, y + h)


def cxcywh_to_xyxy(box: Sequence[float]) -> Box:
    """Centre-size ``[cx, cy, w, h]`` (DETR/GroundingDINO heads) → ``[x1, y1, x2, y2]`` in the same frame."""
    cx, cy, w, h = _as_box(box)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def inclusive_to_pixel(box: Sequence[float], *, one_based: bool = True) -> Box:
    """Inclusive corner pixels (PASCAL VOC style: ``xmax`` is the last pixel column, 1-based when
    ``one_based``, as Flickr30K Entities' xml) → the pixel frame (0-based, exclusive right/bottom)."""
    x1, y1, x2, y2 = _as_box(box)
    shift = 1.0 if one_based else 0.0
    return (x1 - shift, y1 - shift, x2 - shift + 1.0, y2 - shift + 1.0)


def xyxy_to_xywh(box: Sequence[float]) -> Box:
    x1, y1, x2, y2 = _as_box(box)
    return (x1, y1, x2 - x1, y2 - y1)


def to_int_box(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Pixel box → integer crop window covering every pixel the box touches."""
    x1, y1, x2, y2 = _as_box(box)
    return (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))


def to_inclusive_corners(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Pixel box → first and last pixel column/row it touches (what PIL's ``ImageDraw.rectangle`` takes)."""
    x1, y1, x2, y2 = to_int_box(box)
    return (x1, y1, x2 - 1, y2 - 1)


def expand_box(box: Sequence[float], margin: float, width: int, height: int) -> Box:
    """Grow a pixel box by ``margin`` × its size on every side (context margin), kept in the image."""
    x1, y1, x2, y2 = _as_box(box)
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    return clamp_pixel_box((x1 - mw, y1 - mh, x2 + mw, y2 + mh), width, height)


def jitter_box(box: Sequence[float], rng: random.Random, scale: float, width: int, height: int) -> Box:
    """Shift each edge by up to ``scale`` × the box size (train-time augmentation), kept valid."""
    x1, y1, x2, y2 = _as_box(box)
    w, h = x2 - x1, y2 - y1
    out = (
        x1 + rng.uniform(-scale, scale) * w,
        y1 + rng.uniform(-scale, scale) * h,
        x2 + rng.uniform(-scale, scale) * w,
        y2 + rng.uniform(-scale, scale) * h,
    )
    out = clamp_pixel_box(out, width, height)
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        return (x1, y1, x2, y2)
    return out
