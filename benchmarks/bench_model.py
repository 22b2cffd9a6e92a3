"""Forward+backward throughput and peak memory: TinyGroundingGPT vs transformers' LLaVA at the same sizes.

    python benchmarks/bench_model.py            # tiny sizes on CPU, each model in its own process
    python benchmarks/bench_model.py --size 1.5b --device cuda --dtype bfloat16   # paper size, random weights

LLaVA gets the same CLIP tower, the same LLM and the same number of image tokens, so the ratio shows
the cost of the second (DINOv2) tower and of the processor-free embedding merge. Peak memory is the
process's peak RSS on CPU (each model runs in a fresh subprocess) and ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from tinygroundinggpt.model import TinyGroundingGPTConfig, TinyGroundingGPTForConditionalGeneration
from tinygroundinggpt.model.presets import paper_config

TEXT_TOKENS = 48


def tiny_config(use_dino: bool) -> TinyGroundingGPTConfig:
    from transformers import CLIPVisionConfig, Dinov2Config, Qwen2Config

    return TinyGroundingGPTConfig(
        clip_config=CLIPVisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                                     num_attention_heads=4, patch_size=8, image_size=64),
        dino_config=Dinov2Config(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4,
                                 patch_size=8, image_size=64),
        text_config=Qwen2Config(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
        use_dino=use_dino, image_size=64, image_token_id=3, object_token_id=4,
    )  # fmt: skip


def build(kind: str, size: str) -> tuple[torch.nn.Module, TinyGroundingGPTConfig]:
    cfg = tiny_config(kind != "tgg-clip") if size == "tiny" else paper_config(size, use_dino=kind != "tgg-clip")
    if kind == "llava":
        lcfg = LlavaConfig(
            vision_config=cfg.clip_config, text_config=cfg.text_config, image_token_id=cfg.image_token_id,
            image_seq_length=cfg.image_seq_length, vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )  # fmt: skip
        model = LlavaForConditionalGeneration(lcfg)
        model.model.vision_tower.requires_grad_(False)  # frozen, as in our recipes
        return model, cfg
    return TinyGroundingGPTForConditionalGeneration(cfg), cfg


def run_one(kind: str, size: str, batch: int, steps: int, device: str, dtype: str) -> dict:
    torch.manual_seed(0)
    with torch.device(device):  # initialising 2B parameters on the CPU would take longer than the benchmark
        model, cfg = build(kind, size)
    model.to(device=device, dtype=getattr(torch, dtype)).train()
    n_img = cfg.image_seq_length
    ids = torch.randint(10, cfg.text_config.vocab_size, (batch, TEXT_TOKENS + n_img), device=device)
    ids[:, 2 : 2 + n_img] = cfg.image_token_id
    pv = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device)
    if kind == "llava":  # LLaVA's own processor would hand it CLIP-normalised pixels
        pv = (pv - 0.45) / 0.27
    pv = pv.to(getattr(torch, dtype))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        out = model(input_ids=ids, pixel_values=pv, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    n_params = sum(p.numel() for p in model.parameters())
    tokens = batch * ids.shape[1] * steps
    result = {
        "model": kind, "size": size, "params_M": round(n_params / 1e6, 2), "batch": batch,
        "samples_per_s": round(batch * steps / dt, 2), "step_s": round(dt / steps, 4), "peak_MiB": round(peak, 1),
    }  # fmt: skip
    if device == "cuda":  # model FLOPs utilisation against the card's dense bf16 peak
        flops = 6 * n_params * tokens
        peak_flops = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name = torch.cuda.get_device_name()
        card = next((v for k, v in peak_flops.items() if k in name), None)
        result["gpu"] = name
        if card:
            result["mfu"] = round(flops / dt / card, 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", help="tiny, 1.5b, 3b or 7b (random weights)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.batch, args.steps, args.device, args.dtype)))
        return
    rows = []
    for kind in ("tgg", "tgg-clip", "llava"):
        cmd = [sys.executable, __file__, "--one", kind, "--size", args.size, "--batch", str(args.batch),
               "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, size {args.size}")
    print(f"{'model':10} {'params M':>9} {'samples/s':>10} {'step s':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['model']:10} {r['params_M']:>9} {r['samples_per_s']:>10} {r['step_s']:>8} {r['peak_MiB']:>9}")
    base = rows[-1]
    for r in rows[:-1]:
        print(
            f"{r['model']} / llava: throughput x{r['samples_per_s'] / base['samples_per_s']:.2f}, "
            f"peak memory x{r['peak_MiB'] / base['peak_MiB']:.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
