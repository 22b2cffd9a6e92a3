"""The paper's stage chain: 1a → 1b → 2 → 3, each stage starting from the previous stage's output
(the tiny preset's chain adds easier stages; ``recipes/tiny.yaml``).

Each stage writes an ordinary checkpoint to ``<out>/<stage>``; a stage already marked complete is
skipped, so a killed chain resumes where it stopped (inside a stage, from its last checkpoint); with
``resume=False`` every stage trains from the start. A stage that trains supersedes every later stage of the
chain in the same folder (moved to ``<stage>.superseded``): they were trained from its previous output, so a later
run must not skip them (a stage inserted into the chain, or one retrained with ``--stages``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor
from tinygroundinggpt.model.presets import assemble_preset
from tinygroundinggpt.training.engine import is_complete, train_stage
from tinygroundinggpt.training.recipe import chain_stages, stage_recipe

logger = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> tuple[TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor]:
    """A checkpoint to train on, in float32 whatever dtype it was saved in: transformers loads a bf16 export
    (the shipped model) as bf16, and optimiser steps on bf16 weights lose small updates; mixed precision
    (``bf16: true``) casts per operation, not the weights."""
    return (
        TinyGroundingGPTForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32),
        TinyGroundingGPTProcessor.from_pretrained(str(path)),
    )


def supersede_later_stages(out: Path, stage: str, order: tuple[str, ...]) -> list[str]:
    """Move the folders of the stages after ``stage`` in ``order`` aside (``<name>.superseded``, replacing an older
    one): ``stage`` is about to train, and they were built on its previous output. Returns the names moved."""
    if stage not in order or os.environ.get("LOCAL_RANK", "0") != "0":  # one mover per machine
        return []
    moved = []
    for later in order[order.index(stage) + 1 :]:
        folder, aside = out / later, out / f"{later}.superseded"
        if not folder.is_dir():
            continue
        shutil.rmtree(aside, ignore_errors=True)
        try:
            folder.rename(aside)
        except FileNotFoundError:  # another machine's process moved it first (a shared file system)
            continue
        moved.append(later)
    if moved:
        logger.warning("%s trains again: the later stages built on its old output are moved aside: %s", stage,
                       ", ".join(f"{m} -> {m}.superseded" for m in moved))  # fmt: skip
    return moved


def run_chain(
    out_dir: str | Path,
    data_root: str | Path,
    *,
    preset: str = "tiny",
    components: dict[str, Any] | None = None,
    stages: tuple[str, ...] | None = None,
    overrides: dict[str, list[str]] | None = None,
    use_tiny_overrides: bool | None = None,
    init: str | Path | None = None,
    seed: int | None = None,
    **training_kwargs: Any,
) -> dict[str, Any]:
    """Run ``stages`` (default: the preset's whole chain) in order; returns {stage: report} and writes
    ``<out>/chain_report.json``.

    ``components`` overrides the preset's checkpoints (keys clip, dino, llm and assembly options;
    ``dino=None`` for the CLIP-only ablation). ``init`` starts the first stage from a checkpoint
    instead of assembling. ``overrides`` maps a stage to ``key=value`` strings. ``seed`` replaces every
    stage's seed (data order, dropout) and the assembled projector's initialisation (default: each recipe's
    own seed, projector seed 0): the tiny chain's outcome depends strongly on both, so reruns with other
    seeds measure its spread.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiny = preset == "tiny" if use_tiny_overrides is None else use_tiny_overrides
    stages = chain_stages(tiny) if stages is None else stages
    # the order later stages are superseded in: the preset's whole chain (a --stages run may name only part of it)
    order = chain_stages(tiny) if all(s in chain_stages(tiny) for s in stages) else tuple(stages)
    reports: dict[str, Any] = {}
    previous: Path | None = Path(init) if init else None
    t0 = time.perf_counter()
    resume = training_kwargs.get("resume", True)  # without it every stage trains again, finished ones too
    for number, stage in enumerate(stages, 1):
        stage_out = out / stage
        recipe = stage_recipe(stage, (overrides or {}).get(stage, []), tiny=tiny)
        if seed is not None:
            recipe.seed = seed
        if resume and is_complete(stage_out):
            # a finished stage of another seed would silently make this a different run than asked for
            report = json.loads((stage_out / "train_report.json").read_text())
            if report["recipe"]["seed"] != recipe.seed:
                raise ValueError(
                    f"{stage_out} was trained with seed {report['recipe']['seed']}, not {recipe.seed}: "
                    "give another output folder"
                )
            logger.info("stage %d/%d %s: already complete in %s; skipping", number, len(stages), stage, stage_out)
            reports[stage] = report
            previous = stage_out
            continue
        if previous is None and recipe.init != "assemble":
            raise ValueError(f"{stage} starts from a previous stage; give init= or start the chain at stage1a")
        start = previous or "newly assembled components"
        logger.info("stage %d/%d %s: training from %s into %s", number, len(stages), stage, start, stage_out)
        supersede_later_stages(out, stage, order)
        if previous is None:
            seeded = {} if seed is None else {"seed": seed}
            model, processor = assemble_preset(preset, **{**(components or {}), **seeded})
        else:
            model, processor = load_checkpoint(previous)
        reports[stage] = train_stage(recipe, model, processor, stage_out, data_root=data_root, **training_kwargs)
        previous = stage_out
    summary = {
        "stages": {s: {"train_loss": r["train_loss"], "steps": r["global_step"]} for s, r in reports.items()},
        "final": str(previous),
        "seed": seed,
        "wall_minutes": round((time.perf_counter() - t0) / 60, 2),
        # the stages' own training time, whichever run (or resumed runs) trained each: the chain's cost
        "stage_minutes": round(sum(r.get("wall_seconds", 0.0) for r in reports.values()) / 60, 2),
    }
    (out / "chain_report.json").write_text(json.dumps(summary, indent=2))
    return {"reports": reports, **summary}
