"""Each filter removes exactly the hand-made samples it should, and says why."""

from __future__ import annotations

from tinygroundinggpt.synthesis.filters import FilterConfig, apply_filters

W, H = 100, 100  # image area 10,000


def sample(sid: str, boxes: list, text: str, scores: list | None = None) -> dict:
    return {
        "id": sid,
        "boxes": boxes,
        "messages": [{"role": "user", "content": "<image>\n" + text}, {"role": "assistant", "content": "a"}],
        "meta": {"scores": scores if scores is not None else [1.0] * len(boxes)},
    }


A = [0, 0, 30, 30]  # 9 % of the image
B = [60, 60, 90, 90]  # disjoint from A
A_SHIFTED = [5, 5, 35, 35]  # IoU with A = 625 / 1175 = 0.53


def test_each_filter_on_hand_made_cases() -> None:
    cases = [
        sample("ok", [A, B], "Which? a. <object:0>; b. <object:1>"),
        sample("tiny", [[0, 0, 9, 10]], "What is <object:0>?"),  # 0.9 %
        sample("huge", [[0, 0, 95, 90]], "What is <object:0>?"),  # 85.5 %
        sample("huge-box-only", [[0, 0, 95, 90]], "Describe <box:0>."),  # no object image: kept
        sample("overlap", [A, A_SHIFTED], "Which? a. <object:0>; b. <object:1>"),
        sample("overlap-box-only", [A, A_SHIFTED], "Is <box:0> left of <box:1>?"),  # kept
        sample("unsure", [A, B], "Where is <box:1>?", scores=[1.0, 0.2]),
        sample("unknown-score", [A], "Where is <box:0>?", scores=[None]),  # model-written box, no match
        sample("crowded", [[i, 0, i + 1, 1] for i in range(11)], "<box:0>"),
        sample("ten", [[i, 0, i + 1, 1] for i in range(10)], "<box:0>"),
    ]
    kept, removed, counts = apply_filters(cases, W, H, FilterConfig())
    assert [s["id"] for s in kept] == ["ok", "huge-box-only", "overlap-box-only", "ten"]
    assert removed == [
        {"id": "tiny", "filter": "object_area", "reason": "object_too_small"},
        {"id": "huge", "filter": "object_area", "reason": "object_too_large"},
        {"id": "overlap", "filter": "object_iou", "reason": "object_iou_too_high"},
        {"id": "unsure", "filter": "confidence", "reason": "low_confidence"},
        {"id": "unknown-score", "filter": "confidence", "reason": "low_confidence"},
        {"id": "crowded", "filter": "box_count", "reason": "too_many_boxes"},
    ]
    assert counts == {
        "object_area/object_too_small": 1,
        "object_area/object_too_large": 1,
        "object_iou/object_iou_too_high": 1,
        "confidence/low_confidence": 2,
        "box_count/too_many_boxes": 1,
    }


def test_thresholds_are_options() -> None:
    cases = [sample("overlap", [A, A_SHIFTED], "a. <object:0>; b. <object:1>")]
    assert apply_filters(cases, W, H, FilterConfig(max_object_iou=0.6))[0] == cases
    assert apply_filters(cases, W, H, FilterConfig(max_object_iou=0.5))[0] == []
    unscored = [sample("unscored", [A, B], "<box:0> <box:1>", scores=[0.9, None])]
    assert apply_filters(unscored, W, H, FilterConfig())[0] == []
    assert apply_filters(unscored, W, H, FilterConfig(keep_unscored=True))[0] == unscored
    tiny = [sample("tiny", [[0, 0, 9, 10]], "<object:0>")]
    assert apply_filters(tiny, W, H, FilterConfig(min_object_area=0.005))[0] == tiny
