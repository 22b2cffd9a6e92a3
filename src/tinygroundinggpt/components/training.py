"""What the three component trainers share: seeding, the optimisation loop, and saving in 16-bit.

Each trainer only says how to compute one step's loss; the loop owns the optimiser (AdamW), the
schedule (linear warm-up over the first 3 % of steps, then cosine to zero, as the paper's stages),
gradient clipping and the progress bar.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

# Shipped checkpoints are bf16, as Qwen2.5 publishes its weights: half the bytes of fp32 with fp32's range.
SAVE_DTYPE = torch.bfloat16
WARMUP_FRACTION = 0.03


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a trainer touches; return a generator for data sampling of its own."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_steps(
    params: Iterable[torch.nn.Parameter],
    loss_at: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    desc: str,
    weight_decay: float = 0.05,
    max_grad_norm: float = 1.0,
) -> list[float]:
    """Run ``steps`` optimiser steps of ``loss_at(step)``; return the loss of every step."""
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(WARMUP_FRACTION * steps), steps)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, unit="step", dynamic_ncols=True)
    for step in bar:
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            # Mean of the last few steps: single-batch losses are too noisy to read.
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


def save_model_16bit(model: PreTrainedModel, out: str | Path) -> None:
    """``save_pretrained`` a bf16 copy of ``model`` (safetensors); the trained fp32 model is left as is."""
    half = copy.deepcopy(model).to(SAVE_DTYPE)
    half.config.dtype = SAVE_DTYPE
    half.save_pretrained(out)
