"""results.json, per-item scores and a Markdown report laid out like the paper's tables.

Tables appear when at least one of their tasks ran; a cell without a result is "-" as in the paper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinygroundinggpt.eval.benchmarks.mme import PERCEPTION as MME_PERCEPTION

# (column title, task name) in the order of the paper's Table 1.
TABLE1 = [
    ("RefCOCO val", "refcoco_val"),
    ("RefCOCO testA", "refcoco_testA"),
    ("RefCOCO testB", "refcoco_testB"),
    ("RefCOCO+ val", "refcoco+_val"),
    ("RefCOCO+ testA", "refcoco+_testA"),
    ("RefCOCO+ testB", "refcoco+_testB"),
    ("RefCOCOg val", "refcocog_val"),
    ("RefCOCOg test", "refcocog_test"),
]
POPE_SPLITS = [("Random", "pope_random"), ("Popular", "pope_popular"), ("Adversarial", "pope_adversarial")]
# Table 2: (column, task, metric); POPE there is the mean F1 of the three splits.
TABLE2 = [
    ("VQAv2", "vqav2_val", "accuracy"),
    ("GQA", "gqa_testdev", "accuracy"),
    ("SQA-I", "scienceqa_img", "accuracy"),
    ("POPE", None, "f1"),
    ("MME-P", "mme", "perception"),
    ("MMB", "mmbench_en_dev", "circular_accuracy"),
    ("LLaVA-W", "llava_bench", "relative_score"),
]

# The built-in synthetic world: (column, task, metric).
WORLD = [
    ("REC val", "world_rec_val", "acc@0.5"),
    ("REC test", "world_rec_test", "acc@0.5"),
    ("REC comp. val", "world_rec_compositional_val", "acc@0.5"),
    ("REC comp. test", "world_rec_compositional_test", "acc@0.5"),
    ("POPE random F1", "world_pope_random", "f1"),
    ("POPE popular F1", "world_pope_popular", "f1"),
    ("POPE adversarial F1", "world_pope_adversarial", "f1"),
    ("POPE adversarial Yes", "world_pope_adversarial", "yes_ratio"),
]


def _metric(results: dict[str, Any], task: str, metric: str) -> float | None:
    entry = results["tasks"].get(task)
    return entry["metrics"].get(metric) if entry else None


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"  # ints are counts


def _partial(results: dict[str, Any], tasks: list[str]) -> bool:
    """Whether any of ``tasks`` ran with failed items, so that its figures cover only the scored ones."""
    return any(results["tasks"].get(t, {}).get("n_failed") for t in tasks)


def _cell(results: dict[str, Any], tasks: list[str], value: float | None, digits: int = 2) -> str:
    """A table cell for a figure computed from ``tasks``: ``*`` marks one that misses failed items."""
    text = _fmt(value, digits)
    return text + "*" if value is not None and _partial(results, tasks) else text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(results: dict[str, Any]) -> str:
    model, ran = results["model"], set(results["tasks"])
    lines = [f"# Evaluation of `{model}`", ""]
    if results.get("limit"):
        lines += [f"Only the first {results['limit']} items of each task were evaluated.", ""]
    if _partial(results, list(ran)):
        lines += ["Figures marked * leave out items that failed (listed under each task below).", ""]
    if ran & {t for _, t in TABLE1}:
        accs = [_metric(results, t, "acc@0.5") for _, t in TABLE1]
        present = [a for a in accs if a is not None]
        avg = sum(present) / len(present) if present else None
        avg_title = "Avg" if len(present) == len(TABLE1) else f"Avg ({len(present)}/{len(TABLE1)})"
        cells = [_cell(results, [t], a) for (_, t), a in zip(TABLE1, accs, strict=True)]
        lines += ["## REC, Acc@0.5 (layout of Table 1)", ""]
        lines += _table(
            ["Model", *(c for c, _ in TABLE1), avg_title],
            [[model, *cells, _cell(results, [t for _, t in TABLE1], avg)]],
        )
        lines.append("")
    if ran & {t for _, t in POPE_SPLITS}:
        header, row = ["Model"], [model]
        for split, task in POPE_SPLITS:
            header += [f"{split} Accuracy", f"{split} F1-Score", f"{split} Yes"]
            row += [_cell(results, [task], _metric(results, task, m)) for m in ("accuracy", "f1", "yes_ratio")]
        lines += ["## POPE (layout of Table 8; Yes = share of predictions that are yes)", ""]
        lines += [*_table(header, [row]), ""]
    if ran & ({t for _, t, _ in TABLE2 if t} | {t for _, t in POPE_SPLITS}):
        row = [model]
        for _, task, metric in TABLE2:
            if task is None:
                f1s = [v for _, t in POPE_SPLITS if (v := _metric(results, t, "f1")) is not None]
                pope = [t for _, t in POPE_SPLITS]
                cell = _cell(results, pope, sum(f1s) / len(f1s) if f1s else None, 1)
                if 0 < len(f1s) < len(POPE_SPLITS):  # a mean of fewer splits: say of how many, as MME-P does
                    cell += f" ({len(f1s)}/{len(POPE_SPLITS)})"
                row.append(cell)
            else:
                cell = _cell(results, [task], _metric(results, task, metric), 1)
                subtasks = _metric(results, task, "perception_subtasks") if task == "mme" else None
                if subtasks is not None and subtasks < len(MME_PERCEPTION):  # a partial sum: say of how many
                    cell += f" ({subtasks}/{len(MME_PERCEPTION)})"
                row.append(cell)
        lines += ["## Image understanding (layout of Table 2; POPE = mean F1 of the splits run)", ""]
        lines += [*_table(["Model", *(c for c, _, _ in TABLE2)], [row]), ""]
    if ran & {t for _, t, _ in WORLD}:
        lines += ["## Synthetic world (REC Acc@0.5, POPE F1 and yes-ratio)", ""]
        row = [model, *(_cell(results, [t], _metric(results, t, m)) for _, t, m in WORLD)]
        lines += [*_table(["Model", *(c for c, _, _ in WORLD)], [row]), ""]
    if "desc_quality" in ran:
        vals = [
            _cell(results, ["desc_quality"], _metric(results, "desc_quality", a))
            for a in ("quality", "richness", "accuracy")
        ]
        lines += ["## Description assessment (layout of Table 13)", ""]
        lines += [*_table(["Model", "Quality", "Richness", "Accuracy"], [[model, *vals]]), ""]
    lines += ["## Every task", ""]
    for name, entry in results["tasks"].items():
        lines += [f"### {name}", "", f"Protocol: {entry['protocol']}", ""]
        lines.append(f"{entry['n_scored']} of {entry['n_items']} items scored, {entry['n_failed']} failed.")
        lines += ["", *_table(["metric", "value"], [[k, _fmt(v)] for k, v in entry["metrics"].items()]), ""]
        if entry["failed"]:
            lines.append("Failed items:")
            lines += [f"- `{f['id']}`: {f['error']}" for f in entry["failed"][:20]]
            if len(entry["failed"]) > 20:
                lines.append(f"- ... and {len(entry['failed']) - 20} more (all in results.json)")
            lines.append("")
    return "\n".join(lines)


def write_reports(results: dict[str, Any], out_dir: Path) -> None:
    """``results.json``, ``results.md`` and ``scores/<task>.jsonl`` (answer and score per item)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, entry in results["tasks"].items():
        per_item = entry.pop("_per_item", [])
        path = out_dir / "scores" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in per_item), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(markdown(results) + "\n", encoding="utf-8")
