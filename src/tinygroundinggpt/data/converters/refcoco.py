"""RefCOCO / RefCOCO+ / RefCOCOg from the files the ``refer`` API ships: ``refs(unc).p`` (or
``refs(umd).p``, ``refs(google).p``) and ``instances.json``.

A refs file is a pickled list of ``{ref_id, ann_id, image_id, split, sentences: [{sent_id, sent, raw,
tokens}], category_id, ...}``; ``ann_id`` indexes ``instances.json``'s COCO ``annotations`` whose
``bbox`` is ``[x, y, w, h]`` in image pixels; ``images`` give ``file_name``, ``width``, ``height``.
Each sentence becomes a REC sample (the paper's prompt, "Output the coordinate of <exp>") and/or a
region-description sample (Fig. 10, post-process 1a).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tinygroundinggpt.boxes import ANNOTATION_OVERSHOOT, BoxError, validate_pixel_box, xywh_to_xyxy
from tinygroundinggpt.data.converters.common import (
    NO_EXCLUSION,
    ConvertReport,
    ReferEvalImages,
    load_json,
    load_refs,
    write_samples,
)
from tinygroundinggpt.data.format import Sample

REC_PROMPT = "Output the coordinate of {exp}"
REG_PROMPT = "Describe the object located within the region <box:0>."
TASKS = ("rec", "reg")
TRAIN_SPLIT = "train"


def iter_refcoco(
    refs: Sequence[dict[str, Any]],
    instances: dict[str, Any],
    report: ConvertReport,
    *,
    dataset: str = "refcoco",
    split: str | None = TRAIN_SPLIT,
    tasks: Sequence[str] = TASKS,
    image_prefix: str = "",
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
) -> Iterator[Sample]:
    """The samples of one split (``None``: every split, evaluation ones included); refs on an image that
    ``exclude`` holds (another refs file's val/test image) are skipped."""
    anns = {a["id"]: a for a in instances["annotations"]}
    imgs = {i["id"]: i for i in instances["images"]}
    for ref in tqdm(refs, desc=dataset, unit="ref", disable=not progress):
        if split is not None and ref.get("split") != split:
            continue
        if exclude.drops(ref["image_id"], report, len(ref["sentences"]) * len(tasks)):
            continue
        ann, img = anns.get(ref["ann_id"]), imgs.get(ref["image_id"])
        if ann is None or img is None:
            report.skip("annotation or image missing from instances.json", f"ref {ref.get('ref_id')}")
            continue
        w, h = int(img["width"]), int(img["height"])
        try:
            # COCO boxes are floats that can overshoot the border by a fraction of a pixel.
            box = validate_pixel_box(xywh_to_xyxy(ann["bbox"]), w, h, repair=True, max_overshoot=ANNOTATION_OVERSHOOT)
        except BoxError as exc:
            report.skip(f"box {exc.kind}", f"ref {ref.get('ref_id')} (annotation {ref['ann_id']})")
            continue
        for sent in ref["sentences"]:
            text = (sent.get("sent") or sent.get("raw") or "").strip()
            if not text:
                report.skip("empty sentence", f"ref {ref.get('ref_id')} sentence {sent.get('sent_id')}")
                continue
            turns = {
                "rec": (REC_PROMPT.format(exp=text), "<box:0>"),
                "reg": (REG_PROMPT, text),
            }
            for task in tasks:
                q, a = turns[task]
                yield Sample(
                    id=f"{dataset}-{ref['ref_id']}-{sent['sent_id']}-{task}",
                    image=image_prefix + img["file_name"],
                    width=w,
                    height=h,
                    boxes=[box],
                    messages=[{"role": "user", "content": "<image>\n" + q}, {"role": "assistant", "content": a}],
                    meta={"source": dataset, "split": ref.get("split"), "ref_id": ref["ref_id"]},
                )


def convert_refcoco(refs_path: str | Path, instances_path: str | Path, out: str | Path, **kwargs: Any) -> ConvertReport:
    """Write the samples of one split of a refs file (the train split by default) to ``out``; see
    :func:`iter_refcoco`. A split the file does not hold is an error, not an empty output."""
    split = kwargs.get("split", TRAIN_SPLIT)
    refs = load_refs(refs_path)
    splits = sorted({str(r.get("split")) for r in refs})
    if split is not None and split not in splits:
        raise ValueError(f"{refs_path} has no split {split!r}; its splits: {', '.join(splits) or 'none (no refs)'}")
    if split != TRAIN_SPLIT:
        # Every split but train is what the REC benchmarks score (Table 1): never train on it.
        warnings.warn(
            f"converting RefCOCO/+/g split {split or 'all'!r}: it holds evaluation data, do not train on it",
            stacklevel=2,
        )
    report = ConvertReport()
    instances = load_json(instances_path)
    return write_samples(out, iter_refcoco(refs, instances, report, **kwargs), report)
