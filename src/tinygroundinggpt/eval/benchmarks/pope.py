"""POPE object-hallucination probes, random / popular / adversarial (paper Table 8, Table 2's POPE).

Files as the POPE repository ships them, one JSON object per line, plus COCO val2014 images::

    <root>/pope/coco_pope_random.json        {"question_id", "image", "text", "label": "yes"|"no"}
    <root>/pope/coco_pope_popular.json
    <root>/pope/coco_pope_adversarial.json
    <root>/coco/val2014/COCO_val2014_000000310196.jpg ...

The synthetic world writes the same files (``<root>/eval/pope/``, images in ``<root>/images/``), read
by the ``world_pope_*`` tasks.

Answer rule of LLaVA's ``eval_pope.py``: keep the text before the first period, drop commas, split on
spaces; the words "no", "No" or "not" make it a no, anything else a yes. Metrics: accuracy, precision,
recall and F1 of "yes", and the yes-ratio of the *predictions* (lmms-eval's POPE counts the labels'
yes-ratio instead, which is always 50 % and says nothing about the model), and, as a diagnostic, the share
of answers that do not start with yes or no (``not_yes_or_no``: the rule scores "The." as a yes, which
once hid that a model never answered the question). Table 2's single POPE number
is the mean F1 of the three splits (TinyGroundingGPT-3B: (89.47 + 87.90 + 86.22) / 3 = 87.9).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinygroundinggpt.data.format import SHORT_ANSWER_PROMPT
from tinygroundinggpt.eval.task import DataError, Item, Task, register, require

SPLITS = ("random", "popular", "adversarial")
NO_WORDS = {"no", "No", "not"}


def pope_answer_is_yes(answer: str) -> bool:
    """LLaVA's rule: first sentence, commas removed, split on single spaces; a no-word means no."""
    first = answer.split(".")[0]
    words = first.replace(",", "").split(" ")
    return not NO_WORDS.intersection(words)


def pope_answer_is_yes_or_no(answer: str) -> bool:
    """Whether the answer starts with the word yes or no (any case). Not part of LLaVA's rule, which scores
    "The." as a yes: a diagnostic, so that a model that does not answer the question is seen as such."""
    words = answer.strip().split(maxsplit=1)
    return bool(words) and words[0].strip(".,!").lower() in ("yes", "no")


def pope_metrics(predicted_yes: list[bool], label_yes: list[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class "yes") and the predictions' yes-ratio, in %.

    Precision (recall) is 0 when nothing is predicted (labelled) yes, where LLaVA's script divides by 0.
    """
    tp = sum(p and t for p, t in zip(predicted_yes, label_yes, strict=True))
    fp = sum(p and not t for p, t in zip(predicted_yes, label_yes, strict=True))
    fn = sum(t and not p for p, t in zip(predicted_yes, label_yes, strict=True))
    tn = len(label_yes) - tp - fp - fn
    n = len(label_yes)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(predicted_yes) / n if n else 0.0,
    }


class POPETask(Task):
    family = "pope"
    headline = "f1"
    max_new_tokens = 16

    def __init__(self, split: str, folder: str = "pope", image_dir: str = "coco/val2014") -> None:
        self.split, self.folder, self.image_dir = split, folder, image_dir
        self.protocol = f"POPE {split}: LLaVA eval_pope.py answer rule; yes-ratio of predictions"

    def load(self, data_root: Path) -> list[Item]:
        path = require(Path(data_root) / self.folder / f"coco_pope_{self.split}.json", f"POPE {self.split}")
        image_dir = Path(data_root) / self.image_dir
        items = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            q = json.loads(line)
            if q.get("label") not in ("yes", "no"):
                raise DataError(f"{path}:{lineno}: label must be 'yes' or 'no', got {q.get('label')!r}")
            items.append(
                Item(
                    id=str(q["question_id"]),
                    image=str(image_dir / q["image"]),
                    prompt=q["text"] + SHORT_ANSWER_PROMPT,
                    reference={"label": q["label"]},
                )
            )
        return items

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        return {
            "pred_yes": pope_answer_is_yes(answer),
            "label_yes": item.reference["label"] == "yes",
            "yes_or_no": pope_answer_is_yes_or_no(answer),
        }

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        if not scores:  # every item failed: no figure rather than zeros
            return {}
        out = pope_metrics([s["pred_yes"] for s in scores], [s["label_yes"] for s in scores])
        out["not_yes_or_no"] = 100.0 * sum(not s["yes_or_no"] for s in scores) / len(scores) if scores else 0.0
        return out


for _split in SPLITS:
    register(f"pope_{_split}", lambda opts, s=_split: POPETask(s))
    register(f"world_pope_{_split}", lambda opts, s=_split: POPETask(s, "eval/pope", "images"))
