"""Multiple choice: ScienceQA-IMG and MMBench (circular), paper Table 2.

Files as published::

    <root>/scienceqa/problems.json     {pid: {"question", "choices", "answer": index, "hint", "image", "split"}}
    <root>/scienceqa/pid_splits.json   {"test": [pid, ...], ...}
    <root>/scienceqa/test/<pid>/image.png
    <root>/mmbench/mmbench_dev_en.tsv  index, question, hint, A..D, answer, category, image (base64)
        (also found under MMBench_DEV_EN.tsv or mmbench_dev_20230712.tsv, the names it ships under)

No judge model reads the answers. ScienceQA-IMG (the test split's questions that have an image) is scored
as LLaVA's ``eval_science_qa.py`` scores it (:func:`llava_sqa_choice`: a lone letter, "B. …" or "The answer is
B"; anything else is a miss, counted in ``unparseable``); the more lenient :func:`extract_choice` reading is
reported beside it as ``accuracy_lenient``. MMBench answers are read by :func:`extract_choice`, which, like
VLMEvalKit's matching before it asks a judge, also accepts one option's text. MMBench is scored circularly:
a question counts only if the model picks the right option in every rotation of its options (files that ship
the rotations mark them with index + k·10⁶; for files that ship only the originals the rotations are
generated here).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import string
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tinygroundinggpt.eval.task import DataError, Item, Task, register, require

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
CIRCULAR_STRIDE = 1_000_000
_WRAPPED = re.compile(r"^[(\[]?([A-Z])(?:[)\].:,]|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])\b")
_LLAVA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # "." is any character, as in LLaVA


def llava_sqa_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option letter as LLaVA's ScienceQA scorer (``eval_science_qa.py``) reads it, or ``None`` (a miss there).

    The stripped answer (LLaVA strips what it generates) must be a letter alone, or start with a letter and ". ", or
    hold "The answer is X" followed by any character exactly once (case as written; two such sentences are a miss).
    Only letters of ``options`` count.
    """
    letters = tuple("ABCDE")
    text = answer.strip()
    if text in letters:
        letter: str | None = text
    elif len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _LLAVA_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    return letter if letter in options else None


def extract_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks, or ``None`` when it cannot be told.

    In order: a letter alone or wrapped ("B", "B.", "(B)", "B) cat"); "the answer is B"; exactly one
    option letter standing as its own word ("I pick B here"), except a bare "A" in a longer sentence,
    which is the article; finally exactly one option whose text appears in the answer.
    """
    text = answer.strip()
    m = _WRAPPED.match(text)
    if m and m.group(1) in options:
        return m.group(1)
    m = _ANSWER_IS.search(text)
    if m and m.group(1) in options:
        return m.group(1)
    words = [w.strip("()[].,:;!?") for w in text.split()]
    letters = {w for w in words if w in options}
    if len(words) > 3:
        letters.discard("A")
    if len(letters) == 1:
        return letters.pop()
    lowered = text.lower()
    hits = [k for k, v in options.items() if v and v.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def format_options(options: dict[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options.items())


class ScienceQATask(Task):
    family = "vqa"
    headline = "accuracy"
    protocol = (
        "ScienceQA-IMG test: questions with an image; option letter read by LLaVA's eval_science_qa.py rule, "
        "unreadable = miss (accuracy_lenient: any readable letter or one option's text)"
    )

    def load(self, data_root: Path) -> list[Item]:
        root = Path(data_root) / "scienceqa"
        problems = json.loads(require(root / "problems.json", "ScienceQA").read_text())
        test = json.loads(require(root / "pid_splits.json", "ScienceQA").read_text())["test"]
        items = []
        for pid in test:
            p = problems[pid]
            if not p.get("image"):
                continue
            options = dict(zip(string.ascii_uppercase, p["choices"], strict=False))
            context = f"Context: {p['hint']}\n" if p.get("hint") else ""
            items.append(
                Item(
                    id=str(pid),
                    image=str(root / "test" / str(pid) / p["image"]),
                    prompt=f"{context}{p['question']}\n{format_options(options)}\n{LETTER_INSTRUCTION}",
                    reference={"options": options, "answer": string.ascii_uppercase[p["answer"]]},
                )
            )
        return items

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        options, right = item.reference["options"], item.reference["answer"]
        letter = llava_sqa_choice(answer, options)
        return {
            "accuracy": int(letter == right),
            "accuracy_lenient": int(extract_choice(answer, options) == right),
            "unparseable": int(letter is None),
        }

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        n = len(scores)
        if not n:  # every item failed: no figure rather than zeros
            return {}
        return {
            "accuracy": 100.0 * sum(s["accuracy"] for s in scores) / n,
            "accuracy_lenient": 100.0 * sum(s["accuracy_lenient"] for s in scores) / n,
            "unparseable": sum(s["unparseable"] for s in scores),
        }


MMBENCH_FILES = ("mmbench_dev_en.tsv", "MMBench_DEV_EN.tsv", "mmbench_dev_20230712.tsv")


def _present(value: str | None) -> bool:
    return value is not None and value.strip() not in ("", "nan", "NaN")


def read_mmbench_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an MMBench TSV; with only originals in the file, every rotation of each is added."""
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise DataError(f"{path}: no rows")
    missing = {"index", "question", "A", "B", "answer"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    if any(int(r["index"]) >= CIRCULAR_STRIDE for r in rows):
        return rows
    expanded = []
    for r in rows:
        letters = [c for c in "ABCD" if _present(r.get(c))]
        texts = [r[c] for c in letters]
        right = letters.index(r["answer"])
        for k in range(len(letters)):
            rotated = texts[k:] + texts[:k]
            variant = dict(r, index=str(int(r["index"]) + k * CIRCULAR_STRIDE))
            variant.update(dict(zip(letters, rotated, strict=True)))
            # followed by position, not text: two options may read the same
            variant["answer"] = letters[(right - k) % len(letters)]
            expanded.append(variant)
    return expanded


MMBENCH_IMAGE_REF_MAX = 64  # VLMEvalKit's rule: a shorter image value is another row's index


class MMBenchTask(Task):
    family = "vqa"
    headline = "circular_accuracy"
    protocol = "MMBench dev (en): circular, a question counts only if every rotation is right; no judge model"

    def load(self, data_root: Path) -> list[Item]:
        root = Path(data_root) / "mmbench"
        path = next((root / n for n in MMBENCH_FILES if (root / n).exists()), root / MMBENCH_FILES[0])
        rows = read_mmbench_rows(require(path, "MMBench"))
        # Rotations may ship without their own image, or (as VLMEvalKit writes them) with the index of the row
        # whose image they share: a value of at most 64 characters is such a reference, not base64.
        encoded = {int(r["index"]): r["image"] for r in rows if len(r.get("image") or "") > MMBENCH_IMAGE_REF_MAX}
        by_group: dict[int, str] = {}
        for index, image in sorted(encoded.items()):
            by_group.setdefault(index % CIRCULAR_STRIDE, image)
        items = []
        for r in rows:
            index = int(r["index"])
            group = index % CIRCULAR_STRIDE
            options = {c: r[c] for c in "ABCD" if _present(r.get(c))}
            hint = f"{r['hint']}\n" if _present(r.get("hint")) else ""
            ref = (r.get("image") or "").strip()
            if index in encoded:
                image = encoded[index]
            elif ref.isdigit():
                image = encoded.get(int(ref)) or by_group.get(int(ref) % CIRCULAR_STRIDE)
            else:
                image = by_group.get(group)
            if image is None:
                where = f"refers to row {ref}, which has none" if ref else "has none"
                raise DataError(f"{path}: question {index} has no image (it {where})")
            items.append(
                Item(
                    id=str(index),
                    image=base64.b64decode(image),
                    prompt=f"{hint}{r['question']}\n{format_options(options)}\n{LETTER_INSTRUCTION}",
                    reference={
                        "options": options,
                        "answer": r["answer"],
                        "group": group,
                        "category": r.get("category", ""),
                    },
                )
            )
        return items

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        letter = extract_choice(answer, item.reference["options"])
        return {
            "hit": int(letter == item.reference["answer"]),
            "unparseable": int(letter is None),
            "group": item.reference["group"],
            "rotation": int(item.id) // CIRCULAR_STRIDE,
            "category": item.reference["category"],
        }

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        return mmbench_circular(scores)


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def mmbench_circular(scores: list[dict[str, Any]]) -> dict[str, float]:
    """Circular accuracy: a group (a question and its rotations) is right only if all its items are."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in scores:
        groups[s["group"]].append(s)
    if not groups:
        return {}
    right = {g: all(s["hit"] for s in members) for g, members in groups.items()}
    out = {
        "circular_accuracy": 100.0 * sum(right.values()) / len(groups),
        # What a non-circular evaluation would report: the original option order only.
        "single_pass_accuracy": 100.0 * _mean([s["hit"] for s in scores if s["rotation"] == 0]),
        "unparseable": sum(s["unparseable"] for s in scores),
    }
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for g, members in groups.items():
        if members[0]["category"]:
            by_cat[members[0]["category"]].append(right[g])
    for cat, hits in sorted(by_cat.items()):
        out[f"category/{cat}"] = 100.0 * sum(hits) / len(hits)
    return out


register("scienceqa_img", lambda opts: ScienceQATask())
register("mmbench_en_dev", lambda opts: MMBenchTask())
