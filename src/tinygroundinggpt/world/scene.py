"""Scene graph and renderer of the synthetic world.

Public API (stable):

* :func:`generate_scene` ``(rng, image_size, config=SceneConfig()) -> (PIL.Image, Scene)`` – sample a
  scene from a ``random.Random`` (or an int seed) and render it. ``image_size`` is the *long* side; the
  short side follows the sampled aspect ratio (landscape and portrait both occur).
* :func:`render_scene` ``(scene) -> (PIL.Image, label_map)`` – a pure function of the scene graph:
  the same scene always gives the same pixels; ``label_map[y, x]`` is the index of the object drawn
  there or -1.
* :class:`Scene` – ``width``, ``height``, ``background`` and ``objects``; each :class:`WorldObject` has
  ``shape``, ``colour``, ``pattern``, ``size`` (``"small"``/``"large"``) and ``box``: the tight
  pixel-frame box ``[x1, y1, x2, y2]`` (exclusive right/bottom edges, see :mod:`tinygroundinggpt.boxes`)
  of the object's *visible* pixels; ``scene.occludes`` lists ``(front, back)`` pairs.

Vocabulary: :data:`SHAPES`, :data:`COLOURS`, :data:`PATTERNS`, :data:`SIZES`, :data:`BACKGROUNDS`.
Shapes are not equally frequent and come in themed groups (:data:`THEMES`) so that POPE's "popular"
and "adversarial" negative sampling have real frequency and co-occurrence statistics to work with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from tinygroundinggpt.boxes import Box, area, intersection

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 210),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
    "pink": (240, 110, 180),
}
PATTERNS = ("solid", "striped", "dotted")
SIZES = ("small", "large")
# Neutral tones only: object colours (and their pattern tints) are saturated, so no object pixel can
# ever equal a background pixel, which keeps every object's visible region well defined.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light": (226, 226, 222),
    "gray": (150, 150, 152),
    "dark": (55, 58, 62),
    "sand": (200, 194, 180),
}
BACKGROUND_KINDS = ("flat", "gradient", "noise", "grid")
# Relative frequency of each shape (POPE "popular") and groups that tend to appear together (POPE
# "adversarial"): with probability THEME_P an object's shape is drawn from the scene's theme.
SHAPE_WEIGHTS = {"circle": 3.0, "square": 3.0, "triangle": 2.0, "star": 2.0, "ring": 1.5, "cross": 1.0, "diamond": 1.0}
THEMES = (("circle", "ring", "star"), ("square", "cross", "diamond"), ("triangle", "star", "diamond"))
THEME_P = 0.6
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3))
# Object extent as a fraction of the image's short side, with a gap so "small" and "large" never blur.
SIZE_RANGE = {"small": (0.17, 0.22), "large": (0.30, 0.38)}
ROTATING = {"square", "triangle", "star", "cross", "diamond"}
MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its pixels
MAX_TRIES = 200
# Held out of every training scene and expression (the compositional split asks about them): 5 of the 56
# colour+shape pairs, each colour and shape still seen in training with other partners.
DEFAULT_HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "triangle"),
    ("green", "ring"),
    ("yellow", "cross"),
    ("purple", "circle"),
)
TINT = 0.55  # stripes and dots: the colour mixed this far towards white


@dataclass
class SceneConfig:
    """How scenes are sampled. ``heldout`` (colour, shape) pairs are never drawn in ``"exclude"`` mode
    (training and in-distribution evaluation) and at least one is drawn in ``"require"`` mode
    (the compositional split). The default holds out :data:`DEFAULT_HELDOUT`, so anything trained on
    default scenes (components, models) keeps the compositional split unseen."""

    min_objects: int = 2
    max_objects: int = 5
    occlusion: float = 0.3  # probability that an object may partly cover earlier ones
    aspects: tuple[tuple[int, int], ...] = ASPECTS
    heldout: frozenset[tuple[str, str]] = frozenset(DEFAULT_HELDOUT)
    heldout_mode: str = "exclude"


@dataclass
class WorldObject:
    shape: str
    colour: str
    pattern: str
    size: str
    cx: float  # geometry of the drawn shape in pixels: centre, extent, rotation in degrees
    cy: float
    extent: float
    angle: float
    box: Box = (0, 0, 0, 0)  # filled in from the rendered pixels

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "size": self.size}


@dataclass
class Scene:
    width: int
    height: int
    background: str
    background_kind: str
    noise_seed: int
    objects: list[WorldObject] = field(default_factory=list)
    occludes: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "objects": [{**o.attributes(), "box": list(o.box)} for o in self.objects],
            "occludes": [list(p) for p in self.occludes],
        }


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline with its farthest vertex at radius 1, so any rotation fits the object's extent."""
    if shape == "square":
        r = math.sqrt(0.5)
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if shape == "star":
        return [
            ((1.0 if k % 2 == 0 else 0.45) * math.cos(math.radians(-90 + 36 * k)),
             (1.0 if k % 2 == 0 else 0.45) * math.sin(math.radians(-90 + 36 * k)))
            for k in range(10)
        ]  # fmt: skip
    if shape == "cross":
        a, n = 0.34, math.hypot(0.34, 1.0)
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
        return [(x / n, y / n) for x, y in pts]
    raise ValueError(f"no polygon for shape {shape!r}")


def _shape_mask(obj: WorldObject) -> tuple[int, int, np.ndarray]:
    """The object's full (unoccluded) mask as (left, top, bool array) in image pixels."""
    r = obj.extent / 2
    left, top = math.floor(obj.cx - r), math.floor(obj.cy - r)
    side = math.ceil(obj.cx + r) - left + 1
    patch = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(patch)
    cx, cy = obj.cx - left, obj.cy - top
    if obj.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        if obj.shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:
        c, s = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
        pts = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _unit_polygon(obj.shape)]
        draw.polygon(pts, fill=1)
    return left, top, np.asarray(patch, dtype=bool)


def _pattern_periods(width: int, height: int) -> tuple[int, int]:
    """Stripe width and dot spacing: a couple of pixels at 64 px, so telling patterns apart needs detail."""
    short = min(width, height)
    return max(2, round(short / 28)), max(4, round(short / 20))


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    gen = np.random.default_rng(scene.noise_seed)
    if scene.background_kind == "gradient":
        ramp = np.linspace(-18.0, 18.0, h if gen.random() < 0.5 else w, dtype=np.float32)
        img = img + (ramp[:, None, None] if len(ramp) == h else ramp[None, :, None])
    elif scene.background_kind == "noise":
        img = img + gen.integers(-7, 8, size=(h, w, 1)).astype(np.float32)
    elif scene.background_kind == "grid":
        step = max(6, min(h, w) // 6)
        lines = np.zeros((h, w), dtype=bool)
        lines[::step, :] = True
        lines[:, ::step] = True
        img = img + np.where(lines, -14.0 if base.mean() > 100 else 14.0, 0.0)[..., None].astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(scene: Scene) -> tuple[Image.Image, np.ndarray]:
    """Draw the scene (objects in list order, later ones in front); returns the image and label map."""
    canvas = _background(scene)
    labels = np.full((scene.height, scene.width), -1, dtype=np.int16)
    stripe, dot = _pattern_periods(scene.width, scene.height)
    for i, obj in enumerate(scene.objects):
        x0, y0, x1, y1, m = _clip(_shape_mask(obj), labels.shape)
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        tint = colour + (255.0 - colour) * TINT
        yy, xx = np.mgrid[y0:y1, x0:x1]
        if obj.pattern == "striped":
            use_tint = ((xx + yy) // stripe) % 2 == 1
        elif obj.pattern == "dotted":
            dx, dy = xx % dot - (dot - 1) / 2, yy % dot - (dot - 1) / 2
            use_tint = dx * dx + dy * dy <= (dot * 0.3) ** 2
        else:
            use_tint = np.zeros(m.shape, dtype=bool)
        pixels = np.where(use_tint[..., None], tint, colour).astype(np.uint8)
        canvas[y0:y1, x0:x1][m] = pixels[m]
        labels[y0:y1, x0:x1][m] = i
    return Image.fromarray(canvas, mode="RGB"), labels


def render_mirrored(scene: Scene) -> Image.Image:
    """The scene mirrored left to right, drawn by the world: every shape and rotation mirrored (all the polygons are
    symmetric about the vertical), the stripes still along the world's one diagonal (a mirrored image would run them
    along the other, which no scene shows). The background is drawn as the scene's own, not mirrored."""
    objects = [replace(o, cx=scene.width - o.cx, angle=-o.angle) for o in scene.objects]
    return render_scene(replace(scene, objects=objects))[0]


def _pick_shape(rng: random.Random, theme: tuple[str, ...]) -> str:
    pool = theme if rng.random() < THEME_P else SHAPES
    return rng.choices(pool, weights=[SHAPE_WEIGHTS[s] for s in pool])[0]


def _sample_objects(rng: random.Random, width: int, height: int, config: SceneConfig) -> list[WorldObject]:
    n = rng.randint(config.min_objects, config.max_objects)
    theme = rng.choice(THEMES)
    short = min(width, height)
    required = 0 if config.heldout_mode == "require" else -1  # placed first: an empty canvas always has room
    objects: list[WorldObject] = []
    for k in range(n):
        if k == required:
            colour, shape = rng.choice(sorted(config.heldout))
        else:
            while True:
                shape, colour = _pick_shape(rng, theme), rng.choice(list(COLOURS))
                if (colour, shape) not in config.heldout:
                    break
        size = rng.choice(SIZES)
        lo, hi = SIZE_RANGE[size]
        extent = rng.uniform(lo, hi) * short
        angle = rng.uniform(-15, 15) if shape in ROTATING else 0.0
        may_occlude = rng.random() < config.occlusion
        for _ in range(40):
            r = extent / 2 + 1
            obj = WorldObject(shape, colour, rng.choice(PATTERNS), size,
                              rng.uniform(r, width - r), rng.uniform(r, height - r), extent, angle)  # fmt: skip
            if _placement_ok(obj, objects, may_occlude):
                objects.append(obj)
                break
    return objects


def _extent_box(obj: WorldObject) -> Box:
    r = obj.extent / 2
    return (obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r)


def _placement_ok(obj: WorldObject, placed: list[WorldObject], may_occlude: bool) -> bool:
    """Apart from everything, or (when allowed) covering at most a third of one earlier object."""
    box = _extent_box(obj)
    overlaps = [p for p in placed if intersection(box, _extent_box(p)) > 0]
    if not overlaps:
        return True
    if not may_occlude or len(overlaps) > 1:
        return False
    other = _extent_box(overlaps[0])
    return intersection(box, other) <= area(other) / 3


def generate_scene(
    rng: random.Random | int, image_size: int, config: SceneConfig | None = None
) -> tuple[Image.Image, Scene]:
    """Sample and render one scene whose long side is ``image_size`` pixels; boxes come from the pixels."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    config = config or SceneConfig()
    if config.heldout_mode not in ("exclude", "require") or (config.heldout_mode == "require" and not config.heldout):
        raise ValueError(
            f"heldout_mode must be 'exclude' or 'require' (with held-out pairs), got {config.heldout_mode!r}"
        )
    aw, ah = rng.choice(config.aspects)
    width, height = (image_size, max(1, round(image_size * ah / aw))) if aw >= ah else (
        max(1, round(image_size * aw / ah)), image_size)  # fmt: skip
    background, kind, noise_seed = rng.choice(list(BACKGROUNDS)), rng.choice(BACKGROUND_KINDS), rng.getrandbits(32)
    for _ in range(MAX_TRIES):  # resample until every object stays recognisable (rarely more than a few tries)
        scene = Scene(width, height, background, kind, noise_seed, _sample_objects(rng, width, height, config))
        if len(scene.objects) < config.min_objects or (
            config.heldout_mode == "require" and not any((o.colour, o.shape) in config.heldout for o in scene.objects)
        ):
            continue
        image, labels = render_scene(scene)
        if _finish(scene, labels):
            return image, scene
    raise ValueError(f"cannot fit {config.min_objects} objects in a {width}x{height} image; lower min_objects")


def _finish(scene: Scene, labels: np.ndarray) -> bool:
    """Set boxes from the visible pixels and the occlusion pairs; False when an object is hidden too much."""
    fulls = [_shape_mask(o) for o in scene.objects]
    for i, obj in enumerate(scene.objects):
        ys, xs = np.nonzero(labels == i)
        if len(xs) < MIN_VISIBLE * fulls[i][2].sum():
            return False
        obj.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    scene.occludes = [
        (j, i)
        for i in range(len(scene.objects))
        for j in range(i + 1, len(scene.objects))
        if intersection(_extent_box(scene.objects[i]), _extent_box(scene.objects[j])) > 0
        and bool(((labels == j) & _full_canvas(fulls[i], labels.shape)).any())
    ]
    return True


def _clip(mask: tuple[int, int, np.ndarray], shape: tuple[int, ...]) -> tuple[int, int, int, int, np.ndarray]:
    """A mask patch cut to the image (placement keeps shapes inside; this guards rounding only)."""
    left, top, m = mask
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + m.shape[1], shape[1]), min(top + m.shape[0], shape[0])
    return x0, y0, x1, y1, m[y0 - top : y1 - top, x0 - left : x1 - left]


def _full_canvas(mask: tuple[int, int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    x0, y0, x1, y1, m = _clip(mask, shape)
    out = np.zeros(shape, dtype=bool)
    out[y0:y1, x0:x1] = m
    return out
