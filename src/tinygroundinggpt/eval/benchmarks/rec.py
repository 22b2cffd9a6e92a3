"""Referring expression comprehension on RefCOCO, RefCOCO+ and RefCOCOg (paper Table 1).

Files, as the ``refer`` API ships them (lichengunc/refer) plus COCO train2014 images::

    <root>/refcoco/refs(unc).p    <root>/refcoco/instances.json
    <root>/refcoco+/refs(unc).p   <root>/refcoco+/instances.json
    <root>/refcocog/refs(umd).p   <root>/refcocog/instances.json
    <root>/coco/train2014/COCO_train2014_000000000009.jpg ...

The built-in synthetic world (:func:`tinygroundinggpt.world.build.write_world`) writes the same files;
its tasks (``world_rec_val``, ``world_rec_test``, ``world_rec_compositional_{val,test}``) read them from
``<root>/eval/rec*/`` with images in ``<root>/images/``, and add accuracy per expression kind.

One item per referring expression (sentence), as every published number counts them. The model
answers in its own frame (normalised to the image padded to a centred square); the box is mapped back
to the original image with :func:`tinygroundinggpt.boxes.model_to_pixel` and compared with the COCO
ground truth there, not clamped to the image: a box reaching into the padding keeps its whole area (clamping can
only raise IoU; Shikra's, GroundingGPT's and lmms-eval's scorers take the box as written). Scoring follows lmms-eval's
``refcoco_bbox_rec``: the first ``[a, b, c, d]`` in
the answer counts, an answer without one is a miss (reported as ``unparseable``), and besides the
headline Acc@0.5 we report mean IoU, Acc@{0.1, ..., 0.9} and centre accuracy (the predicted box's
centre inside the ground-truth box).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinygroundinggpt import boxes
from tinygroundinggpt.data.converters.refcoco import load_refs
from tinygroundinggpt.eval.task import Item, Task, register, require

THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))

PAPER_PROMPT = "Output the coordinate of {exp}"
# lmms-eval's refcoco_bbox_rec wording, for comparing with numbers produced by that harness.
LMMS_PROMPT = (
    "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
    "bottom-right y). All values are floating point numbers bounded between 0 and 1. Please provide "
    "the bounding box coordinate of the region this sentence describes: {exp}"
)
PROMPTS = {"paper": PAPER_PROMPT, "lmms": LMMS_PROMPT}

# dataset folder → (refs file, splits of Table 1)
DATASETS = {
    "refcoco": ("refs(unc).p", ("val", "testA", "testB")),
    "refcoco+": ("refs(unc).p", ("val", "testA", "testB")),
    "refcocog": ("refs(umd).p", ("val", "test")),
}


def score_rec(
    answer: str, gt_box: boxes.Box, width: int, height: int, others: Sequence[boxes.Box] = ()
) -> dict[str, Any]:
    """Score one REC answer against a ground-truth box in original-image pixels.

    Returns IoU, a hit per threshold, centre hit and flags saying what the answer looked like
    (``unparseable``: no box; ``multi_box``: several, the first counted; ``inverted``: x2 < x1 or
    y2 < y1, which has no area and so scores 0; ``out_of_range``: a number outside [0, 1], so no box in the
    model frame — pixels, say — which scores 0 rather than being clamped to the whole image). Given the
    image's ``others`` (every other annotated object), a miss at IoU 0.5 is also told apart: ``wrong_object``
    when the box is on another object (IoU ≥ 0.5 with it: the expression was misread), ``no_object`` when it
    is on none (localisation).
    """
    found = boxes.parse_boxes(answer)
    out: dict[str, Any] = {
        "unparseable": int(not found), "multi_box": int(len(found) > 1), "inverted": 0, "out_of_range": 0,
    }  # fmt: skip
    usable = False
    if found:
        first = found[0]
        out["inverted"] = int(first[2] < first[0] or first[3] < first[1])
        out["out_of_range"] = int(not boxes.in_model_frame(first))
        usable = not out["out_of_range"]
    if usable:
        pred = boxes.model_to_pixel(first, width, height, clamp=False)
        iou = boxes.iou(pred, gt_box)
        centre_hit = not out["inverted"] and boxes.contains_point(gt_box, boxes.center(pred))
    else:
        iou, centre_hit = 0.0, False
    out["iou"] = iou
    on_other = usable and not out["inverted"] and any(boxes.iou(pred, b) >= 0.5 for b in others)
    out["wrong_object"] = int(iou < 0.5 and on_other)
    out["no_object"] = int(iou < 0.5 and not on_other)  # with no other object annotated, every miss is this
    for t in THRESHOLDS:
        out[f"acc@{t}"] = int(iou >= t)
    out["center_acc"] = int(centre_hit)
    return out


def _read_refer(
    folder: str, refs_name: str
) -> tuple[list[dict], dict[int, dict], dict[int, dict], dict[int, list[dict]]]:
    """refs, annotations by id, images by id, and each image's annotations (parsed once per version of the files: a
    world rewritten into the same folder is read again)."""
    root = Path(folder)
    refs_path = require(root / refs_name, "REC refs")
    inst_path = require(root / "instances.json", "REC instances")
    stamps = tuple((st.st_size, st.st_mtime_ns) for st in (refs_path.stat(), inst_path.stat()))
    return _parse_refer(refs_path, inst_path, stamps)


@functools.lru_cache(maxsize=4)
def _parse_refer(
    refs_path: Path, inst_path: Path, stamps: tuple
) -> tuple[list[dict], dict[int, dict], dict[int, dict], dict[int, list[dict]]]:
    refs = load_refs(refs_path)  # plain data only: a refs pickle cannot run code here
    inst = json.loads(inst_path.read_text(encoding="utf-8"))
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    on_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        on_image.setdefault(a["image_id"], []).append(a)
    return refs, anns, images, on_image


class RECTask(Task):
    family = "rec"
    headline = "acc@0.5"
    max_new_tokens = 48

    def __init__(self, folder: str, refs_name: str, image_dir: str, split: str, prompt: str = "paper") -> None:
        if prompt not in PROMPTS:
            raise ValueError(f"REC prompt must be one of {sorted(PROMPTS)}, got {prompt!r}")
        self.folder, self.refs_name, self.image_dir = folder, refs_name, image_dir
        self.split, self.prompt = split, PROMPTS[prompt]
        self.protocol = (
            f"{folder} {split}: one item per expression; first box in the answer, model frame → original pixels; "
            f"hit = IoU ≥ 0.5 (lmms-eval refcoco_bbox_rec scoring); prompt: {prompt}"
        )

    def load(self, data_root: Path) -> list[Item]:
        refs, anns, images, on_image = _read_refer(str(Path(data_root) / self.folder), self.refs_name)
        image_dir = Path(data_root) / self.image_dir
        items = []
        for ref in refs:
            if ref["split"] != self.split:
                continue
            ann = anns[ref["ann_id"]]
            im = images[ref["image_id"]]
            gt = boxes.xywh_to_xyxy(ann["bbox"])
            others = [list(boxes.xywh_to_xyxy(a["bbox"])) for a in on_image[ref["image_id"]] if a["id"] != ann["id"]]
            for sent in ref["sentences"]:
                reference = {"box": list(gt), "expression": sent["sent"], "others": others}
                if "kind" in sent:  # the synthetic world labels each expression's kind
                    reference["kind"] = sent["kind"]
                items.append(
                    Item(
                        id=f"{ref['ref_id']}-{sent['sent_id']}",
                        image=str(image_dir / im["file_name"]),
                        prompt=self.prompt.format(exp=sent["sent"]),
                        reference=reference,
                        width=im["width"],
                        height=im["height"],
                    )
                )
        return items

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        assert item.width is not None and item.height is not None, "the runner fills in the image size"
        others = [tuple(b) for b in item.reference.get("others", ())]
        out = score_rec(answer, tuple(item.reference["box"]), item.width, item.height, others)
        if "kind" in item.reference:
            out["kind"] = item.reference["kind"]
        return out

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        n = len(scores)
        if not n:
            return {}
        out = {"acc@0.5": 100.0 * sum(s["acc@0.5"] for s in scores) / n}
        out["miou"] = 100.0 * sum(s["iou"] for s in scores) / n
        for t in THRESHOLDS:
            out[f"acc@{t}"] = 100.0 * sum(s[f"acc@{t}"] for s in scores) / n
        out["center_acc"] = 100.0 * sum(s["center_acc"] for s in scores) / n
        for flag in ("unparseable", "multi_box", "inverted", "out_of_range"):
            out[flag] = sum(s[flag] for s in scores)  # counts, not percentages
        # what the misses were, as percentages of all items
        out["miss_on_wrong_object"] = 100.0 * sum(s["wrong_object"] for s in scores) / n
        out["miss_on_no_object"] = 100.0 * sum(s["no_object"] for s in scores) / n
        for kind in sorted({s["kind"] for s in scores if "kind" in s}):
            hits = [s["acc@0.5"] for s in scores if s.get("kind") == kind]
            out[f"acc@0.5/{kind}"] = 100.0 * sum(hits) / len(hits)
        return out


def _register(name: str, folder: str, refs_name: str, image_dir: str, split: str) -> None:
    register(name, lambda opts: RECTask(folder, refs_name, image_dir, split, opts.rec_prompt))


for _ds, (_refs, _splits) in DATASETS.items():
    for _split in _splits:
        _register(f"{_ds}_{_split}", _ds, _refs, "coco/train2014", _split)
for _folder in ("rec", "rec_compositional"):
    for _split in ("val", "test"):
        _register(f"world_{_folder}_{_split}", f"eval/{_folder}", "refs(unc).p", "images", _split)
