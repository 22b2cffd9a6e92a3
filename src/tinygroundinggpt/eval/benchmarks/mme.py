"""MME (paper Table 2's MME^P): yes/no questions, two per image, 14 subtasks.

Files as the MME release ships them (``MME_Benchmark_release_version``), one folder per subtask,
each image with a ``.txt`` of ``question<TAB>Yes|No`` lines, either side by side or split into
``images/`` and ``questions_answer_YES_NO/``::

    <root>/mme/existence/000000006040.jpg  <root>/mme/existence/000000006040.txt
    <root>/mme/artwork/images/10002.jpg    <root>/mme/artwork/questions_answer_YES_NO/10002.txt

The prompt is the question without its " Please answer yes or no." and with LLaVA's short-answer instruction,
as LLaVA-1.5 and lmms-eval ask it. Scoring follows MME's ``calculation.py``: the answer is "yes"/"no" when it is
exactly that or its first four characters contain it, else "other" (wrong); per subtask acc = right questions and
acc+ = images with both questions right, each in %, score = acc + acc+; perception = the sum over its 10
subtasks (maximum 2000), cognition over its 4 (maximum 800).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tinygroundinggpt.data.format import SHORT_ANSWER_PROMPT
from tinygroundinggpt.eval.task import DataError, Item, Task, register, require

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
YES_NO_SUFFIX = " Please answer yes or no."


def mme_prompt(question: str) -> str:
    """The question as LLaVA-1.5 / lmms-eval ask it."""
    return question.replace(YES_NO_SUFFIX, "").strip() + SHORT_ANSWER_PROMPT


def mme_parse(answer: str) -> str:
    """MME's reading of an answer: "yes", "no" or "other"."""
    text = answer.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_subtask_scores(scores: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per subtask: acc, acc+ (every question of the image right) and score = acc + acc+, in %."""
    by_task: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for s in scores:
        by_task[s["subtask"]][s["image"]].append(s["correct"])
    out = {}
    for task, images in by_task.items():
        answers = [c for cs in images.values() for c in cs]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(cs) for cs in images.values()) / len(images)
        out[task] = {"acc": acc, "acc+": acc_plus, "score": acc + acc_plus}
    return out


def _question_files(folder: Path) -> list[tuple[Path, Path]]:
    """(image, questions.txt) pairs in either of MME's two folder layouts."""
    if (folder / "questions_answer_YES_NO").is_dir():
        txts, image_dir = sorted((folder / "questions_answer_YES_NO").glob("*.txt")), folder / "images"
    else:
        txts, image_dir = sorted(folder.glob("*.txt")), folder
    pairs = []
    for txt in txts:
        image = next(
            (image_dir / (txt.stem + ext) for ext in IMAGE_EXTENSIONS if (image_dir / (txt.stem + ext)).exists()), None
        )
        # A missing image is the runner's to report (as a failed sample), not a reason to drop questions.
        pairs.append((image or image_dir / (txt.stem + IMAGE_EXTENSIONS[0]), txt))
    return pairs


class MMETask(Task):
    family = "vqa"
    headline = "perception"
    max_new_tokens = 16
    protocol = (
        "MME: calculation.py answer rule; per subtask acc + acc+ (both questions of an image right); "
        "perception = sum of 10"
    )

    def load(self, data_root: Path) -> list[Item]:
        root = require(Path(data_root) / "mme", "MME")
        items = []
        for subtask in PERCEPTION + COGNITION:
            folder = root / subtask
            if not folder.is_dir():
                continue
            for image, txt in _question_files(folder):
                for i, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
                    if not line.strip():
                        continue
                    question, sep, gt = line.rpartition("\t")
                    if not sep or gt.strip().lower() not in ("yes", "no"):
                        raise DataError(f"{txt}:{i + 1}: expected 'question<TAB>Yes|No', got {line!r}")
                    items.append(
                        Item(
                            id=f"{subtask}/{txt.stem}/{i}",
                            image=str(image),
                            prompt=mme_prompt(question),
                            reference={"answer": gt.strip().lower(), "subtask": subtask, "image": txt.stem},
                        )
                    )
        if not items:
            raise DataError(f"MME: no subtask folders with questions under {root}")
        return items

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        ref = item.reference
        parsed = mme_parse(answer)
        out = {"correct": int(parsed == ref["answer"]), "subtask": ref["subtask"], "image": ref["image"]}
        return out | {"unparseable": int(parsed not in ("yes", "no"))}

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        if not scores:
            return {}
        per = mme_subtask_scores(scores)
        # a score is a sum over subtasks: one whose subtasks all failed or are absent has none, not 0
        out: dict[str, float] = {"unparseable": sum(s.get("unparseable", 0) for s in scores)}
        for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
            if any(t in per for t in group):
                out[name] = sum(per[t]["score"] for t in group if t in per)
        out["perception_subtasks"] = sum(t in per for t in PERCEPTION)
        for t, v in per.items():
            for k, x in v.items():
                out[f"{t}/{k}"] = x
        return out


register("mme", lambda opts: MMETask())
