"""COCO ``instances_*.json`` (+ optional ``captions_*.json``) → a synthesis manifest for ``tgg synth``.

This is the paper's "boxes/categories of an existing annotation" route to object recognition: each
non-crowd annotation becomes an object named by its category with its ``bbox`` (``[x, y, w, h]``
pixels, converted to the pixel frame), and the image's captions become the description material.
``exclude`` drops the RefCOCO/+/g val/test images (all train2014 images).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tinygroundinggpt.boxes import ANNOTATION_OVERSHOOT, BoxError, validate_pixel_box, xywh_to_xyxy
from tinygroundinggpt.data.converters.common import NO_EXCLUSION, ConvertReport, ReferEvalImages, load_json


def convert_coco_manifest(
    instances_path: str | Path,
    out: str | Path,
    *,
    captions_path: str | Path | None = None,
    image_prefix: str = "",
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> ConvertReport:
    report = ConvertReport()
    instances = load_json(instances_path)
    source = Path(instances_path).name
    missing = [k for k in ("categories", "annotations", "images") if k not in instances]
    if missing:
        raise ValueError(f"{instances_path}: not a COCO instances file (no {', '.join(missing)})")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in instances["annotations"]:
        if ann.get("iscrowd"):
            report.skip("crowd annotation", f"{source} annotation {ann.get('id')}")
            continue
        if not all(k in ann for k in ("id", "image_id", "bbox", "category_id")):
            report.skip("annotation without id, image_id, bbox or category_id", f"{source} annotation {ann.get('id')}")
            continue
        by_image[ann["image_id"]].append(ann)
    captions: dict[int, list[str]] = defaultdict(list)
    if captions_path:
        for cap in load_json(captions_path)["annotations"]:
            captions[cap["image_id"]].append(" ".join(cap["caption"].split()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for img in tqdm(instances["images"], desc="coco", unit="img", disable=not progress):
            if exclude.drops(img["id"], report):
                continue
            w, h = int(img["width"]), int(img["height"])
            objects = []
            for ann in sorted(by_image.get(img["id"], []), key=lambda a: a["id"]):
                try:
                    box = validate_pixel_box(
                        xywh_to_xyxy(ann["bbox"]), w, h, repair=True, max_overshoot=ANNOTATION_OVERSHOOT
                    )
                except BoxError as exc:
                    report.skip(f"box {exc.kind}", f"{source} annotation {ann['id']}")
                    continue
                if ann["category_id"] not in names:
                    report.skip("unknown category", f"{source} annotation {ann['id']}")
                    continue
                objects.append({"name": names[ann["category_id"]], "box": list(box)})
            if not objects:
                report.skip("image without objects", f"{source} image {img['id']}")
                continue
            record = {"id": f"coco-{img['id']}", "image": image_prefix + img["file_name"], "width": w, "height": h,
                      "objects": objects, "captions": captions.get(img["id"], [])}  # fmt: skip
            fh.write(json.dumps(record) + "\n")
            report.written += 1
    tmp.replace(out)
    return report
