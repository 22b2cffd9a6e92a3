"""``tgg components clip|dinov2|qwen2|all``: pretrain the tiny components on synthetic-world scenes.

One command per component, and ``all`` for the three (into ``OUT/clip``, ``OUT/dinov2``, ``OUT/qwen2``,
the layout of the shipped ``tinygroundinggpt/assets/tiny``). Deterministic by ``--seed``: the scenes,
the captions, the initialisation and the batches all derive from it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinygroundinggpt.cli import add_command

if TYPE_CHECKING:
    from tinygroundinggpt.components.clip import TrainedClip
    from tinygroundinggpt.components.corpus import WorldSample
    from tinygroundinggpt.components.dinov2 import TrainedDinov2
    from tinygroundinggpt.components.qwen2 import TrainedQwen2

COMPONENTS = ("clip", "dinov2", "qwen2")
DEFAULT_SCENES = 8000


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "components")
    p.add_argument("which", choices=(*COMPONENTS, "all"))
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder (for 'all': a folder per component)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="training scenes to render")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the component's recipe (ClipRecipe, Dinov2Recipe, Qwen2Recipe)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); runs repeat bit for bit with the same seed and thread count",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from tinygroundinggpt.components.corpus import IMAGE_SIZE, world_samples

    if args.threads:
        torch.set_num_threads(args.threads)
    which = COMPONENTS if args.which == "all" else (args.which,)
    overrides = parse_overrides(args.set)  # checked before rendering thousands of scenes
    if args.steps is not None:
        overrides["steps"] = args.steps
    recipes = {name: _recipe(recipe_class(name), overrides) for name in which}
    # drawn at the encoder's input size; `all` takes no size (the Qwen2's recipe has none), so one size serves
    samples = world_samples(args.seed, args.scenes, getattr(recipes[which[0]], "image_size", IMAGE_SIZE))
    for name in which:
        out = args.out / name if args.which == "all" else args.out
        trained = train_component(name, samples, seed=args.seed, overrides=overrides)
        trained.save(out)
        tail = trained.losses[-20:]
        print(
            f"{name}: loss {trained.losses[0]:.4f} -> {sum(tail) / len(tail):.4f} (mean of last steps), saved to {out}"
        )
    return 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → ``{key: value}``, values read as YAML scalars (``1``, ``0.5``, ``true``)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set must look like key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def recipe_class(name: str) -> type:
    """The recipe dataclass of component ``name``."""
    from tinygroundinggpt.components import clip, dinov2, qwen2

    classes = {"clip": clip.ClipRecipe, "dinov2": dinov2.Dinov2Recipe, "qwen2": qwen2.Qwen2Recipe}
    if name not in classes:
        raise ValueError(f"unknown component {name!r}; choose from {COMPONENTS}")
    return classes[name]


def _recipe(cls: type, overrides: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields are {sorted(known)}")
    recipe = cls(**overrides)
    if hasattr(recipe, "image_size"):
        from tinygroundinggpt.components.corpus import grid_side

        grid_side(recipe.image_size, recipe.patch_size)
    return recipe


def train_component(
    name: str, samples: list[WorldSample], *, seed: int, overrides: dict[str, Any] | None = None
) -> TrainedClip | TrainedDinov2 | TrainedQwen2:
    """Train one component on world ``samples``; returns its ``Trained*`` (``.save(out)``, ``.losses``).

    ``overrides`` replace fields of the component's recipe (an unknown field is a ValueError naming it).
    """
    from tinygroundinggpt.components import clip, corpus, dinov2, qwen2

    recipe = _recipe(recipe_class(name), overrides or {})
    if name == "clip":
        images = corpus.square_images(samples, clip.CLIP_MEAN)
        captions = corpus.captions(samples, seed + 1)
        return clip.train_clip(images, captions, seed=seed, recipe=recipe, regions=corpus.regions(samples))
    if name == "dinov2":
        images = corpus.square_images(samples, dinov2.IMAGENET_MEAN)
        mirrored = corpus.square_images(samples, dinov2.IMAGENET_MEAN, mirrored=True)
        views = None
        if recipe.view_weight:
            views = corpus.background_views(samples, dinov2.IMAGENET_MEAN, dinov2.VIEWS_PER_SCENE, seed + 2)
        return dinov2.train_dinov2(images, seed=seed, recipe=recipe, mirrored=mirrored, views=views)
    return qwen2.train_qwen2(corpus.lm_documents(samples, seed + 1), seed=seed, recipe=recipe)
