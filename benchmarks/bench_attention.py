"""Does the answer look at what it names? Last-layer attention of the box tokens on fresh REC scenes.

    python benchmarks/bench_attention.py [--scenes 40] [--seed 20261126] > benchmarks/results/attention.txt

Every REC expression of ``--scenes`` freshly generated held-out scenes (the world `tgg demo` evaluates on,
same seed by default) is put to the model with the paper's REC prompt; it answers greedily. For each answer
with a box, :func:`tinygroundinggpt.interpret.attention_maps` (``span="boxes"``) gives the attention of the
answer's box tokens to the image's patches at the LLM's last layer, summed over heads and tokens (paper A.8).

Measured: the share of that attention on the patches that overlap the true box (patches mapped to the
original image's pixels through the padded square), against the share uniform attention would put there in
the same run (those patches' count / all patches), and a pointing game (does the most-attended patch overlap
the box? chance: the uniform share). The same for the predicted box, and, as a control for "attention goes
to objects, whichever", for each other object of the scene (mean per object). Rows split the answers by REC
outcome (IoU ≥ 0.5; a miss on another annotated object or on none, as ``tgg eval`` scores them). A second
table repeats the figures for every layer. The figure (``--figure``) shows a few hits and misses
(one per scene): the image with the true box green and the predicted red, and the heat map of
``--figure-layer`` (default: the last).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.demo import DEMO_SEED, SHIPPED
from tinygroundinggpt.eval.benchmarks.rec import score_rec
from tinygroundinggpt.eval.task import Item, get_task
from tinygroundinggpt.images import PREDICTED_BOX_COLOUR, TRUE_BOX_COLOUR, draw_boxes, load_image, tile_sheet
from tinygroundinggpt.interpret import AttentionMap, attention_maps
from tinygroundinggpt.world import write_world

TASKS = ("world_rec_val", "world_rec_test")
GROUPS = ("all", "hit", "miss, on another object", "miss, on no object")


TARGETS = ("true box", "predicted box", "other objects")


@dataclass
class Row:
    item: Item
    answer: str
    outcome: str  # one of GROUPS[1:]
    iou: float
    amap: AttentionMap
    # per TARGETS: (attention share on its patches, uniform attention's share, most-attended patch among them)
    shares: dict[str, tuple[float, float, float]]


def box_cells(box: bx.Box, grid: int, width: int, height: int) -> torch.Tensor:
    """``grid``×``grid`` mask of the patches whose pixels overlap ``box`` (original-image pixels)."""
    return torch.tensor(
        [[bx.intersection(bx.grid_cell_box(r, c, grid, width, height), box) > 0 for c in range(grid)]
         for r in range(grid)]
    )  # fmt: skip


def shares(raw: torch.Tensor, boxes: list[bx.Box], width: int, height: int) -> tuple[float, float, float]:
    """Means over ``boxes`` of (attention share on the patches overlapping the box, uniform attention's share,
    whether the most-attended patch is one of them)."""
    out = []
    for box in boxes:
        cells = box_cells(box, raw.shape[0], width, height)
        out.append(
            (float(raw[cells].sum() / raw.sum()), float(cells.float().mean()), float(cells.flatten()[raw.argmax()]))
        )
    return tuple(sum(v) / len(out) for v in zip(*out, strict=True))  # type: ignore[return-value]


def measure(pipe: TinyGroundingGPTPipeline, item: Item, answer: str) -> list[Row] | None:
    """One answer's attention shares at every layer (one forward pass); ``None`` when the answer wrote no box."""
    pred = bx.parse_first_box(answer)
    if pred is None:
        return None
    w, h, true_box = item.width, item.height, tuple(item.reference["box"])
    others = [tuple(b) for b in item.reference["others"]]
    maps = attention_maps(pipe.model, pipe.processor, item.image, item.prompt, answer, span="boxes")
    score = score_rec(answer, true_box, w, h, others)
    outcome = GROUPS[1] if score["acc@0.5"] else GROUPS[2] if score["wrong_object"] else GROUPS[3]
    targets = {"true box": [true_box], "predicted box": [bx.model_to_pixel(pred, w, h)], "other objects": others}
    return [
        Row(item, answer, outcome, score["iou"], amap, {k: shares(amap.raw, v, w, h) for k, v in targets.items()})
        for amap in maps
    ]


def means(rows: list[Row], target: str) -> tuple[float, float, float]:
    """(attention share, uniform share, peak in) over ``rows``, in %."""
    return tuple(100 * sum(r.shares[target][k] for r in rows) / len(rows) for k in range(3))  # type: ignore[return-value]


def table(groups: list[tuple[str, list[Row]]]) -> list[str]:
    """Per group of answers: attention share / uniform share / their ratio / peak in, for each of TARGETS."""
    header = f"{'attn':>9s} {'unif.':>6s} {'ratio':>5s} {'peak':>6s}"
    out = [f"{'':31s}" + "".join(f"{t:^{len(header)}s}" for t in TARGETS), f"{'answers':26s} {'n':>4s}" + header * 3]
    for label, sel in groups:
        line = f"{label:26s} {len(sel):4d}"
        for target in TARGETS:
            share, uniform, peak = means(sel, target)
            line += f"{share:8.1f}% {uniform:5.1f}% {share / uniform:5.2f} {peak:5.1f}%"
        out.append(line)
    return out


def figure(rows: list[Row], path: Path, per_group: int = 4, cell: int = 192) -> None:
    """The first hits and misses, one per scene: image with true (green) and predicted (red) boxes, heat map."""
    shown: list[Row] = []
    for hit in (True, False):
        scenes: set[str] = set()
        for r in rows:
            if (r.outcome == GROUPS[1]) == hit and r.item.image not in scenes and len(scenes) < per_group:
                shown.append(r)
                scenes.add(r.item.image)
    tiles, captions = [], []
    for r in shown:
        image = load_image(r.item.image)
        true_box = [(tuple(r.item.reference["box"]), TRUE_BOX_COLOUR)]
        pred_box = bx.model_to_pixel(bx.parse_first_box(r.answer), image.width, image.height)
        scale = cell / max(image.size)
        tiles.append(draw_boxes(image, [true_box[0][0], pred_box], colour=[TRUE_BOX_COLOUR, PREDICTED_BOX_COLOUR],
                                scale=scale))  # fmt: skip
        tiles.append(r.amap.to_image(image, extra_boxes=true_box, scale=scale))
        captions.append(textwrap.wrap(r.item.reference["expression"], 32)[:2])
        captions.append([f"IoU {r.iou:.2f}, {r.outcome.split(',')[0]}",
                         "{:.0f}% in true box ({:.0f}%)".format(*means([r], "true box"))])  # fmt: skip
    tile_sheet(tiles, columns=4, cell=cell, captions=captions).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED))
    parser.add_argument("--scenes", type=int, default=40, help="fresh held-out scenes (all their REC expressions)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", default="benchmarks/results/attention.png")
    parser.add_argument("--figure-layer", type=int, default=-1, help="the layer the figure maps (default: the last)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    when = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    print(f"# python benchmarks/bench_attention.py {' '.join(sys.argv[1:])}   ({when}, {os.cpu_count()}-core CPU,"
          f" {args.threads} thread(s), torch {torch.__version__})")  # fmt: skip
    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    n_layers = pipe.model.config.text_config.num_hidden_layers
    with tempfile.TemporaryDirectory() as tmp:
        write_world(
            tmp, n_train=0, n_eval=args.scenes, seed=args.seed, image_size=pipe.model.config.image_size, progress=False
        )
        items = [item for task in TASKS for item in get_task(task).load(Path(tmp))]
        answers = []
        for k in range(0, len(items), 32):
            chunk = items[k : k + 32]
            answers += pipe.generate_batch([i.image for i in chunk], [i.prompt for i in chunk], max_new_tokens=32)
        measured = [m for m in (measure(pipe, i, a) for i, a in zip(items, answers, strict=True)) if m is not None]
        by_layer = {layer: [m[layer] for m in measured] for layer in range(n_layers)}
        rows = by_layer[n_layers - 1]
        fig_layer = range(n_layers)[args.figure_layer]
        figure(by_layer[fig_layer], Path(args.figure))
    hits = sum(r.outcome == GROUPS[1] for r in rows)
    print(f"# model {args.model}")
    print(f"# {len(items)} REC expressions on {args.scenes} fresh held-out scenes (seed {args.seed};"
          f" tgg demo's: {DEMO_SEED}),")  # fmt: skip
    print(f"# greedy answers; {len(rows)} wrote a box ({len(items) - len(rows)} did not), {hits} hits at IoU 0.5"
          f" ({100 * hits / len(items):.1f} % of all expressions)")  # fmt: skip
    print("# attention of the answer's box tokens to the 8x8 image patches, summed over heads and tokens;")
    print("# 'attn': its share on patches overlapping the box; 'uniform': that share under uniform attention")
    print("# (overlapping patches / 64); 'peak': the most-attended patch overlaps the box (chance: 'unif.');")
    print("# 'other objects': each other annotated object of the scene, averaged. Means over answers.\n")
    print(f"## last layer ({n_layers - 1} of 0-{n_layers - 1}), as the paper")
    print("\n".join(table([(g, [r for r in rows if g == "all" or r.outcome == g]) for g in GROUPS])))
    print("\n## every layer, all answers with a box")
    print("\n".join(table([(f"layer {k}", m) for k, m in by_layer.items()])))
    print(f"\nfigure: {args.figure}, layer {fig_layer}   (benchmark ran in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
