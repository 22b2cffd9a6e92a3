"""The built-in demo: the shipped tiny TinyGroundingGPT grounding fresh synthetic scenes, evaluated and drawn.

``tgg demo`` generates held-out scenes from a seed no training run used, answers their REC and POPE
questions through the evaluation suite, and writes ``report.json``, ``report.md`` and
``predictions.png`` (true boxes green, predicted boxes red). ``tgg demo --train`` first reproduces the
shipped checkpoint: world → the 27 stages of recipes/tiny.yaml (1a → 1b → 2, one-object scenes first, … →
stage3_presence) from the shipped tiny components,
then (under the recipes' own seeds) evaluates the shipped checkpoint on the same scenes and says whether the
retrained one is within 3 points of it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.assets import SHIPPED
from tinygroundinggpt.cli import add_command
from tinygroundinggpt.eval.runner import answers_of, checkpoint_id, evaluate
from tinygroundinggpt.eval.task import get_task
from tinygroundinggpt.images import PREDICTED_BOX_COLOUR, TRUE_BOX_COLOUR, draw_boxes, tile_sheet
from tinygroundinggpt.model import TinyGroundingGPTConfig

DEMO_SEED = 20_261_126  # no training world uses this seed: the demo's scenes are unseen
TRAIN_SEED = 7
REC_TASKS = {"heldout": ("world_rec_val", "world_rec_test"),
             "compositional": ("world_rec_compositional_val", "world_rec_compositional_test")}  # fmt: skip
POPE_TASKS = ("world_pope_random", "world_pope_popular", "world_pope_adversarial")
# What `tgg demo --train` trains on; the shipped checkpoint was made with exactly these. The tiny
# recipes read the one-object world from <train world>/easy (recipes/tiny.yaml, stage2_easy).
TRAIN_WORLD = {"n_train": 12000, "n_eval": 0, "image_size": 64}
EASY_WORLD = {"n_train": 20000, "n_eval": 0, "image_size": 64, "min_objects": 1, "max_objects": 1}
# The headline figures, and how close a retrained checkpoint must come to the shipped one to count as reproducing it.
HEADLINE = ("rec_heldout_acc50", "rec_compositional_acc50", "pope_adversarial_acc", "pope_adversarial_f1")
REPRODUCED_WITHIN = 3.0


def _pooled(results: dict[str, Any], tasks: tuple[str, ...], metric: str) -> float:
    """A metric over several tasks, weighted by their item counts (a task with none scored has no metrics)."""
    rows = [r for r in (results["tasks"][t] for t in tasks) if r["n_scored"]]
    n = sum(r["n_scored"] for r in rows)
    return sum(r["metrics"][metric] * r["n_scored"] for r in rows) / n if n else 0.0


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The demo's headline numbers from the evaluation results."""
    out: dict[str, Any] = {}
    for name, tasks in REC_TASKS.items():
        out[f"rec_{name}_acc50"] = round(_pooled(results, tasks, "acc@0.5"), 2)
        out[f"rec_{name}_miou"] = round(_pooled(results, tasks, "miou"), 2)
        out[f"rec_{name}_n"] = sum(results["tasks"][t]["n_scored"] for t in tasks)
    for task in POPE_TASKS:
        split = task.rsplit("_", 1)[1]
        m = results["tasks"][task]["metrics"]
        out[f"pope_{split}_acc"] = round(m["accuracy"], 2)
        out[f"pope_{split}_f1"] = round(m["f1"], 2)
        out[f"pope_{split}_yes_ratio"] = round(m["yes_ratio"], 2)
        out[f"pope_{split}_not_yes_or_no"] = round(m["not_yes_or_no"], 2)
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| benchmark | metric | value |", "| --- | --- | --- |"]
    for name in REC_TASKS:
        lines.append(f"| REC {name} ({summary[f'rec_{name}_n']} expressions) | Acc@0.5 | "
                     f"{summary[f'rec_{name}_acc50']:.2f} |")  # fmt: skip
        lines.append(f"| REC {name} | mean IoU | {summary[f'rec_{name}_miou']:.2f} |")
    for task in POPE_TASKS:
        split = task.rsplit("_", 1)[1]
        for metric in ("acc", "f1", "yes_ratio", "not_yes_or_no"):
            lines.append(f"| POPE {split} | {metric} | {summary[f'pope_{split}_{metric}']:.2f} |")
    if "train_minutes" in summary:
        lines.append(f"| training | minutes | {summary['train_minutes']:.1f} |")
    if "train_seed" in summary:
        lines.append(f"| training | seed | {summary['train_seed']} |")
    if "compared_with" in summary:
        other = summary["compared_with"]
        lines += ["", f"Against {other['model']} on the same scenes (within {REPRODUCED_WITHIN:g} points on all: "
                  f"{'yes' if other['within'] else 'no'}):", "",
                  "| figure | this model | that model | difference |", "| --- | --- | --- | --- |"]  # fmt: skip
        lines += [f"| {k} | {summary[k]:.2f} | {other[k]:.2f} | {summary[k] - other[k]:+.2f} |" for k in HEADLINE]
    return "\n".join(lines) + "\n"


def compare(summary: dict[str, Any], other: dict[str, Any], model: str | Path) -> dict[str, Any]:
    """``other``'s headline figures beside ``summary``'s, and whether every one is within ``REPRODUCED_WITHIN``."""
    return {
        "model": str(model),
        **{k: other[k] for k in HEADLINE},
        "within": all(abs(summary[k] - other[k]) <= REPRODUCED_WITHIN for k in HEADLINE),
    }


def prediction_sheet(world_dir: Path, eval_dir: Path, task_name: str, n: int = 12, cell: int = 224) -> Image.Image:
    """The first ``n`` REC items drawn: true box green, predicted box red, expression underneath."""
    items = get_task(task_name).load(world_dir)[:n]
    scored = (eval_dir / "scores" / f"{task_name}.jsonl").read_text(encoding="utf-8").splitlines()
    answers = {row["id"]: row["answer"] for row in map(json.loads, scored)}
    tiles, captions = [], []
    for item in items:
        img = Image.open(item.image).convert("RGB")
        drawn = [(tuple(item.reference["box"]), TRUE_BOX_COLOUR)]
        pred = bx.parse_first_box(answers.get(item.id, ""))
        if pred is not None and bx.in_model_frame(pred):  # as scored: other numbers are a miss, not a box
            drawn.append((bx.model_to_pixel(pred, img.width, img.height), PREDICTED_BOX_COLOUR))
        boxes, colours = zip(*drawn, strict=True)
        tiles.append(draw_boxes(img, boxes, colour=colours, scale=cell / max(img.size)))
        text = item.reference["expression"]
        captions.append([text[:38], text[38:76]])
    return tile_sheet(tiles, cell=cell, captions=captions)


def check_demo_args(*, model: str | Path | None, train: bool, n_eval: int, train_seed: int | None) -> None:
    """Refuse a demo that cannot run as asked, before anything is written or trained."""
    if train and model is not None:
        raise ValueError("training evaluates the model it trains; a model to evaluate was named too: give one")
    if train_seed is not None and not train:
        raise ValueError("a training seed applies only when training")
    if n_eval < 2:
        raise ValueError(f"the evaluation needs at least 2 scenes (half val, half test), got {n_eval}")


def run_demo(
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    train: bool = False,
    n_eval: int = 40,
    seed: int = DEMO_SEED,
    train_seed: int | None = None,
    compare_with: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns the summary also written to ``<out>/report.json``. ``train_seed`` (with
    ``train``) seeds the whole chain instead of the recipes' own seeds, which made the shipped checkpoint.
    ``compare_with`` (with ``train`` and the recipes' seeds: the shipped checkpoint) is evaluated on the same
    scenes and its headline figures reported beside the model's, with whether each is within ``REPRODUCED_WITHIN``
    points."""
    from tinygroundinggpt.world import write_world

    check_demo_args(model=model, train=train, n_eval=n_eval, train_seed=train_seed)
    if train and train_seed is None and compare_with is None:
        compare_with = SHIPPED  # what --train with the recipes' own seeds reproduces
    if compare_with is not None and not (Path(compare_with) / "config.json").is_file():
        raise FileNotFoundError(f"no TinyGroundingGPT checkpoint at {compare_with} to compare with")  # before training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if train:
        from tinygroundinggpt.training.chain import run_chain

        t0 = time.perf_counter()
        train_world = out / "train_world"
        write_world(train_world, seed=TRAIN_SEED, progress=progress, **TRAIN_WORLD)
        write_world(train_world / "easy", seed=TRAIN_SEED + 1, progress=progress, **EASY_WORLD)
        world_minutes = (time.perf_counter() - t0) / 60
        chain = run_chain(out / "train", train_world, preset="tiny", seed=train_seed, disable_tqdm=not progress)
        model = chain["final"]
        # A rerun resumes the chain (finished stages skipped, a killed one from its last checkpoint): count what
        # the stages took, in whichever runs, not this run's wall time alone.
        summary["train_minutes"] = round(world_minutes + chain["stage_minutes"], 2)
        summary["train_minutes_this_run"] = round((time.perf_counter() - t0) / 60, 2)
        if train_seed is not None:
            summary["train_seed"] = train_seed
    model = Path(model) if model is not None else SHIPPED
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"no TinyGroundingGPT checkpoint at {model}; run `tgg demo --train` to make one")
    world = out / "world"
    # scenes drawn at the model's input size: resized up, smaller ones would add pixels but no detail
    size = TinyGroundingGPTConfig.from_pretrained(model).image_size
    write_world(world, n_train=0, n_eval=n_eval, seed=seed, image_size=size, progress=progress)
    t0 = time.perf_counter()
    results = _evaluate(model, world, out / "eval", batch_size, progress)
    summary = {**summarise(results), **summary, "eval_seconds": round(time.perf_counter() - t0, 1)}
    summary.update({"model": str(model), "seed": seed, "n_eval_scenes": n_eval})
    if compare_with is not None:
        other = summarise(_evaluate(Path(compare_with), world, out / "eval_compared", batch_size, progress))
        summary["compared_with"] = compare(summary, other, compare_with)
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary))
    prediction_sheet(world, out / "eval", "world_rec_test").save(out / "predictions.png")
    return summary


def _evaluate(model: Path, world: Path, eval_dir: Path, batch_size: int, progress: bool) -> dict[str, Any]:
    from tinygroundinggpt.api import TinyGroundingGPTPipeline

    tasks = [get_task(t) for group in REC_TASKS.values() for t in group] + [get_task(t) for t in POPE_TASKS]
    model_id = checkpoint_id(model)
    if eval_dir.exists() and answers_of(eval_dir) != model_id:
        shutil.rmtree(eval_dir)  # the demo's own answers, of another (or an unrecorded) checkpoint: answer afresh
    pipe = TinyGroundingGPTPipeline.from_pretrained(model)
    return evaluate(pipe, tasks, world, eval_dir, model_name=str(model), model_id=model_id,
                    batch_size=batch_size, progress=progress)  # fmt: skip


def add_commands(sub: Any) -> None:
    p = add_command(sub, "demo")
    p.add_argument("--out", default="demo_out", help="output folder (report.json, report.md, predictions.png)")
    p.add_argument("--train", action="store_true", help="first reproduce the checkpoint from the tiny components")
    p.add_argument("--model", help="evaluate this checkpoint instead of the shipped one")
    p.add_argument(
        "--compare-with",
        help="also evaluate this checkpoint on the same scenes, differences reported (--train: the shipped one)",
    )
    p.add_argument("--n-eval", type=int, default=40, help="fresh evaluation scenes (half val, half test)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="seed of the fresh evaluation scenes")
    p.add_argument(
        "--train-seed",
        type=int,
        help="with --train: one seed for the whole chain (default: the recipes' own, which made the shipped run)",
    )
    p.set_defaults(func=_demo)


def _demo(args: Any) -> int:
    if args.train:  # the chain says which of its stages it is on
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run_demo(
        args.out,
        model=args.model,
        train=args.train,
        n_eval=args.n_eval,
        seed=args.seed,
        train_seed=args.train_seed,
        compare_with=args.compare_with,
    )
    print(markdown(summary))
    print(f"report: {Path(args.out) / 'report.json'}  picture: {Path(args.out) / 'predictions.png'}")
    return 0
