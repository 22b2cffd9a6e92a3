"""Does the model know whether the object is there, even when it answers "No" to everything?

    python benchmarks/bench_pope_margin.py --model src/tinygroundinggpt/assets/tiny/tinygroundinggpt \
        --data-root demo_out/world > benchmarks/results/pope_margin.txt

For every POPE question (asked exactly as the POPE task asks it), the margin log P("Yes") - log P("No") of the
answer's first token, and its ROC AUC against the labels: 0.5 means the margin carries nothing about presence,
1.0 that a threshold on it would answer every question right. The greedy answers' accuracy is printed beside it.
``--train-world W`` also asks it of W's first ``--train-scenes`` training scenes, every shape each: whether the model
fits presence on scenes it trained on, or only fails to generalise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.data.format import SHORT_ANSWER_PROMPT
from tinygroundinggpt.eval.task import get_task
from tinygroundinggpt.images import load_image
from tinygroundinggpt.world.formats import POPE_QUESTION
from tinygroundinggpt.world.scene import SHAPES


def auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def yes_no_margins(pipe: TinyGroundingGPTPipeline, images: list, prompts: list[str], batch_size: int) -> list[float]:
    """log P("Yes") - log P("No") of each answer's first token."""
    tok = pipe.processor.tokenizer
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    margins: list[float] = []
    for start in range(0, len(prompts), batch_size):
        # left-padded: the last position is every row's first answer token
        chunk = pipe.processor(prompts[start : start + batch_size], images[start : start + batch_size])
        with torch.no_grad():
            logits = pipe.model(**{k: v.to(pipe.device) for k, v in chunk.items()}).logits[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1)
        margins += (logp[:, yes] - logp[:, no]).tolist()
    return margins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-root", required=True, help="a world with eval files (tgg demo's <out>/world)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--train-world", type=Path, help="a training world (tgg world / tgg demo --train's)")
    parser.add_argument("--train-scenes", type=int, default=60)
    args = parser.parse_args()
    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    extra = f" --train-world {args.train_world} --train-scenes {args.train_scenes}" if args.train_world else ""
    print(f"# python benchmarks/bench_pope_margin.py --model {args.model} --data-root {args.data_root}{extra}")
    for split in ("random", "popular", "adversarial"):
        task = get_task(f"world_pope_{split}")
        items = task.load(Path(args.data_root))
        labels = [it.reference["label"] == "yes" for it in items]
        images, prompts = [it.image for it in items], [it.prompt for it in items]
        margins = yes_no_margins(pipe, images, prompts, args.batch_size)
        answers: list[str] = []
        for start in range(0, len(items), args.batch_size):
            answers += pipe.generate_batch(
                images[start : start + args.batch_size],
                prompts[start : start + args.batch_size],
                max_new_tokens=task.max_new_tokens,
            )
        hits = sum(task.score(a, it)["pred_yes"] == y for a, it, y in zip(answers, items, labels, strict=True))
        mean = sum(margins) / len(margins)
        print(f"{split:12s} n {len(items):4d}  AUC of log P(Yes) - log P(No) {auc(margins, labels):.3f}"
              f"  mean margin {mean:+.2f}  greedy accuracy {100 * hits / len(items):.1f} %")  # fmt: skip
    if args.train_world:
        images, prompts, labels = [], [], []
        with open(args.train_world / "scenes.jsonl", encoding="utf-8") as fh:
            for _, line in zip(range(args.train_scenes), fh, strict=False):
                scene = json.loads(line)
                image = load_image(args.train_world / scene["image"])
                for shape in SHAPES:
                    images.append(image)
                    prompts.append(POPE_QUESTION.format(shape) + SHORT_ANSWER_PROMPT)
                    labels.append(any(o["shape"] == shape for o in scene["objects"]))
        margins = yes_no_margins(pipe, images, prompts, args.batch_size)
        print(f"{'train scenes':12s} n {len(prompts):4d}  AUC of log P(Yes) - log P(No) {auc(margins, labels):.3f}")


if __name__ == "__main__":
    main()
