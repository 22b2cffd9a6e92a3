"""Sample filters (paper §3.2 "Filter"): each removes samples for one reason and says how many and why.

Thresholds default to the paper's intent: object images neither tiny (low-resolution noise) nor
nearly the whole image, option objects that barely overlap (no reference ambiguity, Fig. 10 step 4),
boxes the grounder was confident about, and not too many boxes in one sample. A box with no
grounding score (one the model wrote that matches no grounded object) fails the confidence filter
unless ``keep_unscored``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tinygroundinggpt.boxes import area, iou
from tinygroundinggpt.data.format import OBJECT_REF_RE


@dataclass
class FilterConfig:
    min_object_area: float = 0.01  # object image area / image area
    max_object_area: float = 0.8
    max_object_iou: float = 0.3  # between any two object images of one sample
    min_confidence: float = 0.35  # grounding score of every box a sample uses
    keep_unscored: bool = False  # keep boxes with no grounding score (model-written, matching no object)
    max_boxes: int = 10


def object_indices(sample: dict[str, Any]) -> list[int]:
    """Boxes used as object images (``<object:i>``), in first-use order."""
    seen: list[int] = []
    for m in sample["messages"]:
        for ref in OBJECT_REF_RE.findall(m["content"]):
            if int(ref) not in seen:
                seen.append(int(ref))
    return seen


# Each check returns the reason a sample fails, or None.
Check = Callable[[dict[str, Any], int, int, FilterConfig], str | None]


def _object_area(sample: dict[str, Any], width: int, height: int, cfg: FilterConfig) -> str | None:
    for i in object_indices(sample):
        frac = area(sample["boxes"][i]) / (width * height)
        if frac < cfg.min_object_area:
            return "object_too_small"
        if frac > cfg.max_object_area:
            return "object_too_large"
    return None


def _object_iou(sample: dict[str, Any], width: int, height: int, cfg: FilterConfig) -> str | None:
    objs = [sample["boxes"][i] for i in object_indices(sample)]
    if any(iou(a, b) > cfg.max_object_iou for a, b in itertools.combinations(objs, 2)):
        return "object_iou_too_high"
    return None


def _confidence(sample: dict[str, Any], width: int, height: int, cfg: FilterConfig) -> str | None:
    scores = sample.get("meta", {}).get("scores", [])
    if any(s < cfg.min_confidence if s is not None else not cfg.keep_unscored for s in scores):
        return "low_confidence"
    return None


def _box_count(sample: dict[str, Any], width: int, height: int, cfg: FilterConfig) -> str | None:
    return "too_many_boxes" if len(sample["boxes"]) > cfg.max_boxes else None


FILTERS: dict[str, Check] = {
    "object_area": _object_area,
    "object_iou": _object_iou,
    "confidence": _confidence,
    "box_count": _box_count,
}


def apply_filters(
    samples: Sequence[dict[str, Any]], width: int, height: int, cfg: FilterConfig
) -> tuple[list[dict[str, Any]], list[dict[str, str]], Counter[str]]:
    """Run the filters in order; a sample is removed by the first one it fails.

    Returns the kept samples, one ``{"id", "filter", "reason"}`` record per removed sample, and the
    count of removals per ``filter/reason``.
    """
    kept, removed, counts = [], [], Counter()
    for s in samples:
        for fname, check in FILTERS.items():
            reason = check(s, width, height, cfg)
            if reason is not None:
                removed.append({"id": s["id"], "filter": fname, "reason": reason})
                counts[f"{fname}/{reason}"] += 1
                break
        else:
            kept.append(s)
    return kept, removed, counts
