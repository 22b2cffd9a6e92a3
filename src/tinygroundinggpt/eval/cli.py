"""``tgg eval``: run benchmarks on a checkpoint.

Data-parallel over processes/GPUs with accelerate (each process takes every N-th uncached item)::

    accelerate launch --num_processes 4 -m tinygroundinggpt.cli eval --model CKPT --tasks rec,pope --data-root data

On CPU, ``accelerate launch --cpu`` starts one process only; start several with
``torchrun --nproc_per_node 2 -m tinygroundinggpt.cli eval ...`` (gloo) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygroundinggpt.assets import SHIPPED
from tinygroundinggpt.cli import add_command

# Short names for the groups the paper reports together.
ALIASES = {
    "rec": [
        "refcoco_val",
        "refcoco_testA",
        "refcoco_testB",
        "refcoco+_val",
        "refcoco+_testA",
        "refcoco+_testB",
        "refcocog_val",
        "refcocog_test",
    ],
    "pope": ["pope_random", "pope_popular", "pope_adversarial"],
    "world": [
        "world_rec_val",
        "world_rec_test",
        "world_rec_compositional_val",
        "world_rec_compositional_test",
        "world_pope_random",
        "world_pope_popular",
        "world_pope_adversarial",
    ],
}


def expand_tasks(spec: str) -> list[str]:
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in ALIASES.get(part, [part] if part else []):
            if name not in names:
                names.append(name)
    return names


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval")
    p.add_argument(
        "--model", default=str(SHIPPED), help="checkpoint folder or Hub id (default: the shipped tiny model)"
    )
    p.add_argument("--tasks", default="", help="comma-separated task names, or the groups 'rec', 'pope' and 'world'")
    p.add_argument(
        "--data-root", default="data", help="folder holding the benchmarks as published (see eval/README.md)"
    )
    p.add_argument("--out", default=None, help="results and prediction cache (default eval_results/<model name>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="override each task's default")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each task")
    p.add_argument("--rec-prompt", choices=["paper", "lmms"], default="paper")
    p.add_argument("--judge-model", default=None, help="judge for llava_bench / desc_quality, e.g. gpt-4o")
    p.add_argument("--judge-base-url", default=None, help="any OpenAI-compatible endpoint (key from $OPENAI_API_KEY)")
    p.add_argument("--llava-rules", default=None, help="LLaVA's rule.json, to review LLaVA-Bench in its exact wording")
    p.add_argument("--list-tasks", action="store_true", help="print the task names and exit")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from tinygroundinggpt.eval.task import DataError, EvalOptions, get_task, task_names

    if args.list_tasks:
        print("\n".join(task_names()))
        return 0
    names = expand_tasks(args.tasks)
    if not names:
        raise SystemExit("tgg eval: --tasks is required (see --list-tasks)")
    out = Path(args.out or Path("eval_results") / Path(args.model.rstrip("/")).name)

    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate only forms a process group when asked for CPU explicitly (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    judge = None
    if args.judge_model:
        from tinygroundinggpt.eval.judge import Judge

        # Each process keeps its own judge cache; only the main process scores, so only it writes one.
        judge = Judge(args.judge_model, base_url=args.judge_base_url, cache_path=out / "judge_cache.jsonl")
    options = EvalOptions(rec_prompt=args.rec_prompt, judge=judge, llava_rules=args.llava_rules)
    try:
        tasks = [get_task(n, options) for n in names]
    except (KeyError, DataError) as exc:
        raise SystemExit(f"tgg eval: {exc.args[0]}") from exc

    from tinygroundinggpt.api import TinyGroundingGPTPipeline
    from tinygroundinggpt.eval.runner import OutputConflict, checkpoint_id, evaluate

    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model, device=str(state.device))
    try:
        results = evaluate(
            pipe,
            tasks,
            args.data_root,
            out,
            model_name=Path(args.model.rstrip("/")).name,
            model_id=checkpoint_id(args.model),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            state=state,
        )
    except (DataError, OutputConflict) as exc:  # missing benchmark files, another model's --out: no traceback
        raise SystemExit(f"tgg eval: {exc}") from exc
    if state.is_main_process:
        print((out / "results.md").read_text())
        print(f"results: {out / 'results.json'}")
        failed = sum(t["n_failed"] for t in results["tasks"].values())
        if failed:
            print(f"{failed} items failed (listed in results.md / results.json, with the reasons); rerun to retry them")
    return 0
