"""Where REC answers go wrong: by expression kind, and how far off the boxes are that found their object.

    tgg demo --out demo_out
    python benchmarks/bench_rec_errors.py --eval-dir demo_out/eval --data-root demo_out/world \
        > benchmarks/results/rec_errors.txt

Reads a ``tgg eval`` output folder (its per-item ``scores/<task>.jsonl``) and the world it scored, and
prints for each REC task: per expression kind, Acc@0.5, the share of answers whose centre lies in the
named object, and the misses on another object / on none (the runner's own scores); then, over the
answers whose centre hit the named object, how many still miss IoU 0.5, and the mean error of the box's
centre and size in the image's pixels next to the objects' mean size. Baseline in the same run: the same
errors for the world's mean box (the answer prior a model that ignores the image would write).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.eval.task import get_task


def load_rows(eval_dir: Path, data_root: Path, task: str) -> list[tuple[dict, bx.Box, bx.Box | None]]:
    """(score, true pixel box, predicted pixel box or None) per scored item."""
    items = {i.id: i for i in get_task(task).load(data_root)}
    rows = []
    for line in (eval_dir / "scores" / f"{task}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        item = items[rec["id"]]
        pred = bx.parse_first_box(rec["answer"])
        pixel = bx.model_to_pixel(pred, item.width, item.height) if pred is not None else None
        rows.append((rec["score"], tuple(item.reference["box"]), pixel))
    return rows


def size_errors(pairs: list[tuple[bx.Box, bx.Box]]) -> dict[str, float]:
    """Mean absolute error (pixels) of centre x/y and width/height, and the mean signed width/height error."""

    def parts(b: bx.Box) -> tuple[float, float, float, float]:
        return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]

    diffs = [[p - t for p, t in zip(parts(pred), parts(true), strict=True)] for true, pred in pairs]
    out = {k: statistics.mean(abs(d[i]) for d in diffs) for i, k in enumerate(("|dcx|", "|dcy|", "|dw|", "|dh|"))}
    out["dw"] = statistics.mean(d[2] for d in diffs)
    out["dh"] = statistics.mean(d[3] for d in diffs)
    return out


def report(task: str, rows: list[tuple[dict, bx.Box, bx.Box | None]]) -> list[str]:
    lines = [f"## {task}: {len(rows)} expressions", f"{'kind':12s} {'n':>4s} {'acc@0.5':>8s} {'centre in':>9s}"
             f" {'on other':>8s} {'on none':>8s}"]  # fmt: skip
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for score, _, _ in rows:
        by_kind[score.get("kind", "-")].append(score)
    for kind, scores in [*sorted(by_kind.items()), ("all", [s for s, _, _ in rows])]:
        pct = {k: 100 * sum(s.get(k, 0) for s in scores) / len(scores) for k in
               ("acc@0.5", "center_acc", "wrong_object", "no_object")}  # fmt: skip
        lines.append(f"{kind:12s} {len(scores):4d} {pct['acc@0.5']:7.1f}% {pct['center_acc']:8.1f}%"
                     f" {pct['wrong_object']:7.1f}% {pct['no_object']:7.1f}%")  # fmt: skip
    hits = [(true, pred) for score, true, pred in rows if score["center_acc"] and pred is not None]
    true_boxes = [true for _, true, _ in rows]
    mean_box = tuple(statistics.mean(b[i] for b in true_boxes) for i in range(4))
    size = statistics.mean(b[2] - b[0] for b in true_boxes), statistics.mean(b[3] - b[1] for b in true_boxes)
    lines.append(f"objects: mean size {size[0]:.1f} x {size[1]:.1f} px")
    if hits:
        tight = sum(bx.iou(p, t) >= 0.5 for t, p in hits)
        ious = [bx.iou(p, t) for t, p in hits]
        err = size_errors(hits)
        lines.append(f"centre in the named object: {len(hits)} answers; IoU >= 0.5 for {tight}"
                     f" ({100 * tight / len(hits):.1f} %), median IoU {statistics.median(ious):.3f}")  # fmt: skip
        lines.append("  box error (px): " + "  ".join(f"{k} {v:+.2f}" if k in ("dw", "dh") else f"{k} {v:.2f}"
                                                      for k, v in err.items()))  # fmt: skip
    base = size_errors([(t, mean_box) for t in true_boxes])
    lines.append("  baseline, the mean box for every expression (px): "
                 + "  ".join(f"{k} {base[k]:.2f}" for k in ("|dcx|", "|dcy|", "|dw|", "|dh|")))  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", required=True, help="a tgg eval (or tgg demo's eval/) output folder")
    parser.add_argument("--data-root", required=True, help="the world it evaluated")
    parser.add_argument("--tasks", default="world_rec_val,world_rec_test,world_rec_compositional_test")
    args = parser.parse_args()
    eval_dir, root = Path(args.eval_dir), Path(args.data_root)
    model = json.loads((eval_dir / "results.json").read_text()).get("model", "?")
    print(f"# python benchmarks/bench_rec_errors.py --eval-dir {args.eval_dir} --data-root {args.data_root}")
    print(f"# model: {model}")
    for task in args.tasks.split(","):
        if (eval_dir / "scores" / f"{task}.jsonl").is_file():
            print("\n".join(["", *report(task, load_rows(eval_dir, root, task))]))


if __name__ == "__main__":
    main()
