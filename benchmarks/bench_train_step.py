"""Where a tiny-chain training step spends its time: the shipped tiny model, one stage-2 batch of each data file
(32 samples, as the chain's stage-2 parts use), forward + backward against the frozen vision towers' forward alone.

    python benchmarks/bench_train_step.py         # output kept in benchmarks/results/train_step.txt

The towers are frozen in every stage, so their features could be computed once per image and cached; this measures
what that could save at most (the towers' share of a step), against the whole step measured in the same run. It also
times the same step under bf16 autocast on the CPU (the recipes' ``bf16`` applies on CUDA only; this says whether a
CPU with bf16 matrix units would gain from it).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from tinygroundinggpt.assets import SHIPPED
from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor
from tinygroundinggpt.training.data import BATCH_INFO, Collator, MixtureDataset
from tinygroundinggpt.training.recipe import DataSource
from tinygroundinggpt.world import write_world

FILES = ("stage2_tc.jsonl", "stage2_ic.jsonl", "stage2_ti.jsonl")


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def step(model: TinyGroundingGPTForConditionalGeneration, batch: dict) -> None:
    model(**batch).loss.backward()


def step_bf16(model: TinyGroundingGPTForConditionalGeneration, batch: dict) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()


@torch.no_grad()
def towers(model: TinyGroundingGPTForConditionalGeneration, batch: dict) -> None:
    model.vision_tower(batch["pixel_values"])
    if batch["object_pixel_values"].numel():
        model.vision_tower(batch["object_pixel_values"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average before {os.getloadavg()[0]:.2f}")  # fmt: skip
    model = TinyGroundingGPTForConditionalGeneration.from_pretrained(SHIPPED, dtype=torch.float32).train()
    processor = TinyGroundingGPTProcessor.from_pretrained(SHIPPED)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"shipped tiny model ({n_params:.2f}M parameters), batch {args.batch_size}, fp32, vision towers frozen")
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp, n_train=args.batch_size * 2, n_eval=0, seed=3, image_size=processor.image_size, progress=False)
        for name in FILES:
            data = MixtureDataset([DataSource(name)], processor, tmp)
            batch = Collator(processor)([data[i] for i in range(args.batch_size)])
            batch.pop(BATCH_INFO)

            whole = seconds(lambda b=batch: step(model, b), args.repeats)
            vision = seconds(lambda b=batch: towers(model, b), args.repeats)
            bf16 = seconds(lambda b=batch: step_bf16(model, b), args.repeats)
            objects = batch["object_pixel_values"].shape[0]
            share = f"({vision / whole:.0%} of the step)"
            print(f"{name:16s} tokens/sample {batch['input_ids'].shape[1]:4d}, object images {objects:3d}: "
                  f"step {whole * 1000:6.0f} ms, towers {vision * 1000:5.0f} ms {share}, "
                  f"bf16 autocast step {bf16 * 1000:6.0f} ms (x{whole / bf16:.2f})")  # fmt: skip
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
