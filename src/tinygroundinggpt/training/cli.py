"""``tgg train``: one stage or the whole chain (1a → 1b → 2 → 3; tiny: the stages of recipes/tiny.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygroundinggpt.cli import add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train")
    p.add_argument("--data-root", required=True, help="folder the recipes' data paths are relative to")
    p.add_argument("--out", required=True, help="output folder (a stage's checkpoint, or one folder per stage)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--recipe",
        help="a shipped stage (stage1a, stage1b, stage2, stage3), a stage of the tiny chain (stage2_easy, …) or a YAML",
    )
    what.add_argument(
        "--chain", action="store_true", help="run the chain: 1a → 1b → 2 → 3 (tiny: the stages of recipes/tiny.yaml)"
    )
    p.add_argument("--init", help="checkpoint to start from (required for a single stage other than stage1a)")
    p.add_argument(
        "--preset",
        help="tiny, 1.5b, 3b or 7b: the components stage1a starts from (default tiny); tiny also applies "
        "recipes/tiny.yaml's per-stage changes to every stage. Left out with --init, it follows the checkpoint: "
        "tiny.yaml unless its LLM has a paper model's width",
    )
    p.add_argument("--clip", help="CLIP checkpoint (Hub id or path) instead of the preset's")
    p.add_argument("--dino", help="DINOv2 checkpoint instead of the preset's; 'none' for CLIP only")
    p.add_argument("--llm", help="LLM checkpoint instead of the preset's")
    p.add_argument("--stages", default=None, help="comma-separated subset of the chain")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument(
        "--seed",
        type=int,
        help="one seed for every stage and the assembled projector (default: each recipe's own seed, projector 0)",
    )
    p.add_argument("--deepspeed", help="zero2, zero3 or a DeepSpeed JSON config")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: delete the checkpoints (checkpoint-N) an earlier run left in --out; with --chain, train "
        "finished stages again too",
    )
    p.set_defaults(func=_train)

    a = add_command(sub, "ablate")
    a.add_argument("name", choices=("table3", "table4", "table10"))
    a.add_argument("--data-root", required=True, help="training world (or converted data)")
    a.add_argument("--eval-root", required=True, help="held-out world with the REC and POPE sets")
    a.add_argument("--out", required=True)
    a.add_argument("--preset", default="tiny")
    for name in ("clip", "dino", "llm"):
        a.add_argument(f"--{name}", help=f"{name} checkpoint instead of the preset's")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every stage's recipe")
    a.set_defaults(func=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from tinygroundinggpt.training.ablations import run_ablation
    from tinygroundinggpt.training.engine import finish_distributed

    components = {k: getattr(args, k) for k in ("clip", "dino", "llm") if getattr(args, k)}
    result = run_ablation(
        args.name, args.out, args.data_root, args.eval_root, preset=args.preset, components=components,
        overrides=args.set,
    )  # fmt: skip
    finish_distributed()
    print(Path(args.out, "ablation.md").read_text())
    return 0 if result["results"] else 1


def _deepspeed_config(name: str | None) -> str | None:
    if name in (None, "zero2", "zero3"):
        return None if name is None else str(Path(__file__).resolve().parent / "configs" / f"{name}.json")
    return name


def _uses_tiny_recipes(preset: str | None, init: str | None) -> bool:
    """Whether recipes/tiny.yaml's changes apply: so a real checkpoint given as --init without --preset is not
    trained with the tiny chain's learning rates and step counts. Told by the LLM's width: a model of the tiny
    components at any image size stays tiny."""
    if preset is not None or init is None:
        return (preset or "tiny") == "tiny"
    from tinygroundinggpt.model import TinyGroundingGPTConfig
    from tinygroundinggpt.model.presets import PAPER_LLM_WIDTHS

    width = TinyGroundingGPTConfig.from_pretrained(init).text_config.hidden_size
    paper = [size for size, w in PAPER_LLM_WIDTHS.items() if w == width]
    print(
        f"--preset not given: {init}'s LLM is {width} wide, so "
        + (
            f"the paper's values apply (as --preset {paper[0]})"
            if paper
            else "recipes/tiny.yaml applies (as --preset tiny)"
        )
    )
    return not paper


def _train(args: argparse.Namespace) -> int:
    import json
    import logging

    from tinygroundinggpt.training.chain import load_checkpoint, run_chain
    from tinygroundinggpt.training.engine import finish_distributed, train_stage
    from tinygroundinggpt.training.recipe import chain_stages, stage_recipe

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extra = {"deepspeed": _deepspeed_config(args.deepspeed)} if args.deepspeed else {}
    components = {k: getattr(args, k) for k in ("clip", "dino", "llm") if getattr(args, k)}
    if components.get("dino") == "none":
        components["dino"] = None
    if args.seed is not None and any(o.startswith("seed=") for o in args.set):
        raise SystemExit("tgg train: give the seed once, with --seed or with --set seed=..., not both")
    tiny = _uses_tiny_recipes(args.preset, args.init)
    preset = args.preset or "tiny"
    if args.chain:
        stages = tuple(args.stages.split(",")) if args.stages else chain_stages(tiny)
        result = run_chain(
            args.out,
            args.data_root,
            preset=preset,
            use_tiny_overrides=tiny,
            components=components,
            stages=stages,
            overrides={s: args.set for s in stages},
            init=args.init,
            seed=args.seed,
            resume=not args.no_resume,
            **extra,
        )
        finish_distributed()
        print(json.dumps({k: v for k, v in result.items() if k != "reports"}, indent=2))
        return 0
    recipe = stage_recipe(args.recipe, args.set, tiny=tiny)
    if args.seed is not None:
        recipe.seed = components["seed"] = args.seed
    if args.init:
        model, processor = load_checkpoint(args.init)
    elif recipe.init == "assemble":
        from tinygroundinggpt.model.presets import assemble_preset

        model, processor = assemble_preset(preset, **components)
    else:
        raise SystemExit(f"recipe {recipe.name} starts from a previous stage: give --init CHECKPOINT")
    report = train_stage(
        recipe, model, processor, args.out, data_root=args.data_root, resume=not args.no_resume, **extra
    )
    finish_distributed()
    print(json.dumps({k: report[k] for k in ("stage", "train_loss", "global_step", "wall_seconds")}, indent=2))
    if report["skipped"] or report["replaced"]:
        n_skip, n_repl = len(report["skipped"]), len(report["replaced"])
        print(f"{n_skip} bad lines skipped, {n_repl} samples replaced (see train_report.json)")
    return 0
