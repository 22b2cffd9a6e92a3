"""Writers for the published benchmark layouts the loaders read, so any scene set (the synthetic
world, a user's own images) can be evaluated by exactly the code that evaluates RefCOCO and POPE.

Boxes come in the storage frame: original-image pixels ``[x1, y1, x2, y2]``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tinygroundinggpt import boxes


@dataclass
class Referent:
    """One object referred to by one or more expressions, in one image of one split."""

    image: str  # file name under <root>/coco/train2014/
    width: int
    height: int
    box: Sequence[float]  # pixels, x1 y1 x2 y2
    expressions: list[str]
    split: str
    category_id: int = 1


def write_refer(root: str | Path, dataset: str, referents: list[Referent]) -> Path:
    """``<root>/<dataset>/refs(unc|umd).p`` + ``instances.json`` as the refer API ships them."""
    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    image_ids: dict[str, int] = {}
    images, annotations, refs = [], [], []
    sent_id = 0
    for ref_id, r in enumerate(referents):
        if r.image not in image_ids:
            image_ids[r.image] = len(image_ids) + 1
            images.append({"id": image_ids[r.image], "file_name": r.image, "width": r.width, "height": r.height})
        x, y, w, h = boxes.xyxy_to_xywh(r.box)
        ann_id = len(annotations) + 1
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_ids[r.image],
                "bbox": [x, y, w, h],
                "area": w * h,
                "category_id": r.category_id,
                "iscrowd": 0,
            }
        )
        sentences = []
        for text in r.expressions:
            sentences.append({"sent_id": sent_id, "sent": text, "raw": text, "tokens": text.split()})
            sent_id += 1
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": image_ids[r.image],
                "split": r.split,
                "sentences": sentences,
                "sent_ids": [s["sent_id"] for s in sentences],
                "category_id": r.category_id,
                "file_name": r.image,
            }
        )
    refs_name = "refs(umd).p" if dataset == "refcocog" else "refs(unc).p"
    with (folder / refs_name).open("wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    return folder


def write_pope(root: str | Path, split: str, questions: list[tuple[str, str, str]]) -> Path:
    """``<root>/pope/coco_pope_<split>.json``: one ``{"question_id", "image", "text", "label"}`` a line,
    from (image file name under coco/val2014/, question, "yes"|"no")."""
    path = Path(root) / "pope" / f"coco_pope_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"question_id": i + 1, "image": image, "text": text, "label": label})
        for i, (image, text, label) in enumerate(questions)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
