"""Open-ended VQA: VQAv2 (EvalAI accuracy) and GQA (exact match), paper Table 2.

Files as published::

    <root>/vqav2/v2_OpenEnded_mscoco_val2014_questions.json   {"questions": [{"question_id", "image_id", "question"}]}
    <root>/vqav2/v2_mscoco_val2014_annotations.json           {"annotations": [{"question_id", "answers": [...10]}]}
    <root>/coco/val2014/COCO_val2014_000000000042.jpg ...
    <root>/gqa/testdev_balanced_questions.json                {qid: {"imageId", "question", "answer", ...}}
    <root>/gqa/images/n161313.jpg ...

VQAv2 test-dev answers have no public labels (the EvalAI server scores them), so the local task is val.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tinygroundinggpt.data.format import SHORT_ANSWER_PROMPT
from tinygroundinggpt.eval.task import Item, Task, register, require

# --- The VQA answer normalisation run by the official evaluation (vqaEval.py, used by EvalAI) ---
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (a typo for a
# lookbehind) that always succeeds, so in effect every period not followed by a digit is removed.
_PERIOD = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
# Canonical contractions; the official table maps each spelling with one apostrophe missing back to
# the canonical form ("dont" → "don't", "couldnt've" → "couldn't've"). Ambiguous words ("its",
# "well", "were", "ill", "id", "shed", "wed") are left alone there and here.
_CANONICAL = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll "
    "how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't "
    "should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll "
    "that's there'd there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll "
    "what're what's what've when's where'd where's where've who'd who'll who's who've why'll why're why's "
    "won't would've wouldn't y'all you'd you'll you're you've couldn't've hadn't've he'd've it'd've "
    "mightn't've she'd've shouldn't've somebody'd've someone'd've something'd've there'd've they'd've "
    "we'd've who'd've wouldn't've you'd've y'all'll y'all'd've 'ow's'at"
).split()


def _contractions() -> dict[str, str]:
    table: dict[str, str] = {}
    for word in _CANONICAL:
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        for i in cuts:
            table[word[:i] + word[i + 1 :]] = word
    table["somebody'd"] = "somebodyd"  # an inverted entry of the official table, kept for identical scores
    return table


_CONTRACTIONS = _contractions()


def _strip_punctuation(text: str) -> str:
    """The official scorer's ``processPunctuation`` (after its whitespace clean-up)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or _COMMA_BETWEEN_DIGITS.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """The official VQA normalisation of an answer: punctuation, periods, then lower case, number words, articles,
    contractions (``processDigitArticle``)."""
    words = []
    for w in _strip_punctuation(text).lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_vqa_prediction(text: str) -> str:
    """A model's answer as LLaVA / lmms-eval hand it to the VQA scorer (EvalAI's answer processor): lower case,
    commas and question marks dropped, "'s" split off, then :func:`normalize_vqa_answer`."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(text)


def vqa_accuracy(answer: str, gt_answers: list[str]) -> float:
    """VQAv2 accuracy in [0, 1]: the mean over the leave-one-out subsets of the human answers of
    min(1, matches / 3). As the official scorer does, the prediction is normalised in full, the human answers only
    stripped of punctuation and only when they disagree (so "two" never matches a predicted "2"; lmms-eval normalises
    them in full and would)."""
    pred = normalize_vqa_prediction(answer)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in gt_answers]
    if len(set(gts)) > 1:
        gts = [_strip_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs) if accs else 0.0


def gqa_match(answer: str, gt: str) -> bool:
    """GQA exact match after LLaVA's clean-up of the prediction (trailing period, case)."""
    return answer.strip().rstrip(".").strip().lower() == gt.strip().lower()


class VQAv2Task(Task):
    family = "vqa"
    headline = "accuracy"
    protocol = "VQAv2 val: official (EvalAI) normalisation, mean over 10 leave-one-out subsets of min(1, matches/3)"

    def load(self, data_root: Path) -> list[Item]:
        root = Path(data_root) / "vqav2"
        qs = json.loads(require(root / "v2_OpenEnded_mscoco_val2014_questions.json", "VQAv2").read_text())
        anns = json.loads(require(root / "v2_mscoco_val2014_annotations.json", "VQAv2").read_text())
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in anns["annotations"]}
        image_dir = Path(data_root) / "coco" / "val2014"
        return [
            Item(
                id=str(q["question_id"]),
                image=str(image_dir / f"COCO_val2014_{q['image_id']:012d}.jpg"),
                prompt=q["question"] + SHORT_ANSWER_PROMPT,
                reference={"answers": answers[q["question_id"]]},
            )
            for q in qs["questions"]
        ]

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        return {"accuracy": vqa_accuracy(answer, item.reference["answers"])}


class GQATask(Task):
    family = "vqa"
    headline = "accuracy"
    protocol = "GQA test-dev balanced: exact match (lower-cased, trailing period dropped)"

    def load(self, data_root: Path) -> list[Item]:
        root = Path(data_root) / "gqa"
        qs = json.loads(require(root / "testdev_balanced_questions.json", "GQA").read_text())
        return [
            Item(
                id=str(qid),
                image=str(root / "images" / f"{q['imageId']}.jpg"),
                prompt=q["question"] + SHORT_ANSWER_PROMPT,
                reference={"answer": q["answer"]},
            )
            for qid, q in qs.items()
        ]

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        return {"accuracy": int(gqa_match(answer, item.reference["answer"]))}


register("vqav2_val", lambda opts: VQAv2Task())
register("gqa_testdev", lambda opts: GQATask())
