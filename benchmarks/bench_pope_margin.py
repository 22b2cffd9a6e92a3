"""Does the model know whether the object is there, even when it answers "No" to everything?

    python benchmarks/bench_pope_margin.py --model src/tinygroundinggpt/assets/tiny/tinygroundinggpt \
        --data-root demo_out/world > benchmarks/results/pope_margin.txt

For every POPE question (asked exactly as the POPE task asks it), the margin log P("Yes") - log P("No") of the
answer's first token, and its ROC AUC against the labels: 0.5 means the margin carries nothing about presence,
1.0 that a threshold on it would answer every question right. The greedy answers' accuracy is printed beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.eval.task import get_task


def auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-root", required=True, help="a world with eval files (tgg demo's <out>/world)")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    tok = pipe.processor.tokenizer
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    print(f"# python benchmarks/bench_pope_margin.py --model {args.model} --data-root {args.data_root}")
    for split in ("random", "popular", "adversarial"):
        task = get_task(f"world_pope_{split}")
        items = task.load(Path(args.data_root))
        margins: list[float] = []
        labels = [it.reference["label"] == "yes" for it in items]
        answers: list[str] = []
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            images, prompts = [it.image for it in chunk], [it.prompt for it in chunk]
            # left-padded: the last position is every row's first answer token
            batch = {k: v.to(pipe.device) for k, v in pipe.processor(prompts, images).items()}
            with torch.no_grad():
                logp = F.log_softmax(pipe.model(**batch).logits[:, -1].float(), dim=-1)
            margins += (logp[:, yes] - logp[:, no]).tolist()
            answers += pipe.generate_batch(images, prompts, max_new_tokens=task.max_new_tokens)
        hits = sum(task.score(a, it)["pred_yes"] == y for a, it, y in zip(answers, items, labels, strict=True))
        mean = sum(margins) / len(margins)
        print(f"{split:12s} n {len(items):4d}  AUC of log P(Yes) - log P(No) {auc(margins, labels):.3f}"
              f"  mean margin {mean:+.2f}  greedy accuracy {100 * hits / len(items):.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
