"""Post-processing on the paper's own example replies (Figs. 10-12) and on ambiguous groundings."""

from __future__ import annotations

import pytest

from tinygroundinggpt.boxes import norm_to_pixel
from tinygroundinggpt.synthesis.filters import FilterConfig, apply_filters
from tinygroundinggpt.synthesis.postprocess import (
    conversation_sample,
    description_sample,
    template_samples,
    text_image_samples,
)
from tinygroundinggpt.synthesis.replies import MalformedReply, parse_qa_reply

W, H = 1000, 500
GIRL = list(norm_to_pixel([0.019, 0.302, 0.285, 0.678], W, H))
DRESS = list(norm_to_pixel([0.019, 0.380, 0.227, 0.596], W, H))
HOUSE = list(norm_to_pixel([0.069, 0.014, 0.997, 0.774], W, H))
GROUNDING = [
    {"name": "the girl", "box": GIRL, "score": 0.9},
    {"name": "a pink dress", "box": DRESS, "score": 0.3},
    {"name": "playhouse", "box": HOUSE, "score": 0.8},
]

# Fig. 11's example reply, in its own Python quoting.
FIG11 = """[{ 'question' : 'What clothes is <the girl> [0.019, 0.302, 0.285, 0.678] wearing?' ,
  'answer' : '<The girl> is wearing <a pink dress> [0.019, 0.380, 0.227, 0.596].' },
{ 'question' : 'Why is this <girl> climbing the stairs?' ,
  'answer' : ' She is going to enter her <playhouse> [0.069, 0.014, 0.997, 0.774].' }]"""


def test_fig11_example_becomes_a_grounded_conversation() -> None:
    sample, problems = conversation_sample("img", parse_qa_reply(FIG11)[0], GROUNDING, W, H, object_rate=0.0)
    assert problems == []
    assert sample["boxes"] == [[19.0, 151.0, 285.0, 339.0], [19.0, 190.0, 227.0, 298.0], [69.0, 7.0, 997.0, 387.0]]
    assert sample["meta"]["scores"] == [0.9, 0.3, 0.8]  # matched to the grounded boxes
    contents = [m["content"] for m in sample["messages"]]
    assert contents[:4] == [
        "<image>\nWhat clothes is the girl <box:0> wearing?",
        "The girl is wearing a pink dress <box:1>.",
        "Why is this girl climbing the stairs?",
        "She is going to enter her playhouse <box:2>.",
    ]
    # Fig. 11 post-process 1: location turns for the grounded mentions.
    assert contents[4:6] == ["What is the girl? Specify the location.", "It's the girl <box:0>."]
    # Fig. 11 post-process 3: with object_rate=1 every named box in a question is an object image.
    sample, _ = conversation_sample("img", parse_qa_reply(FIG11)[0], GROUNDING, W, H, object_rate=1.0)
    assert sample["messages"][0]["content"] == "<image>\nWhat clothes is <object:0> wearing?"


def test_fig12_example_becomes_a_grounded_description() -> None:
    text = (
        "A child[0.019, 0.302, 0.285, 0.678] in a pink dress[0.019, 0.38, 0.227, 0.596] is going into her "
        "playhouse[0.069, 0.014, 0.997, 0.774], which appears to be a wooden playhouse[0.069, 0.014, 0.997, 0.774]."
    )
    sample = description_sample("img", text, GROUNDING, W, H)
    assert len(sample["boxes"]) == 3  # the repeated playhouse box is one box
    assert sample["messages"][1]["content"] == (
        "A child<box:0> in a pink dress<box:1> is going into her playhouse<box:2>, which appears to be a "
        "wooden playhouse<box:2>."
    )


def test_fig10_examples_become_text_image_pairs() -> None:
    grounding = [
        {"name": "blue hat", "box": [10, 10, 60, 40], "score": 0.9},
        {"name": "newspaper", "box": [100, 100, 200, 180], "score": 0.9},
        {"name": "cane", "box": [300, 50, 330, 400], "score": 0.9},
    ]
    qas = [
        {"question": "Can you identify <blue hat> is worn by whom? A. the left woman B. the right man",
         "answer": "The answer is B. the right man."},
        {"question": "What is the right man wearing blue jacket reading? A. <newspaper> B. <cane>",
         "answer": "The answer is A. newspaper."},
        {"question": "Who holds <umbrella>?", "answer": "nobody"},
    ]  # fmt: skip
    samples, problems = text_image_samples("img", "object_in_question", qas, grounding, W, H)
    assert [p.kind for p in problems] == ["object_not_in_list"]
    assert samples[0]["messages"][0]["content"].endswith("Can you identify <object:0> is worn by whom? A. the left "
                                                         "woman B. the right man")  # fmt: skip
    assert samples[1]["messages"][0]["content"].endswith("reading? A. <object:0> B. <object:1>")
    assert samples[1]["boxes"] == [[100, 100, 200, 180], [300, 50, 330, 400]]


def test_bare_boxes_in_fig10_qas_become_box_references() -> None:
    qas = [
        {"question": "What is <playhouse> next to? A. a tree B. a car", "answer": "A. the tree [0.5, 0.2, 0.7, 0.6]."},
        {"question": "Is <the girl> at [0.019, 0.302, 0.285, 0.678] or [0.1, 0.2, 1.4, 0.3]?", "answer": "the first"},
    ]
    samples, problems = text_image_samples("img", "object_in_question", qas, GROUNDING, W, H)
    assert [p.kind for p in problems] == ["box_out_of_range"]
    assert samples[0]["messages"][1]["content"] == "A. the tree <box:1>."
    assert samples[0]["boxes"] == [HOUSE, list(norm_to_pixel([0.5, 0.2, 0.7, 0.6], W, H))]
    assert samples[0]["meta"]["scores"] == [0.8, None]  # a box that matches no grounded object has no score


def test_two_objects_grounded_to_one_box_are_filtered_as_ambiguous() -> None:
    same = [10, 10, 60, 60]
    grounding = [{"name": "cat", "box": same, "score": 0.9}, {"name": "dog", "box": same, "score": 0.9}]
    qas = [{"question": "Which is asleep? A. <cat> B. <dog>", "answer": "A"}]
    samples, _ = text_image_samples("img", "objects_as_options", qas, grounding, 100, 100)
    samples += [s for s in template_samples("img", grounding) if s["id"].startswith("img-ic-0b")]
    assert [len(s["boxes"]) for s in samples] == [2, 2]
    kept, removed, _ = apply_filters(samples, 100, 100, FilterConfig())
    assert kept == [] and {r["reason"] for r in removed} == {"object_iou_too_high"}


def test_coordinates_spelled_otherwise_drop_their_qa_and_never_reach_the_text() -> None:
    # Text never holds coordinates: numbers left in brackets once the [a, b, c, d] boxes are <box:i> are
    # coordinates in the prompts' frame, and the QA or description holding them goes, counted as bad_box.
    where = "Where is <the girl> [0.019, 0.302, 0.285, 0.678]?"
    for answer in (
        "It is at [0.019 0.302 0.285 0.678].",
        "It is at (0.019, 0.302, 0.285, 0.678).",
        "It is at [0.019, 0.302, 0.285, 0.678, 0.9].",
        "Its centre is at (0.15, 0.49).",
    ):
        sample, problems = conversation_sample("img", [{"question": where, "answer": answer}], GROUNDING, W, H)
        assert sample is None and [p.kind for p in problems] == ["bad_box"], answer
    qas = [
        {"question": "What is <playhouse> next to?", "answer": "A tree at [0.5 0.2 0.7 0.6]."},
        {"question": "Is <the girl> at (0.019, 0.302, 0.285, 0.678)?", "answer": "Yes."},
        {"question": "Is <the girl> in step (1) or [2]?", "answer": "In step (1)."},  # no coordinates: kept
    ]
    samples, problems = text_image_samples("img", "object_in_question", qas, GROUNDING, W, H)
    assert [p.kind for p in problems] == ["bad_box", "bad_box"]
    assert [s["messages"][1]["content"] for s in samples] == ["In step (1)."]
    with pytest.raises(MalformedReply) as exc:
        description_sample("img", "A girl [0.019, 0.302, 0.285, 0.678] by a house at [0.069 0.014 0.997 0.774].",
                           GROUNDING, W, H)  # fmt: skip
    assert exc.value.kind == "bad_box" and "[0.069 0.014 0.997 0.774]" in str(exc.value)
