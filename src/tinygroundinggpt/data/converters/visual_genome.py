"""Visual Genome from its published JSON files.

* ``image_data.json`` – ``[{image_id (or id), width, height, url, ...}]``: sizes, and the folder
  (``VG_100K`` or ``VG_100K_2``) taken from the url;
* ``region_descriptions.json`` – ``[{id, regions: [{region_id, image_id, phrase, x, y, width, height}]}]``;
* ``relationships.json`` – ``[{image_id, relationships: [{relationship_id, predicate, subject, object}]}]``
  where subject and object carry ``x, y, w, h`` and ``name`` (or ``names``).

Boxes are ``[x, y, w, h]`` pixels, converted to the pixel frame and clamped (VG boxes often cross the
border). Region descriptions give text–coordinate pairs both ways; relationships give a sentence
grounding both objects. About half of VG's images are COCO images (``coco_id``): ``exclude`` drops those
that the RefCOCO/+/g val/test splits use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tinygroundinggpt.boxes import Box, BoxError, validate_pixel_box, xywh_to_xyxy
from tinygroundinggpt.data.converters.common import (
    NO_EXCLUSION,
    ConvertReport,
    ReferEvalImages,
    iter_json_array,
    write_samples,
)
from tinygroundinggpt.data.format import Sample

REGION_PROMPTS = (
    ("Describe the object located within the region <box:0>.", "{phrase}"),
    ("In this image, where is {phrase} located?", "<box:0>"),
)
RELATION_PROMPT = "What is the relationship between the objects in <box:0> and <box:1>?"


class VGImage(NamedTuple):
    path: str
    width: int
    height: int
    coco_id: int | None


def load_image_data(path: str | Path, *, image_prefix: str = "") -> dict[int, VGImage]:
    """image id → :class:`VGImage`."""
    out = {}
    for rec in iter_json_array(path):
        iid = int(rec.get("image_id", rec.get("id")))
        coco_id = None if rec.get("coco_id") is None else int(rec["coco_id"])
        url = rec.get("url") or ""
        rel = "/".join(url.split("/")[-2:]) if url.count("/") >= 1 else f"{iid}.jpg"
        out[iid] = VGImage(image_prefix + rel, int(rec["width"]), int(rec["height"]), coco_id)
    return out


def _box(obj: dict[str, Any], w: int, h: int, wkey: str, hkey: str) -> Box:
    # Visual Genome's boxes often reach well past the border (crowd-drawn); clamped, as its own tools do. A negative
    # width or height stays an error: swapped, it would be a box nobody drew.
    return validate_pixel_box(xywh_to_xyxy([obj["x"], obj["y"], obj[wkey], obj[hkey]]), w, h, repair=True)


def _name(obj: dict[str, Any]) -> str:
    names = obj.get("names") or [obj.get("name", "")]
    return " ".join(str(names[0]).split())


def iter_regions(
    regions_path: str | Path,
    images: dict[int, VGImage],
    report: ConvertReport,
    *,
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> Iterator[Sample]:
    for entry in iter_json_array(regions_path, progress=progress):
        for reg in entry.get("regions", []):
            iid = int(reg.get("image_id", entry.get("id")))
            if iid not in images:
                report.skipped["image not in image_data.json"] += 1
                continue
            image, w, h, coco_id = images[iid]
            if exclude.drops(coco_id, report, len(REGION_PROMPTS)):
                continue
            phrase = " ".join(str(reg.get("phrase", "")).split())
            try:
                box = _box(reg, w, h, "width", "height")
            except BoxError as exc:
                report.skipped[f"box {exc.kind}"] += 1
                continue
            if not phrase:
                report.skipped["empty phrase"] += 1
                continue
            for k, (q, a) in enumerate(REGION_PROMPTS):
                yield Sample(
                    id=f"vg-region-{reg['region_id']}-{k}",
                    image=image, width=w, height=h, boxes=[box],
                    messages=[
                        {"role": "user", "content": "<image>\n" + q.format(phrase=phrase)},
                        {"role": "assistant", "content": a.format(phrase=phrase)},
                    ],
                    meta={"source": "visual_genome", "image_id": iid},
                )  # fmt: skip


def iter_relationships(
    rel_path: str | Path,
    images: dict[int, VGImage],
    report: ConvertReport,
    *,
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> Iterator[Sample]:
    for entry in iter_json_array(rel_path, progress=progress):
        iid = int(entry.get("image_id", entry.get("id", -1)))
        if iid not in images:
            report.skipped["image not in image_data.json"] += len(entry.get("relationships", []))
            continue
        image, w, h, coco_id = images[iid]
        if exclude.drops(coco_id, report, len(entry.get("relationships", []))):
            continue
        for rel in entry.get("relationships", []):
            subj, obj = rel["subject"], rel["object"]
            predicate = " ".join(str(rel.get("predicate", "")).split()).lower()
            try:
                boxes = [_box(subj, w, h, "w", "h"), _box(obj, w, h, "w", "h")]
            except BoxError as exc:
                report.skipped[f"box {exc.kind}"] += 1
                continue
            if not predicate or not _name(subj) or not _name(obj):
                report.skipped["empty predicate or name"] += 1
                continue
            yield Sample(
                id=f"vg-relation-{rel['relationship_id']}",
                image=image, width=w, height=h, boxes=boxes,
                messages=[
                    {"role": "user", "content": "<image>\n" + RELATION_PROMPT},
                    {"role": "assistant", "content": f"{_name(subj)} <box:0> {predicate} {_name(obj)} <box:1>."},
                ],
                meta={"source": "visual_genome", "image_id": iid},
            )  # fmt: skip


def convert_vg(
    kind: str,
    path: str | Path,
    image_data: str | Path,
    out: str | Path,
    *,
    image_prefix: str = "",
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> ConvertReport:
    """``kind`` is ``"regions"`` (region_descriptions.json) or ``"relationships"`` (relationships.json)."""
    report = ConvertReport()
    images = load_image_data(image_data, image_prefix=image_prefix)
    it = {"regions": iter_regions, "relationships": iter_relationships}[kind]
    return write_samples(out, it(path, images, report, exclude=exclude, progress=progress), report)
