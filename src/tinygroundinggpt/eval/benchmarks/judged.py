"""Judged open-ended answers: LLaVA-Bench (In-the-Wild) and the paper's description assessment.

LLaVA-Bench files as published (``liuhaotian/llava-bench-in-the-wild``)::

    <root>/llava-bench-in-the-wild/questions.jsonl     {"question_id", "image", "text", "category"}
    <root>/llava-bench-in-the-wild/context.jsonl       {"image", "caption"}
    <root>/llava-bench-in-the-wild/answers_gpt4.jsonl  {"question_id", "text"}   (the reference answers)
    <root>/llava-bench-in-the-wild/images/001.jpg ...

LLaVA's protocol: a text-only judge sees the image's caption, the question, the reference answer and
the model's answer, scores both 1-10 on the first line of its reply; the result is the model's mean
score relative to the reference's, in %, per category and overall. A review whose first line is not
two numbers is reported (``unparseable``) and left out, where LLaVA's script averages in -1. The review
instruction below is ours; pass LLaVA's ``rule.json`` (``--llava-rules``) to use its exact wording.

Description quality (paper A.7, Tables 12-13): the model describes 50 RefCOCO test images, a vision
judge rates each description 1-5 for Quality, Richness and Accuracy with the paper's Table 12 prompt.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tinygroundinggpt.eval.benchmarks.rec import _read_refer
from tinygroundinggpt.eval.task import DataError, EvalOptions, Item, Task, register, require

REVIEW_SYSTEM = "You are a careful, impartial reviewer of answers to questions about images."
# The system message of LLaVA's eval_gpt_review_bench.py, sent with its rule.json (``--llava-rules``).
LLAVA_REVIEW_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
REVIEW_RULE = (
    "You were shown a question about an image, which you know only through its description above, "
    "and the answers of two AI assistants. Rate how helpful, relevant, accurate and detailed each answer "
    "is on a scale from 1 to 10, higher being better. Write the two scores, Assistant 1's first, "
    "separated by a space, alone on the first line. From the second line on, explain the ratings "
    "briefly; do not let the order of the answers or their length sway you."
)

# Paper, Table 12 (the assessment prompt for GPT-4V) verbatim, then the reply format we parse.
DESC_CRITERIA = (
    (Path(__file__).parent.parent / "prompts" / "desc_quality_table12.txt").read_text(encoding="utf-8").strip()
)
DESC_REPLY = (
    'Your output should be structured as follows: "Quality": "Your rating here.", "Richness": "Your rating here.", '
    '"Accuracy": "Your rating here.", "Justification": "Your justification here.".'
)
DESC_PROMPT = "Describe the image in detail."
DESC_ASPECTS = ("quality", "richness", "accuracy")


def parse_review_scores(review: str) -> tuple[float, float] | None:
    """The two scores on a review's first line ("8 6", "8, 6", "8.5 6"), or None."""
    first = review.strip().split("\n")[0].replace(",", " ").split()
    try:
        return (float(first[0]), float(first[1])) if len(first) == 2 else None
    except ValueError:
        return None


def parse_desc_scores(reply: str) -> dict[str, float] | None:
    """``{"quality", "richness", "accuracy"}`` from a Table 12 reply, or None if any is missing."""
    out = {}
    for aspect in DESC_ASPECTS:
        m = re.search(rf'"?{aspect}"?\s*[:=]\s*"?\s*([1-5](?:\.\d+)?)', reply, re.IGNORECASE)
        if not m:
            return None
        out[aspect] = float(m.group(1))
    return out


def _need_judge(opts: EvalOptions, task: str) -> Any:
    if opts.judge is None:
        raise DataError(f"{task} is scored by a judge model: pass --judge-model (and --judge-base-url)")
    return opts.judge


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class LLaVABenchTask(Task):
    family = "vqa"
    headline = "relative_score"
    max_new_tokens = 512
    protocol = "LLaVA-Bench (In-the-Wild): judge scores reference and answer 1-10; model mean / reference mean, %"

    def __init__(self, judge: Any, rules_path: str | None = None) -> None:
        self.judge = judge
        self.rules = json.loads(Path(rules_path).read_text()) if rules_path else None

    def load(self, data_root: Path) -> list[Item]:
        root = Path(data_root) / "llava-bench-in-the-wild"
        questions = _jsonl(require(root / "questions.jsonl", "LLaVA-Bench"))
        contexts = {c["image"]: c["caption"] for c in _jsonl(require(root / "context.jsonl", "LLaVA-Bench"))}
        refs = {a["question_id"]: a["text"] for a in _jsonl(require(root / "answers_gpt4.jsonl", "LLaVA-Bench"))}
        items = []
        for q in questions:
            caption = contexts.get(q["image"], "")
            items.append(
                Item(
                    id=str(q["question_id"]),
                    image=str(root / "images" / q["image"]),
                    prompt=q["text"],
                    reference={
                        "question": q["text"],
                        "category": q["category"],
                        "context": "\n".join(caption) if isinstance(caption, list) else caption,
                        "answer": refs[q["question_id"]],
                    },
                )
            )
        return items

    def _rule(self, category: str) -> tuple[str, str, str]:
        """(system message, role name, review rule): ours, or LLaVA's exact wording from its rule.json."""
        if self.rules is None:
            return REVIEW_SYSTEM, "Assistant", REVIEW_RULE
        rule = self.rules[f"llava_bench_{category}"]
        return LLAVA_REVIEW_SYSTEM, rule["role"], rule["prompt"]

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        ref = item.reference
        system, role, rule = self._rule(ref["category"])
        prompt = (
            f"[Context]\n{ref['context']}\n\n[Question]\n{ref['question']}\n\n"
            f"[{role} 1]\n{ref['answer']}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{rule}\n\n"
        )
        pair = parse_review_scores(self.judge.ask(prompt, system=system))  # a JudgeError fails the item, see Task
        out: dict[str, Any] = {"category": ref["category"], "unparseable": int(pair is None)}
        if pair:
            out["reference_score"], out["model_score"] = pair
        return out

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        if not scores:
            return {}
        ok = [s for s in scores if not s["unparseable"]]
        out: dict[str, float] = {"unparseable": len(scores) - len(ok)}
        groups = {"all": ok} | {c: [s for s in ok if s["category"] == c] for c in sorted({s["category"] for s in ok})}
        for name, group in groups.items():
            ref = sum(s["reference_score"] for s in group)
            if group and ref:
                key = "relative_score" if name == "all" else f"relative_score/{name}"
                out[key] = 100.0 * sum(s["model_score"] for s in group) / ref
        return out


class DescQualityTask(Task):
    family = "desc"
    headline = "quality"
    max_new_tokens = 512
    protocol = "Description assessment (paper A.7): 50 RefCOCO test images, vision judge, Table 12 prompt, mean 1-5"

    def __init__(self, judge: Any, n_images: int = 50, seed: int = 0) -> None:
        self.judge, self.n_images, self.seed = judge, n_images, seed

    def load(self, data_root: Path) -> list[Item]:
        # "RefCOCO test" is testA + testB (RefCOCO has no split named test); the paper does not say
        # which 50 images, so we draw them with a fixed seed.
        refs, _, images, _ = _read_refer(str(Path(data_root) / "refcoco"), "refs(unc).p")
        ids = sorted({r["image_id"] for r in refs if r["split"] in ("testA", "testB")})
        chosen = sorted(random.Random(self.seed).sample(ids, min(self.n_images, len(ids))))
        image_dir = Path(data_root) / "coco" / "train2014"
        return [
            Item(id=str(i), image=str(image_dir / images[i]["file_name"]), prompt=DESC_PROMPT, reference={})
            for i in chosen
        ]

    def score(self, answer: str, item: Item) -> dict[str, Any]:
        prompt = f"{DESC_CRITERIA}\n\nDescription:\n{answer}\n\n{DESC_REPLY}"
        scores = parse_desc_scores(self.judge.ask(prompt, image=item.image))
        return {"unparseable": int(scores is None), **(scores or {})}

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, float]:
        if not scores:
            return {}
        ok = [s for s in scores if not s["unparseable"]]
        out = {a: sum(s[a] for s in ok) / len(ok) for a in DESC_ASPECTS} if ok else {}
        out["unparseable"] = len(scores) - len(ok)
        return out


register("llava_bench", lambda opts: LLaVABenchTask(_need_judge(opts, "llava_bench"), opts.llava_rules))
register("desc_quality", lambda opts: DescQualityTask(_need_judge(opts, "desc_quality")))
