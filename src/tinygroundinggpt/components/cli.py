"""``tgg components clip|dinov2|qwen2|all``: pretrain the tiny components on synthetic-world scenes.

One command per component, and ``all`` for the three (into ``OUT/clip``, ``OUT/dinov2``, ``OUT/qwen2``,
the layout of the shipped ``tinygroundinggpt/assets/tiny``). Deterministic by ``--seed``: the scenes,
the captions, the initialisation and the batches all derive from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinygroundinggpt.components.clip import TrainedClip
    from tinygroundinggpt.components.corpus import WorldSample
    from tinygroundinggpt.components.dinov2 import TrainedDinov2
    from tinygroundinggpt.components.qwen2 import TrainedQwen2

COMPONENTS = ("clip", "dinov2", "qwen2")
DEFAULT_SCENES = 8000


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("components", help="pretrain the tiny CLIP / DINOv2 / Qwen2 on synthetic-world scenes")
    p.add_argument("which", choices=(*COMPONENTS, "all"))
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder (for 'all': a folder per component)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="training scenes to render")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); runs repeat bit for bit with the same seed and thread count",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from tinygroundinggpt.components.corpus import world_samples

    if args.threads:
        torch.set_num_threads(args.threads)
    which = COMPONENTS if args.which == "all" else (args.which,)
    samples = world_samples(args.seed, args.scenes)
    for name in which:
        out = args.out / name if args.which == "all" else args.out
        trained = train_component(name, samples, seed=args.seed, steps=args.steps)
        trained.save(out)
        tail = trained.losses[-20:]
        print(
            f"{name}: loss {trained.losses[0]:.4f} -> {sum(tail) / len(tail):.4f} (mean of last steps), saved to {out}"
        )
    return 0


def train_component(
    name: str, samples: list[WorldSample], *, seed: int, steps: int | None = None
) -> TrainedClip | TrainedDinov2 | TrainedQwen2:
    """Train one component on world ``samples``; returns its ``Trained*`` (``.save(out)``, ``.losses``)."""
    from tinygroundinggpt.components import clip, corpus, dinov2, qwen2

    overrides = {} if steps is None else {"steps": steps}
    if name == "clip":
        images = corpus.square_images(samples, clip.CLIP_MEAN)
        return clip.train_clip(
            images, corpus.captions(samples, seed + 1), seed=seed, recipe=clip.ClipRecipe(**overrides)
        )
    if name == "dinov2":
        images = corpus.square_images(samples, dinov2.IMAGENET_MEAN)
        return dinov2.train_dinov2(images, seed=seed, recipe=dinov2.Dinov2Recipe(**overrides))
    if name == "qwen2":
        docs = corpus.lm_documents(samples, seed + 1)
        return qwen2.train_qwen2(docs, seed=seed, recipe=qwen2.Qwen2Recipe(**overrides))
    raise ValueError(f"unknown component {name!r}; choose from {COMPONENTS}")
