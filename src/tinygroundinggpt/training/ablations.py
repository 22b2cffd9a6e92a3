"""The paper's ablations in miniature, each variant trained and evaluated on the same held-out sets.

* ``table3``: stage 2 with text–coordinate data only (T, C) vs. with object images too (T, C, I);
* ``table4``: stage 3 with instruction data only vs. with the global grounding data (conversations,
  grounded descriptions) too;
* ``table10``: CLIP alone vs. CLIP + DINOv2 (two complete chains).

Variants share every stage before the one they differ in (trained once, in ``<out>/shared``). A variant
removes data files from the mixtures of every stage from that one on, rather than replacing a mixture:
the tiny chain runs stage 2 in several parts, and its stage 3 keeps a text–coordinate share (standing in
for the RefCOCO samples inside LLaVA-v1.5-mix665K), which an ablation of the global data must keep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinygroundinggpt.training.chain import run_chain
from tinygroundinggpt.training.recipe import chain_stages, stage_recipe


@dataclass
class Variant:
    first_stage: str  # the first stage this variant trains itself
    drop: tuple[str, ...] = ()  # data files removed from each mixture from first_stage on
    components: dict[str, Any] = field(default_factory=dict)  # e.g. {"dino": None}


ABLATIONS: dict[str, dict[str, Variant]] = {
    "table3": {
        "T,C": Variant("stage2", drop=("stage2_ic.jsonl", "stage2_ti.jsonl")),
        "T,C,I": Variant("stage2"),
    },
    "table4": {
        "no global align": Variant("stage3", drop=("stage3_conv.jsonl", "stage3_desc.jsonl")),
        "global align": Variant("stage3"),
    },
    "table10": {
        "CLIP": Variant("stage1a", components={"dino": None}),
        "CLIP + DINOv2": Variant("stage1a"),
    },
}
REPORTED = ("world_rec_val", "world_rec_test", "world_rec_compositional_test", "world_pope_adversarial")


def variant_overrides(
    variant: Variant, stages: tuple[str, ...], common: list[str], *, tiny: bool
) -> dict[str, list[str]]:
    """Per-stage overrides for ``variant``: ``common`` everywhere, plus a ``data=`` override without the
    dropped files for each stage (from the variant's first) whose mixture holds one of them."""
    split = stages.index(variant.first_stage)
    out = {s: list(common) for s in stages}
    for stage in stages[split:]:
        data = stage_recipe(stage, common, tiny=tiny).data
        kept = [{"path": d.path, "weight": d.weight} for d in data if Path(d.path).name not in variant.drop]
        if len(kept) < len(data):
            if not kept:
                raise ValueError(f"variant drops every data file of {stage}")
            out[stage].append("data=" + json.dumps(kept))
    if variant.drop and out == {s: list(common) for s in stages}:
        # e.g. a --set data=... that names none of the files: the variant would train like its baseline
        raise ValueError(f"no stage from {variant.first_stage} on uses {', '.join(variant.drop)}: nothing to ablate")
    return out


def run_ablation(
    name: str,
    out_dir: str | Path,
    data_root: str | Path,
    eval_root: str | Path,
    *,
    preset: str = "tiny",
    components: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    **training_kwargs: Any,
) -> dict[str, Any]:
    """Train every variant of ablation ``name`` and evaluate it; writes ``ablation.json`` and ``ablation.md``.

    ``components`` replaces the preset's checkpoints (as in ``run_chain``); ``overrides`` apply to every stage.
    """
    from tinygroundinggpt.api import TinyGroundingGPTPipeline
    from tinygroundinggpt.eval.runner import checkpoint_id, evaluate
    from tinygroundinggpt.eval.task import get_task

    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    out = Path(out_dir)
    stages = chain_stages(preset == "tiny")
    common = {s: list(overrides or []) for s in stages}
    rows: dict[str, dict[str, float]] = {}
    for name_v, variant in ABLATIONS[name].items():
        slug = name_v.replace(" ", "_").replace(",", "").replace("+", "plus")
        split = stages.index(variant.first_stage)
        shared = out / "shared"
        if split:
            run_chain(
                shared, data_root, preset=preset, stages=stages[:split], overrides=common, components=components,
                **training_kwargs,
            )  # fmt: skip
        result = run_chain(
            out / slug,
            data_root,
            preset=preset,
            stages=stages[split:],
            overrides=variant_overrides(variant, stages, list(overrides or []), tiny=preset == "tiny"),
            components={**(components or {}), **variant.components},
            init=shared / stages[split - 1] if split else None,
            **training_kwargs,
        )
        pipe = TinyGroundingGPTPipeline.from_pretrained(result["final"])
        res = evaluate(pipe, [get_task(t) for t in REPORTED], eval_root, out / slug / "eval", model_name=name_v,
                       model_id=checkpoint_id(result["final"]), progress=False)  # fmt: skip
        rows[name_v] = {t: round(res["tasks"][t]["metrics"][res["tasks"][t]["headline"]], 2) for t in REPORTED}
    (out / "ablation.json").write_text(json.dumps({"ablation": name, "results": rows}, indent=2))
    header = "| variant | " + " | ".join(REPORTED) + " |"
    lines = [header, "|" + " --- |" * (len(REPORTED) + 1)]
    lines += [f"| {v} | " + " | ".join(f"{r[t]:.2f}" for t in REPORTED) + " |" for v, r in rows.items()]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    return {"ablation": name, "results": rows}
