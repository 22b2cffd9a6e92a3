"""Evaluation files of the synthetic world in the formats the real benchmarks ship.

* REC as the ``refer`` API (lichengunc/refer) reads it: ``refs(unc).p`` – a pickled list of refs
  ``{ref_id, ann_id, image_id, split, sentences: [{tokens, raw, sent_id, sent, kind}], sent_ids,
  category_id, file_name}`` – and a COCO ``instances.json`` (``images``, ``annotations`` with ``bbox`` in
  COCO ``[x, y, w, h]`` and polygons as ``segmentation``, exactly the visible pixels, ``categories``). Polygons, as
  RefCOCO's own annotations: refer.py's ``getMask`` indexes ``segmentation[0]`` and sums decoded masks over a third
  axis (a single RLE dict fails there), while pycocotools' ``COCO`` reads a list only as polygons.
  ``kind`` in a sentence is our addition (the expression kind, for per-kind accuracy); ``file_name``
  is the image's own file name.
* POPE as its repository ships question files: JSON lines ``{"question_id", "image", "text", "label"}``
  named ``coco_pope_{random,popular,adversarial}.json``; per image up to three present objects
  ("yes") and as many absent ones ("no"), absent ones drawn at random, by frequency (popular) or by
  co-occurrence with each present one in turn (adversarial), as POPE builds them.
"""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygroundinggpt.boxes import xyxy_to_xywh
from tinygroundinggpt.world.language import Expression
from tinygroundinggpt.world.scene import SHAPES, Scene

CATEGORIES = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
POPE_STRATEGIES = ("random", "popular", "adversarial")
POPE_PER_IMAGE = 3
POPE_QUESTION = "Is there a {} in the image?"
REFS_FILE = "refs(unc).p"


@dataclass
class EvalImage:
    """One evaluation scene: its image id, file name, scene graph, expressions and each object's visible
    pixels as COCO polygons (see :func:`visible_polygons`)."""

    image_id: int
    file_name: str
    scene: Scene
    polygons: list[list[list[int]]]
    expressions: list[Expression]
    split: str


def visible_polygons(labels: np.ndarray, n_objects: int) -> list[list[list[int]]]:
    """Each object's visible pixels, from a label map of :func:`render_scene`, as COCO polygons that rasterise back to
    exactly those pixels: one rectangle (on pixel edges) per run of columns, over each band of rows whose runs agree."""
    out = []
    for i in range(n_objects):
        mask = labels == i
        polygons: list[list[int]] = []
        band: tuple[tuple[int, int], ...] = ()
        top = 0
        for y in range(mask.shape[0] + 1):
            runs = _runs(mask[y]) if y < mask.shape[0] else ()
            if runs != band:
                polygons += [[x0, top, x1, top, x1, y, x0, y] for x0, x1 in band]
                band, top = runs, y
        out.append(polygons)
    return out


def _runs(row: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The ``[x0, x1)`` runs of True in a boolean row."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


def write_refer(folder: str | Path, images: Sequence[EvalImage]) -> dict[str, int]:
    """Write ``refs(unc).p`` and ``instances.json`` into ``folder``; returns counts per split."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    coco_images, annotations, refs = [], [], []
    sent_id = 0
    counts: Counter[str] = Counter()
    for im in images:
        coco_images.append(
            {"id": im.image_id, "file_name": im.file_name, "width": im.scene.width, "height": im.scene.height}
        )
        for i, obj in enumerate(im.scene.objects):
            ann_id = len(annotations) + 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": im.image_id,
                    "category_id": CATEGORY_ID[obj.shape],
                    "bbox": list(xyxy_to_xywh(obj.box)),
                    "area": sum((p[2] - p[0]) * (p[5] - p[1]) for p in im.polygons[i]),  # disjoint rectangles
                    "iscrowd": 0,
                    "segmentation": im.polygons[i],
                }
            )
            exprs = [e for e in im.expressions if e.target == i]
            if not exprs:
                continue
            sentences = []
            for e in exprs:
                sentences.append(
                    {"tokens": e.text.split(), "raw": e.text, "sent_id": sent_id, "sent": e.text, "kind": e.kind}
                )
                sent_id += 1
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": im.image_id,
                    "split": im.split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "category_id": CATEGORY_ID[obj.shape],
                    "file_name": im.file_name,
                }
            )
            counts[im.split] += len(sentences)
    instances = {
        "info": {"description": "TinyGroundingGPT synthetic world"},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    # Protocol 2: the refer API's own files are Python-2 pickles; any Python reads this one.
    (folder / REFS_FILE).write_bytes(pickle.dumps(refs, protocol=2))
    return dict(sorted(counts.items()))


def pope_questions(images: Sequence[EvalImage], strategy: str, rng: random.Random) -> list[dict]:
    """POPE questions over ``images`` (object = shape category) with one negative-sampling strategy."""
    present = [sorted({o.shape for o in im.scene.objects}) for im in images]
    frequency = Counter(s for p in present for s in p)
    cooccur: Counter[tuple[str, str]] = Counter((a, b) for p in present for a in p for b in p if a != b)
    questions: list[dict] = []
    for im, gt in zip(images, present, strict=True):
        absent = [s for s in SHAPES if s not in gt]
        k = min(POPE_PER_IMAGE, len(gt), len(absent))
        positives = rng.sample(gt, k)
        if strategy == "random":
            negatives = rng.sample(absent, k)
        elif strategy == "popular":
            negatives = sorted(absent, key=lambda s: (-frequency[s], SHAPES.index(s)))[:k]
        elif strategy == "adversarial":  # as POPE's code: per positive, its most frequent absent partner not yet used
            negatives = []
            for pos in positives:
                left = [s for s in absent if s not in negatives]
                negatives.append(min(left, key=lambda s, p=pos: (-cooccur[(p, s)], SHAPES.index(s))))
        else:
            raise ValueError(f"unknown POPE strategy {strategy!r}; expected one of {POPE_STRATEGIES}")
        for pos, neg in zip(positives, negatives, strict=True):
            for obj, label in ((pos, "yes"), (neg, "no")):
                questions.append(
                    {
                        "question_id": len(questions) + 1,
                        "image": im.file_name,
                        "text": POPE_QUESTION.format(obj),
                        "label": label,
                    }
                )
    return questions


def write_pope(folder: str | Path, images: Sequence[EvalImage], seed: int) -> dict[str, int]:
    """Write ``coco_pope_{strategy}.json`` (JSON lines) for the three strategies; returns question counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for strategy in POPE_STRATEGIES:
        questions = pope_questions(images, strategy, random.Random(f"tgg-world/{seed}/pope/{strategy}"))
        text = "".join(json.dumps(q) + "\n" for q in questions)
        (folder / f"coco_pope_{strategy}.json").write_text(text, encoding="utf-8")
        counts[strategy] = len(questions)
    return counts
