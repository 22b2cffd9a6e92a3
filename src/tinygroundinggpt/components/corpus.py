"""Synthetic-world data for the component trainers: scene images, captions and LM documents.

The trainers take plain images and texts; this module is the one place that turns world scenes into
them. Images are padded to a square with the encoder's mean colour before its processor sees them,
as the grounding model pads them (so nothing is cropped away and boxes keep the model frame).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from tinygroundinggpt.boxes import Box, format_box, pad_offsets, pixel_to_model, square_side
from tinygroundinggpt.components.qwen2 import Document
from tinygroundinggpt.data.format import IMAGE_TOKEN
from tinygroundinggpt.images import mean_fill, pad_to_square
from tinygroundinggpt.world import language
from tinygroundinggpt.world.scene import (
    BACKGROUND_KINDS,
    BACKGROUNDS,
    COLOURS,
    DEFAULT_HELDOUT,
    PATTERNS,
    SHAPES,
    SIZES,
    Scene,
    generate_scene,
    render_mirrored,
    render_scene,
)

IMAGE_SIZE = 64  # the encoders' input side and the scenes' long side, unless a recipe says otherwise
PATCH_SIZE = 8  # an 8x8 grid of patch tokens: what the grounding model reads
CAPTIONS_PER_SCENE = 3
# Offset between the seed streams of training and held-out scenes (the benchmark's held-out set).
HELDOUT_OFFSET = 1_000_003


@dataclass
class WorldSample:
    image: Image.Image  # as rendered: long side the size asked (IMAGE_SIZE by default), the scene's aspect ratio
    scene: Scene


def world_samples(seed: int, count: int, image_size: int = IMAGE_SIZE, desc: str = "scenes") -> list[WorldSample]:
    """``count`` scenes drawn from one ``random.Random(seed)`` stream (deterministic by seed)."""
    rng = random.Random(seed)
    return [WorldSample(*generate_scene(rng, image_size)) for _ in tqdm(range(count), desc=desc, unit="scene")]


def grid_side(image_size: int, patch_size: int) -> int:
    """The side of the patch grid of an encoder at ``image_size`` / ``patch_size`` (ValueError if they do not tile)."""
    sizes = (image_size, patch_size)
    if not all(isinstance(s, int) and s > 0 for s in sizes) or image_size % patch_size:
        raise ValueError(f"image_size {image_size!r} must be a positive multiple of patch_size {patch_size!r}")
    return image_size // patch_size


def patch_grid(images: Sequence[Image.Image], image_size: int, patch_size: int) -> int:
    """:func:`grid_side`, after checking that the square ``images`` were drawn at ``image_size``: resized up, they
    would add pixels but no detail."""
    side = grid_side(image_size, patch_size)
    sizes = {im.size for im in images}
    if sizes != {(image_size, image_size)}:
        raise ValueError(f"images are {sorted(sizes)[:3]} px, the recipe's image_size is {image_size}: draw the scenes "
                         "at that size (tgg components renders them at the recipe's image_size)")  # fmt: skip
    return side


def square_images(samples: Sequence[WorldSample], mean: Sequence[float], mirrored: bool = False) -> list[Image.Image]:
    """Each image centred on a square of the encoder's mean colour (reads as zero after normalising); with
    ``mirrored``, each scene mirrored left to right and drawn by the world (``render_mirrored``)."""
    fill = mean_fill(tuple(mean))  # type: ignore[arg-type]
    return [pad_to_square(render_mirrored(s.scene) if mirrored else s.image, fill) for s in samples]


def background_views(
    samples: Sequence[WorldSample], mean: Sequence[float], count: int, seed: int
) -> list[list[Image.Image]]:
    """``count`` lists: each scene drawn again, the same objects on another background (another colour or kind, and
    new noise), square-padded as :func:`square_images` pads; deterministic by ``seed``."""
    rng = random.Random(seed)
    fill = mean_fill(tuple(mean))  # type: ignore[arg-type]
    backgrounds = [(b, k) for b in BACKGROUNDS for k in BACKGROUND_KINDS]
    views = []
    for _ in range(count):
        drawn = []
        for s in samples:
            current = (s.scene.background, s.scene.background_kind)
            background, kind = rng.choice([bk for bk in backgrounds if bk != current])
            scene = replace(s.scene, background=background, background_kind=kind, noise_seed=rng.getrandbits(32))
            drawn.append(pad_to_square(render_scene(scene)[0], fill))
        views.append(drawn)
    return views


def square_labels(sample: WorldSample) -> np.ndarray:
    """The scene's label map (object index, -1 for background and padding) on its square-padded image."""
    scene = sample.scene
    _, labels = render_scene(scene)
    side = square_side(scene.width, scene.height)
    dx, dy = pad_offsets(scene.width, scene.height)
    square = np.full((side, side), -1, dtype=np.int64)
    square[dy : dy + scene.height, dx : dx + scene.width] = labels
    return square


def patch_blocks(square: np.ndarray, patch: int) -> np.ndarray:
    """``(patches, patch*patch)``: a square map cut into ``patch``-px patches in the patch tokens' row-major order."""
    grid = square.shape[0] // patch
    return square.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid * grid, -1)


def patch_coverage(sample: WorldSample, patch: int) -> np.ndarray:
    """Per ``patch``-px patch of the square-padded image, the share of its pixels that objects cover."""
    return (patch_blocks(square_labels(sample), patch) >= 0).mean(1)


def captions(samples: Sequence[WorldSample], seed: int) -> list[list[str]]:
    """A few captions per scene (the template and phrasing vary between draws)."""
    rng = random.Random(seed)
    return [[language.caption(s.scene, rng) for _ in range(CAPTIONS_PER_SCENE)] for s in samples]


def regions(samples: Sequence[WorldSample]) -> list[list[tuple[Box, str]]]:
    """Each scene's objects as (box in the model frame, i.e. of the square-padded image; full phrase)."""
    return [
        [(pixel_to_model(o.box, s.scene.width, s.scene.height), language.object_phrase(o)) for o in s.scene.objects]
        for s in samples
    ]


def box_text(scene: Scene, i: int) -> str:
    """Object ``i``'s box as the LLM reads and writes it (model frame, three decimals)."""
    return format_box(pixel_to_model(scene.objects[i].box, scene.width, scene.height))


def lm_documents(samples: Sequence[WorldSample], seed: int) -> list[Document]:
    """Text of the world for the tiny Qwen2: captions, relations, expressions with boxes, and ChatML
    dialogues in the shapes the grounding stages use (REC, box → object, grounded description, yes/no).

    The boxes are the scenes' real ones, so the coordinates are well formed and plausibly distributed;
    without the image the LM can only learn their form and prior, which is what stage 1 needs.
    """
    rng = random.Random(seed)
    docs: list[Document] = []
    for s in tqdm(samples, desc="LM documents", unit="scene"):
        scene = s.scene
        n = len(scene.objects)
        grounded = ", ".join(f"{language.object_phrase(o)} {box_text(scene, i)}" for i, o in enumerate(scene.objects))
        triples = language.nameable_triples(scene)
        relations = [language.triple_text(scene, t) for t in rng.sample(triples, min(3, len(triples)))]
        docs.append(" ".join([language.caption(scene, rng).capitalize()] + [r.capitalize() + "." for r in relations]))
        exprs = language.all_referring_expressions(scene, rng)
        for e in rng.sample(exprs, min(3, len(exprs))):
            docs.append(_chat(f"Output the coordinate of {e.text}.", box_text(scene, e.target)))
        i = rng.randrange(n)
        answer = f"It is {language.object_phrase(scene.objects[i])}."
        docs.append(_chat(f"What is the object at {box_text(scene, i)}?", answer))
        docs.append(_chat("Describe the image with the coordinates of every object.", grounded + "."))
        # Half the yes/no questions ask about an object of the scene, half about random attributes.
        attrs = rng.choice(scene.objects).attributes() if rng.random() < 0.5 else _random_attributes(rng)
        present = any(o.attributes() == attrs for o in scene.objects)
        asked = language.descriptor_text(attrs, attrs["shape"])
        docs.append(_chat(f"Is there a {asked} in the image?", "Yes." if present else "No."))
    return docs


def _random_attributes(rng: random.Random) -> dict[str, str]:
    """Attributes of an object the world can hold: never a held-out colour-shape pair, which the compositional
    split must be the first to show (asked about here, it would be taught as absent)."""
    while True:
        attrs = {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(list(COLOURS)),
            "pattern": rng.choice(PATTERNS),
            "size": rng.choice(SIZES),
        }
        if (attrs["colour"], attrs["shape"]) not in DEFAULT_HELDOUT:
            return attrs


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}, {"role": "assistant", "content": answer}]
