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
    RecordError,
    ReferEvalImages,
    iter_json_array,
    number,
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


def _image_id(rec: dict[str, Any], fallback: Any, what: str) -> int:
    value = rec.get("image_id", fallback)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{what} without an integer 'image_id'")
    return value


def _field(rec: dict[str, Any], key: str, what: str) -> Any:
    if rec.get(key) is None:
        raise RecordError(f"{what} without {key!r}")
    return rec[key]


def load_image_data(path: str | Path, report: ConvertReport, *, image_prefix: str = "") -> dict[int, VGImage]:
    """image id → :class:`VGImage`; an entry without an id or a size is skipped (its regions then count as
    on an image not in image_data.json)."""
    out = {}
    name = Path(path).name
    for i, rec in enumerate(iter_json_array(path)):
        try:
            if not isinstance(rec, dict):
                raise RecordError("image_data entry not an object")
            iid = _image_id(rec, rec.get("id"), "image_data entry")
            w, h = (int(number(rec, k, "image_data entry")) for k in ("width", "height"))
        except RecordError as exc:
            report.skip(str(exc), f"{name}[{i}]")
            continue
        coco_id = None if rec.get("coco_id") is None else int(rec["coco_id"])
        url = rec.get("url") or ""
        rel = "/".join(url.split("/")[-2:]) if url.count("/") >= 1 else f"{iid}.jpg"
        out[iid] = VGImage(image_prefix + rel, w, h, coco_id)
    return out


def _box(obj: Any, w: int, h: int, wkey: str, hkey: str, what: str) -> Box:
    xywh = [number(obj, k, what) for k in ("x", "y", wkey, hkey)]
    # Visual Genome's boxes often reach well past the border (crowd-drawn); clamped, as its own tools do. A negative
    # width or height stays an error: swapped, it would be a box nobody drew.
    return validate_pixel_box(xywh_to_xyxy(xywh), w, h, repair=True)


def _name(obj: dict[str, Any]) -> str:
    names = obj.get("names")
    name = names[0] if isinstance(names, list) and names else obj.get("name", "")
    return " ".join(str(name).split())


def _entries(path: str | Path, key: str, report: ConvertReport, progress: bool) -> Iterator[tuple[str, Any, list]]:
    """Each entry of a per-image VG file with its ``key`` list, and where it is (``file[i]``); an entry without such a
    list is skipped."""
    name = Path(path).name
    for i, entry in enumerate(iter_json_array(path, progress=progress)):
        items = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(items, list):
            report.skip(f"entry without a {key!r} list", f"{name}[{i}]")
            continue
        yield f"{name}[{i}]", entry, items


def iter_regions(
    regions_path: str | Path,
    images: dict[int, VGImage],
    report: ConvertReport,
    *,
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> Iterator[Sample]:
    for at, entry, regions in _entries(regions_path, "regions", report, progress):
        for j, reg in enumerate(regions):
            where = f"{at}.regions[{j}]"
            try:
                if not isinstance(reg, dict):
                    raise RecordError("region not an object")
                iid = _image_id(reg, entry.get("id"), "region")
                if iid not in images:
                    report.skip("image not in image_data.json", where)
                    continue
                image, w, h, coco_id = images[iid]
                if exclude.drops(coco_id, report, len(REGION_PROMPTS)):
                    continue
                region_id = _field(reg, "region_id", "region")
                box = _box(reg, w, h, "width", "height", "region")
            except RecordError as exc:
                report.skip(str(exc), where)
                continue
            except BoxError as exc:
                report.skip(f"box {exc.kind}", where)
                continue
            phrase = " ".join(str(reg.get("phrase", "")).split())
            if not phrase:
                report.skip("empty phrase", where)
                continue
            for k, (q, a) in enumerate(REGION_PROMPTS):
                yield Sample(
                    id=f"vg-region-{region_id}-{k}",
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
    for at, entry, rels in _entries(rel_path, "relationships", report, progress):
        try:
            iid = _image_id(entry, entry.get("id"), "entry")
        except RecordError as exc:
            report.skip(str(exc), at, len(rels))
            continue
        if iid not in images:
            report.skip("image not in image_data.json", at, len(rels))
            continue
        image, w, h, coco_id = images[iid]
        if exclude.drops(coco_id, report, len(rels)):
            continue
        for j, rel in enumerate(rels):
            where = f"{at}.relationships[{j}]"
            try:
                if not isinstance(rel, dict):
                    raise RecordError("relationship not an object")
                rel_id = _field(rel, "relationship_id", "relationship")
                subj, obj = rel.get("subject"), rel.get("object")
                boxes = [_box(subj, w, h, "w", "h", "subject"), _box(obj, w, h, "w", "h", "object")]
            except RecordError as exc:
                report.skip(str(exc), where)
                continue
            except BoxError as exc:
                report.skip(f"box {exc.kind}", where)
                continue
            predicate = " ".join(str(rel.get("predicate", "")).split()).lower()
            if not predicate or not _name(subj) or not _name(obj):
                report.skip("empty predicate or name", where)
                continue
            yield Sample(
                id=f"vg-relation-{rel_id}",
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
    images = load_image_data(image_data, report, image_prefix=image_prefix)
    it = {"regions": iter_regions, "relationships": iter_relationships}[kind]
    return write_samples(out, it(path, images, report, exclude=exclude, progress=progress), report)
