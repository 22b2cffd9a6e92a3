"""``tgg synth``: run the data synthesis pipeline over a manifest of images."""

from __future__ import annotations

import argparse
import sys

from tinygroundinggpt.cli import add_command


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard takes i/N, got {text!r}") from exc
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard needs 0 <= i < N, got {text!r}")
    return i, n


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "synth")
    p.add_argument("manifest", help="JSONL: {id, image, objects?: [{name, box}], captions?: [...]}")
    p.add_argument("--out", required=True, help="output folder (state, stage2/stage3 data, report)")
    p.add_argument("--image-root", help="folder the manifest's image paths are relative to (default: its folder)")
    p.add_argument("--cache", help="model-call cache folder (default: OUT/cache)")
    p.add_argument("--model", help="chat model name at the OpenAI-compatible endpoint")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for vLLM")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per model call")
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds; doubles each retry")
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="reply token limit; a cut reply keeps its complete items"
    )
    p.add_argument("--recogniser", choices=["annotation", "mllm"], default="annotation")
    p.add_argument("--grounder", help="GroundingDINO Hub id or folder (default: the manifest's boxes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--box-threshold", type=float, default=0.3)
    p.add_argument("--tasks", help="comma-separated generation tasks (default: all)")
    p.add_argument("--no-judge", action="store_true", help="skip the Table 7 LLM-judge filter")
    p.add_argument("--min-quality", type=int, default=3)
    p.add_argument("--min-object-area", type=float, default=0.01)
    p.add_argument("--max-object-area", type=float, default=0.8)
    p.add_argument("--max-object-iou", type=float, default=0.3)
    p.add_argument("--min-confidence", type=float, default=0.35)
    p.add_argument(
        "--keep-unscored-boxes",
        action="store_true",
        help="keep samples with model-written boxes that match no grounded object (dropped by default)",
    )
    p.add_argument("--max-boxes", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: this machine's share of the corpus")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_synth)

    m = add_command(sub, "synth-merge")
    m.add_argument("manifest", help="the manifest the shards ran on (gives the order)")
    m.add_argument("--shards", nargs="+", required=True, help="the shards' --out folders")
    m.add_argument("--out", required=True)
    m.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="merge a shard whose run left images unfinished (they are left out and counted); refused by default",
    )
    m.set_defaults(func=_synth_merge)

    w = add_command(sub, "synth-world")
    w.add_argument("--out", required=True, help="folder for images/ and manifest.jsonl")
    w.add_argument("-n", type=int, default=100, help="number of scenes")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--image-size", type=int, default=96, help="long side in pixels")
    w.set_defaults(func=_synth_world)


def _synth_merge(args: argparse.Namespace) -> int:
    import json

    from tinygroundinggpt.synthesis.pipeline import merge_shards, read_manifest

    report = merge_shards(read_manifest(args.manifest), args.shards, args.out, allow_incomplete=args.allow_incomplete)
    print(json.dumps(report, indent=2))
    return 0 if report["complete"] or args.allow_incomplete else 1


def _synth_world(args: argparse.Namespace) -> int:
    from tinygroundinggpt.synthesis.world_manifest import write_world_manifest

    print(write_world_manifest(args.out, args.n, seed=args.seed, image_size=args.image_size, progress=True))
    return 0


def _synth(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    from tinygroundinggpt.synthesis.backends import CachedModels, GroundingDinoGrounder, OpenAIChatBackend, RetryCounter
    from tinygroundinggpt.synthesis.cache import DiskCache
    from tinygroundinggpt.synthesis.filters import FilterConfig
    from tinygroundinggpt.synthesis.pipeline import Pipeline, read_manifest
    from tinygroundinggpt.synthesis.stages import GENERATION_TASKS, SynthConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counter = RetryCounter()
    chat = None
    if args.model:
        chat = OpenAIChatBackend(
            args.model,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            timeout=args.timeout,
            max_retries=args.max_retries,
            backoff=args.backoff,
            max_tokens=args.max_tokens,
            counter=counter,
        )
    grounder = GroundingDinoGrounder(args.grounder, device=args.device) if args.grounder else None
    config = SynthConfig(
        recogniser=args.recogniser,
        box_threshold=args.box_threshold,
        tasks=tuple(args.tasks.split(",")) if args.tasks else tuple(GENERATION_TASKS),
        judge=not args.no_judge,
        min_quality=args.min_quality,
        filters=FilterConfig(
            min_object_area=args.min_object_area,
            max_object_area=args.max_object_area,
            max_object_iou=args.max_object_iou,
            min_confidence=args.min_confidence,
            keep_unscored=args.keep_unscored_boxes,
            max_boxes=args.max_boxes,
        ),
    )
    out = Path(args.out)
    models = CachedModels(DiskCache(args.cache or out / "cache"), chat, grounder, counter)
    pipe = Pipeline(
        out,
        models,
        config,
        image_root=args.image_root or Path(args.manifest).parent,
        concurrency=args.concurrency,
        shard=args.shard,
        progress=not args.no_progress,
    )
    report = pipe.run(read_manifest(args.manifest))
    print(json.dumps(report, indent=2))
    return 0 if report["complete"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m tinygroundinggpt.synthesis.cli MANIFEST ...``: the synth command alone, without
    importing the other commands (a synthesis worker needs none of them)."""
    parser = argparse.ArgumentParser(prog="tgg-synth")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return _synth(parser.parse_args(["synth", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
