"""Scoring rules against hand-computed cases, including each protocol's edge cases (no model needed)."""

from __future__ import annotations

import pytest

from tinygroundinggpt.eval.benchmarks.choice import extract_choice, llava_sqa_choice, mmbench_circular
from tinygroundinggpt.eval.benchmarks.judged import (
    DescQualityTask,
    LLaVABenchTask,
    parse_desc_scores,
    parse_review_scores,
)
from tinygroundinggpt.eval.benchmarks.mme import MMETask, mme_parse, mme_subtask_scores
from tinygroundinggpt.eval.benchmarks.pope import POPETask, pope_answer_is_yes, pope_answer_is_yes_or_no, pope_metrics
from tinygroundinggpt.eval.benchmarks.rec import RECTask, score_rec
from tinygroundinggpt.eval.benchmarks.vqa import gqa_match, normalize_vqa_answer, vqa_accuracy
from tinygroundinggpt.eval.report import markdown
from tinygroundinggpt.eval.task import Item

# A 200x100 image: padded to a 200x200 square with 50 px above and below, so the model frame's
# y = (pixel y + 50) / 200 and x = pixel x / 200.
W, H = 200, 100
GT = (20.0, 10.0, 60.0, 50.0)  # model frame: [0.100, 0.300, 0.300, 0.500]


class TestREC:
    def test_exact_box_in_the_model_frame_is_a_hit(self):
        s = score_rec("It is at [0.100, 0.300, 0.300, 0.500].", GT, W, H)
        assert s["iou"] == pytest.approx(1.0)
        assert all(s[f"acc@{t}"] == 1 for t in (0.1, 0.5, 0.9)) and s["center_acc"] == 1
        assert (s["unparseable"], s["multi_box"], s["inverted"]) == (0, 0, 0)

    def test_the_same_numbers_read_as_normalised_to_width_height_miss(self):
        # The GroundingGPT-reproduction bug: GT normalised by W, H is [0.1, 0.1, 0.3, 0.5]; as a model-frame
        # answer that is pixels (20, -30, 60, 50), reaching into the padding: IoU = 40*40 / (40*80) = 0.5 ...
        s = score_rec("[0.100, 0.100, 0.300, 0.500]", GT, W, H)
        assert s["iou"] == pytest.approx(0.5)
        # ... and on the other axis it is worse: [0.1, 0.3, 0.3, 0.7] → pixels (20, 10, 60, 90): IoU 40*40/(40*80)
        s = score_rec("[0.100, 0.300, 0.300, 0.700]", GT, W, H)
        assert s["iou"] == pytest.approx(0.5)

    def test_partial_overlap_thresholds_and_centre(self):
        # Predicted pixels (40, 10, 80, 50): intersection 20*40 = 800, union 1600 + 1600 - 800 → IoU 1/3.
        s = score_rec("[0.200, 0.300, 0.400, 0.500]", GT, W, H)
        assert s["iou"] == pytest.approx(1 / 3)
        assert [s[f"acc@{t}"] for t in (0.1, 0.2, 0.3, 0.4, 0.5)] == [1, 1, 1, 0, 0]
        assert s["center_acc"] == 1  # centre (60, 30) on GT's right edge counts as inside, as in lmms-eval
        # Pixels (50, 10, 90, 50): intersection 10*40 = 400, union 3200 - 400 → IoU 1/7, centre (70, 30) outside.
        s = score_rec("[0.250, 0.300, 0.450, 0.500]", GT, W, H)
        assert s["iou"] == pytest.approx(1 / 7) and s["acc@0.1"] == 1 and s["acc@0.2"] == 0 and s["center_acc"] == 0

    def test_several_boxes_first_one_counts(self):
        s = score_rec("[0.600, 0.600, 0.900, 0.700] and [0.100, 0.300, 0.300, 0.500]", GT, W, H)
        assert s["multi_box"] == 1 and s["iou"] == 0.0 and s["acc@0.5"] == 0

    def test_no_box_is_an_unparseable_miss(self):
        s = score_rec("The dog on the left.", GT, W, H)
        assert s["unparseable"] == 1 and s["iou"] == 0.0 and s["acc@0.1"] == 0 and s["center_acc"] == 0

    def test_inverted_box_is_a_miss(self):
        s = score_rec("[0.300, 0.500, 0.100, 0.300]", GT, W, H)
        assert s["inverted"] == 1 and s["iou"] == 0.0 and s["center_acc"] == 0

    @pytest.mark.parametrize("answer", ["[0, 0, 640, 480]", "[0.0, 0.0, 5.0, 5.0]", "[0.100, 0.300, 0.300, 1.500]"])
    def test_numbers_outside_the_model_frame_are_a_miss_not_the_whole_image(self, answer):
        # Clamped into the image these would cover all of it, a hit for any box of at least half its area.
        big = (0.0, 0.0, float(W), float(H) * 0.9)
        s = score_rec(answer, big, W, H, others=[GT])
        assert s["out_of_range"] == 1 and s["iou"] == 0.0 and s["acc@0.1"] == 0 and s["center_acc"] == 0
        assert s["no_object"] == 1 and s["wrong_object"] == 0
        assert score_rec("[0.000, 0.250, 1.000, 0.700]", big, W, H)["iou"] == pytest.approx(
            1.0
        )  # the same, in the frame

    def test_a_box_reaching_into_the_padding_is_scored_as_written_not_clamped(self):
        # 640x427: 106 px of padding above and 107 below. [0, 0, 1, 0.33] is pixels (0, -106, 640, 105.2): clamped
        # to the image it would be (0, 0, 640, 105.2), IoU 0.95 with a (0, 0, 640, 100) object; as written 100/211.2.
        s = score_rec("[0.000, 0.000, 1.000, 0.330]", (0.0, 0.0, 640.0, 100.0), 640, 427)
        assert s["iou"] == pytest.approx(100 / 211.2) and s["acc@0.5"] == 0
        # a box wholly in the padding: no overlap, and its centre is not on the object at the image's top edge
        s = score_rec("[0.200, 0.000, 0.400, 0.100]", (100.0, 0.0, 300.0, 50.0), 640, 427)
        assert s["iou"] == 0.0 and s["center_acc"] == 0

    def test_a_miss_is_told_apart_as_on_another_object_or_on_none(self):
        other = (120.0, 10.0, 160.0, 50.0)  # model frame [0.600, 0.300, 0.800, 0.500]
        answers = ("[0.100, 0.300, 0.300, 0.500]", "[0.600, 0.300, 0.800, 0.500]", "[0.350, 0.300, 0.550, 0.500]", "no")
        scores = [score_rec(a, GT, W, H, others=[other]) for a in answers]
        assert [(s["acc@0.5"], s["wrong_object"], s["no_object"]) for s in scores] == [
            (1, 0, 0),  # the right object
            (0, 1, 0),  # another annotated object: the expression was misread
            (0, 0, 1),  # between the two: on no object
            (0, 0, 1),  # no box at all
        ]
        agg = RECTask("refcoco", "refs(unc).p", "coco/train2014", "val").aggregate(scores)
        assert agg["miss_on_wrong_object"] == pytest.approx(25.0) and agg["miss_on_no_object"] == pytest.approx(50.0)
        # with no other object annotated (a one-object image), every miss is on no object, and the split is kept
        alone = [score_rec(a, GT, W, H) for a in answers]
        assert [(s["wrong_object"], s["no_object"]) for s in alone] == [(0, 0), (0, 1), (0, 1), (0, 1)]
        agg = RECTask("refcoco", "refs(unc).p", "coco/train2014", "val").aggregate(scores[:2] + alone[2:])
        assert agg["miss_on_wrong_object"] == pytest.approx(25.0) and agg["miss_on_no_object"] == pytest.approx(50.0)

    def test_aggregate_percentages_and_counts(self):
        task = RECTask("refcoco", "refs(unc).p", "coco/train2014", "val")
        scores = [score_rec(a, GT, W, H) for a in ("[0.100, 0.300, 0.300, 0.500]", "nothing", "[0.2, 0.3, 0.4, 0.5]")]
        agg = task.aggregate(scores)
        assert agg["acc@0.5"] == pytest.approx(100 / 3)
        assert agg["acc@0.3"] == pytest.approx(200 / 3)
        assert agg["miou"] == pytest.approx(100 * (1 + 0 + 1 / 3) / 3)
        assert agg["unparseable"] == 1 and isinstance(agg["unparseable"], int)


class TestPOPE:
    @pytest.mark.parametrize(
        ("answer", "yes"),
        [
            ("No, there is not a dog in the image.", False),
            ("Yes, there is a dog.", True),
            ("There is no dog.", False),
            ("I do not see one", False),
            ("Yes. There is no cat though.", True),  # only the first sentence counts
            ("Nope", True),  # LLaVA's rule looks for the words no/No/not only
            ("NO", True),
            ("", True),
        ],
    )
    def test_answer_rule(self, answer, yes):
        assert pope_answer_is_yes(answer) is yes

    def test_metrics_use_predicted_yes_ratio(self):
        # preds Y Y Y N, labels Y N N N: TP 1, FP 2, TN 1, FN 0.
        m = pope_metrics([True, True, True, False], [True, False, False, False])
        assert m["accuracy"] == pytest.approx(50.0)
        assert m["precision"] == pytest.approx(100 / 3)
        assert m["recall"] == pytest.approx(100.0)
        assert m["f1"] == pytest.approx(50.0)
        assert m["yes_ratio"] == pytest.approx(75.0)  # the labels' yes ratio would be 25

    @pytest.mark.parametrize(
        ("answer", "yes_or_no"),
        [("Yes", True), ("no.", True), ("No, there is not.", True), ("NO", True), ("The.", False), ("", False),
         ("Nope", False), ("There is no cat.", False)],
    )  # fmt: skip
    def test_yes_or_no_diagnostic(self, answer, yes_or_no):
        assert pope_answer_is_yes_or_no(answer) is yes_or_no

    def test_task_reports_answers_that_are_not_yes_or_no(self):
        task = POPETask("adversarial")
        items = [Item(id=str(k), image="x.png", prompt="?", reference={"label": "no"}) for k in range(4)]
        scores = [task.score(a, it) for a, it in zip(["The.", "No", "yes", "A star."], items, strict=True)]
        m = task.aggregate(scores)
        assert m["not_yes_or_no"] == pytest.approx(50.0) and m["yes_ratio"] == pytest.approx(75.0)

    def test_nothing_predicted_yes_does_not_divide_by_zero(self):
        m = pope_metrics([False, False], [True, False])
        assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 50.0


class TestVQA:
    @pytest.mark.parametrize(
        ("raw", "norm"),
        [
            ("Two", "2"),
            ("none", "0"),
            ("the dog", "dog"),
            ("A man.", "man"),
            ("yes!", "yes"),
            ("3.5", "3.5"),
            ("1,000", "1000"),
            ("red, white", "red white"),
            ("black/white", "black white"),
            ("dont", "don't"),
            ("couldnt've", "couldn't've"),
            ("  Left\n", "left"),
        ],
    )
    def test_normalisation(self, raw, norm):
        assert normalize_vqa_answer(raw) == norm

    def test_accuracy_over_leave_one_out_subsets(self):
        gts = ["2"] * 3 + ["3"] * 7
        # For each of the 3 "2"s left out, 2 matches remain → 2/3; for each "3" left out, 3 remain → 1.
        assert vqa_accuracy("two", gts) == pytest.approx((3 * 2 / 3 + 7) / 10)
        assert vqa_accuracy("3", gts) == pytest.approx(1.0)
        assert vqa_accuracy("4", gts) == 0.0
        # One human said "cat": left out it gives 0, every other subset has one match → 1/3.
        assert vqa_accuracy("Cat.", ["cat"] + ["dog"] * 9) == pytest.approx(9 / 3 / 10)

    def test_human_answers_are_normalised_only_when_they_disagree(self):
        # The official scorer's rule: ten identical answers stay as written, the prediction is processed.
        assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0  # "t shirt" against "t-shirt"
        assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"]) == pytest.approx(1.0)
        assert vqa_accuracy("What's it? Yes.", ["what 's it yes"] * 10) == pytest.approx(1.0)

    def test_disagreeing_human_answers_lose_only_their_punctuation(self):
        # vqaEval.py applies processPunctuation, not processDigitArticle, to the human answers: a predicted "2"
        # (any "two" becomes "2") matches only the humans who wrote "2", and "a dog" keeps its article.
        assert vqa_accuracy("2", ["two"] * 8 + ["2", "3"]) == pytest.approx(0.3)
        assert vqa_accuracy("dog", ["a dog"] * 8 + ["cat", "dog"]) == pytest.approx(0.3)
        assert vqa_accuracy("red white", ["red, white"] * 8 + ["red", "white"]) == pytest.approx(1.0)

    def test_gqa_exact_match(self):
        assert gqa_match("Yes.", "yes") and gqa_match(" left ", "left")
        assert not gqa_match("left side", "left")


class TestChoice:
    OPTIONS = {"A": "dog", "B": "cat", "C": "bird", "D": "fish"}

    @pytest.mark.parametrize(
        ("answer", "letter"),
        [
            ("B", "B"),
            ("B.", "B"),
            ("(C) bird", "C"),
            ("D) fish", "D"),
            ("The answer is D.", "D"),
            ("I think it is B", "B"),
            ("A cat sits on the mat", "B"),  # "A" is the article; the option text decides
            ("A", "A"),
            ("E", None),
            ("a dog or a cat", None),  # two option texts
            ("", None),
        ],
    )
    def test_extract_choice(self, answer, letter):
        assert extract_choice(answer, self.OPTIONS) == letter

    @pytest.mark.parametrize(
        ("answer", "letter"),
        [
            ("B", "B"),
            (" C ", "C"),
            ("C. bird", "C"),
            ("Looking at the picture. The answer is D.", "D"),
            ("I think\nThe answer is B.", "B"),
            ("The answer is B", None),  # LLaVA's pattern wants a character after the letter
            ("The answer is B. The answer is C.", None),  # two readings: a miss
            ("B\nbecause it flies", None),
            ("B.", None),  # LLaVA needs "B. " with the space, or the letter alone
            ("(C) bird", None),
            ("the answer is D.", None),  # case as written
            ("cat", None),  # no option text
            ("AB", None),
            ("E", None),  # not one of this question's options
            ("", None),
        ],
    )
    def test_llava_sqa_choice(self, answer, letter):
        assert llava_sqa_choice(answer, self.OPTIONS) == letter

    def test_mmbench_circular_needs_every_rotation(self):
        def s(group, rotation, hit):
            return {"group": group, "rotation": rotation, "hit": hit, "unparseable": 0, "category": "c"}

        scores = [s(1, 0, 1), s(1, 1, 1), s(1, 2, 0), s(1, 3, 1), s(2, 0, 1), s(2, 1, 1)]
        out = mmbench_circular(scores)
        assert out["circular_accuracy"] == 50.0  # group 1 misses one rotation
        assert out["single_pass_accuracy"] == 100.0  # both originals were right
        assert out["category/c"] == 50.0


class TestMME:
    @pytest.mark.parametrize(
        ("answer", "parsed"),
        [
            ("Yes", "yes"),
            ("no", "no"),
            ("No, it is not.", "no"),
            ("yes.", "yes"),
            ("There is a dog", "other"),
            (" yes", "yes"),
        ],
    )
    def test_parse(self, answer, parsed):
        assert mme_parse(answer) == parsed

    def test_acc_plus_needs_both_questions_of_an_image(self):
        def s(image, correct, subtask="existence"):
            return {"subtask": subtask, "image": image, "correct": correct}

        per = mme_subtask_scores([s("a", 1), s("a", 1), s("b", 1), s("b", 0)])
        assert per["existence"] == {"acc": 75.0, "acc+": 50.0, "score": 125.0}
        agg = MMETask().aggregate([s("a", 1), s("a", 1), s("b", 1), s("b", 0), s("x", 1, "count"), s("x", 0, "count")])
        assert agg["perception"] == pytest.approx(125.0 + 50.0)  # count: acc 50, acc+ 0
        # no cognition subtask ran, so there is no cognition score (not a score of 0)
        assert agg["perception_subtasks"] == 2 and "cognition" not in agg and agg["unparseable"] == 0

    def test_unparseable_answers_are_counted_and_all_failed_is_no_metric(self):
        task = MMETask()
        items = [Item(id=str(i), image=None, prompt="q", reference={"answer": "yes", "subtask": "existence",
                                                                     "image": "a"}) for i in range(2)]  # fmt: skip
        scores = [task.score("Yes", items[0]), task.score("There is a dog", items[1])]
        agg = task.aggregate(scores)
        assert agg["unparseable"] == 1 and agg["existence/acc"] == 50.0
        assert task.aggregate([]) == {}

    @pytest.mark.parametrize(("subtasks", "cell"), [(2, "| 175.0 (2/10) |"), (10, "| 175.0 |")])
    def test_table2_says_when_mme_p_sums_fewer_than_ten_subtasks(self, subtasks, cell):
        entry = {"metrics": {"perception": 175.0, "perception_subtasks": subtasks}, "protocol": "MME",
                 "n_scored": 4, "n_items": 4, "n_failed": 0, "failed": []}  # fmt: skip
        md = markdown({"model": "m", "tasks": {"mme": entry}})
        table2 = md.split("layout of Table 2")[1].split("##")[0]
        assert cell in table2

    @pytest.mark.parametrize(("splits", "cell"), [(1, "| 80.0 (1/3) |"), (3, "| 80.0 |")])
    def test_table2_says_when_pope_averages_fewer_than_three_splits(self, splits, cell):
        entry = {"metrics": {"f1": 80.0}, "protocol": "POPE", "n_scored": 4, "n_items": 4, "n_failed": 0, "failed": []}
        tasks = {t: entry for t in ("pope_random", "pope_popular", "pope_adversarial")[:splits]}
        table2 = markdown({"model": "m", "tasks": tasks}).split("layout of Table 2")[1].split("##")[0]
        assert cell in table2


class TestJudgeParsing:
    def test_review_scores(self):
        assert parse_review_scores("8 6\nAssistant 1 is better.") == (8.0, 6.0)
        assert parse_review_scores("7.5, 9") == (7.5, 9.0)
        assert parse_review_scores("Assistant 1: 8") is None
        assert parse_review_scores("") is None

    def test_a_judged_task_whose_items_all_failed_has_no_metrics(self):
        assert LLaVABenchTask(judge=None).aggregate([]) == {}
        assert DescQualityTask(judge=None).aggregate([]) == {}

    def test_desc_scores(self):
        reply = '"Quality": "4", "Richness": "3", "Accuracy": "5", "Justification": "ok".'
        assert parse_desc_scores(reply) == {"quality": 4.0, "richness": 3.0, "accuracy": 5.0}
        assert parse_desc_scores('"Quality": "4", "Richness": "3"') is None
