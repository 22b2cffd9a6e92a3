"""REC evaluation speed: the batched runner vs a one-sample-at-a-time loop, same model, same data, same run.

    python benchmarks/bench_eval.py [--items 96] [--batch-sizes 8,32] [--device cpu]

Model: a tiny TinyGroundingGPT with random weights (CLIP/DINOv2 towers 96 wide, 4 layers, 64 px; Qwen2 LLM
192 wide, 4 layers) saved to disk and loaded through ``TinyGroundingGPTPipeline.from_pretrained``. A random
model stops at once, so every answer is forced to the length of a real REC answer ("[0.123, 0.456, 0.789,
0.012]" is 29 tokens with single-digit tokens) in both paths. Data: the synthetic world's REC val split in
the refer format. Both paths load each image from disk, generate greedily and score with the same REC task;
the runner also writes its prediction cache and reports. Output kept in ``benchmarks/results/eval.txt``.
Run it alone: on 2 cores any other job distorts it (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.components.tokenizer import train_tokenizer
from tinygroundinggpt.eval.runner import checkpoint_id, evaluate
from tinygroundinggpt.eval.task import get_task
from tinygroundinggpt.images import load_image
from tinygroundinggpt.model.presets import tiny_random
from tinygroundinggpt.world.build import write_world

ANSWER_TOKENS = 29


class FixedLength:
    """The pipeline with every answer forced to ``ANSWER_TOKENS`` new tokens (see the module docstring)."""

    def __init__(self, pipe: TinyGroundingGPTPipeline) -> None:
        self.pipe = pipe

    def generate_batch(self, images, prompts, max_new_tokens: int = 64) -> list[str]:
        return self.pipe.generate_batch(images, prompts, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS)


def build_checkpoint(folder: Path, world: Path) -> Path:
    texts = [line for p in world.glob("stage*.jsonl") for line in p.read_text().splitlines()]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    model, processor = tiny_random(tokenizer, vision_width=96, text_width=192, layers=4, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def one_at_a_time(gen: FixedLength, task, items) -> tuple[float, float]:
    """Samples/s and Acc@0.5 of the plain loop: load, generate one, score one."""
    start = time.perf_counter()
    scores = []
    for it in items:
        img = load_image(it.image)
        answer = gen.generate_batch([img], [it.prompt])[0]
        it.width, it.height = img.width, img.height
        scores.append(task.score(answer, it))
    seconds = time.perf_counter() - start
    return len(items) / seconds, task.aggregate(scores)["acc@0.5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_world(tmp / "world", n_train=40, n_eval=16, n_compositional=0, progress=False)
        ckpt = build_checkpoint(tmp / "ckpt", tmp / "world")
        gen = FixedLength(TinyGroundingGPTPipeline.from_pretrained(ckpt, device=args.device))
        task = get_task("world_rec_val")
        items = task.load(tmp / "world")[: args.items]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}, "
              f"torch {torch.__version__}, load average before {os.getloadavg()[0]:.2f}")  # fmt: skip
        n_params = sum(p.numel() for p in gen.pipe.model.parameters())
        print(f"model: {n_params / 1e6:.2f}M parameters; {len(items)} REC items (world_rec_val), "
              f"{ANSWER_TOKENS} new tokens each")  # fmt: skip
        gen.generate_batch([load_image(items[0].image)], [items[0].prompt])  # warm-up
        loop_rate, loop_acc = one_at_a_time(gen, task, items)
        print(f"one-at-a-time loop      : {loop_rate:7.2f} samples/s  (Acc@0.5 {loop_acc:.2f})")
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            start = time.perf_counter()
            res = evaluate(
                gen,
                [task],
                tmp / "world",
                tmp / f"out{bs}",
                model_id=checkpoint_id(ckpt),
                batch_size=bs,
                limit=args.items,
                progress=False,
            )
            rate = len(items) / (time.perf_counter() - start)
            acc = res["tasks"]["world_rec_val"]["metrics"]["acc@0.5"]
            print(f"runner, batch size {bs:4d}: {rate:7.2f} samples/s  (Acc@0.5 {acc:.2f}, x{rate / loop_rate:.1f})")
        print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
