"""The paper's ablations in miniature, each variant trained and evaluated on the same held-out sets.

* ``table3``: stage 2 with text–coordinate data only (T, C) vs. with object images too (T, C, I);
* ``table4``: stage 3 with instruction data only vs. with the global grounding data (conversations,
  grounded descriptions) too;
* ``table10``: CLIP alone vs. CLIP + DINOv2 (two complete chains).

Variants share every stage before the one they differ in (trained once, in ``<out>/shared``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinygroundinggpt.training.chain import run_chain
from tinygroundinggpt.training.recipe import chain_stages

# variant name → (first stage that differs, per-stage overrides, component overrides)
ABLATIONS: dict[str, dict[str, tuple[str, dict[str, list[str]], dict[str, Any]]]] = {
    "table3": {
        "T,C": ("stage2", {"stage2": ['data=[{"path": "stage2_tc.jsonl", "weight": 1.0}]']}, {}),
        "T,C,I": ("stage2", {}, {}),
    },
    "table4": {
        "no global align": ("stage3", {"stage3": ['data=[{"path": "stage3_instruct.jsonl", "weight": 1.0}]']}, {}),
        "global align": ("stage3", {}, {}),
    },
    "table10": {
        "CLIP": ("stage1a", {}, {"dino": None}),
        "CLIP + DINOv2": ("stage1a", {}, {}),
    },
}
REPORTED = ("world_rec_val", "world_rec_test", "world_rec_compositional_test", "world_pope_adversarial")


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
    from tinygroundinggpt.eval.runner import evaluate
    from tinygroundinggpt.eval.task import get_task

    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    out = Path(out_dir)
    stages = chain_stages(preset == "tiny")
    common = {s: list(overrides or []) for s in stages}
    rows: dict[str, dict[str, float]] = {}
    for variant, (first, stage_overrides, variant_components) in ABLATIONS[name].items():
        slug = variant.replace(" ", "_").replace(",", "").replace("+", "plus")
        split = stages.index(first)
        shared = out / "shared"
        if split:
            run_chain(
                shared, data_root, preset=preset, stages=stages[:split], overrides=common, components=components,
                **training_kwargs,
            )  # fmt: skip
        ov = {s: common[s] + stage_overrides.get(s, []) for s in stages}
        result = run_chain(
            out / slug,
            data_root,
            preset=preset,
            stages=stages[split:],
            overrides=ov,
            components={**(components or {}), **variant_components},
            init=shared / stages[split - 1] if split else None,
            **training_kwargs,
        )
        pipe = TinyGroundingGPTPipeline.from_pretrained(result["final"])
        res = evaluate(pipe, [get_task(t) for t in REPORTED], eval_root, out / slug / "eval", progress=False)
        rows[variant] = {t: round(res["tasks"][t]["metrics"][res["tasks"][t]["headline"]], 2) for t in REPORTED}
    (out / "ablation.json").write_text(json.dumps({"ablation": name, "results": rows}, indent=2))
    header = "| variant | " + " | ".join(REPORTED) + " |"
    lines = [header, "|" + " --- |" * (len(REPORTED) + 1)]
    lines += [f"| {v} | " + " | ".join(f"{r[t]:.2f}" for t in REPORTED) + " |" for v, r in rows.items()]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    return {"ablation": name, "results": rows}
