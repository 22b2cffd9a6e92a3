"""TinyGroundingGPT: build, train, evaluate, serve and inspect the model, and make its data (`tgg <command> -h`).

Each job's package exposes ``add_commands(subparsers)``, which adds its commands with ``add_command``. To add a
command, list it in ``COMMANDS`` (its module and one-line help) and add it in that module's ``add_commands``.
``tgg --help`` lists ``COMMANDS`` without importing any of them, and ``tgg <command>`` imports only that command's
module: several import torch and transformers (seconds), if only through their package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable

# command: (the module whose add_commands adds it, the one-line help `tgg --help` shows)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tinygroundinggpt.demo", "the shipped tiny model grounding fresh scenes: evaluated and drawn"),
    "predict": ("tinygroundinggpt.model.cli", "answer a question about an image; boxes in the image's pixels"),
    "export": (
        "tinygroundinggpt.model.cli",
        "save a checkpoint (with its processor) in another dtype, e.g. bf16 for shipping",
    ),
    "world": (
        "tinygroundinggpt.world.cli",
        "write a procedural grounding world (images, training data, REC/POPE files)",
    ),
    "synth": (
        "tinygroundinggpt.synthesis.cli",
        "multi-scale fine-grained data synthesis (paper §3.2) over a manifest",
    ),
    "synth-merge": ("tinygroundinggpt.synthesis.cli", "join the outputs of tgg synth --shard i/N runs"),
    "synth-world": (
        "tinygroundinggpt.synthesis.cli",
        "a synthesis manifest of built-in synthetic-world scenes (for tgg synth)",
    ),
    "convert": ("tinygroundinggpt.data.converters.cli", "convert a published dataset into the project's JSONL samples"),
    "components": (
        "tinygroundinggpt.components.cli",
        "pretrain the tiny CLIP / DINOv2 / Qwen2 on synthetic-world scenes",
    ),
    "train": ("tinygroundinggpt.training.cli", "train one stage (--recipe) or the whole chain (--chain)"),
    "ablate": ("tinygroundinggpt.training.cli", "a paper ablation in miniature: table3, table4 or table10"),
    "eval": (
        "tinygroundinggpt.eval.cli",
        "evaluate a checkpoint on REC, POPE, VQAv2, GQA, SQA, MME, MMBench, LLaVA-Bench",
    ),
    "serve": ("tinygroundinggpt.serve.cli", "OpenAI-compatible Chat Completions server; answers carry pixel boxes"),
    "web": ("tinygroundinggpt.serve.cli", "Gradio web demo: upload an image, ask, see the boxes drawn"),
    "attend": (
        "tinygroundinggpt.interpret.cli",
        "where an answer looks: last-layer attention to the image patches, drawn",
    ),
    "similarity": (
        "tinygroundinggpt.interpret.cli",
        "per-encoder cosine similarity of one patch to every patch, drawn",
    ),
}


def positive(kind: type, most: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above zero (a zero limit would refuse everything, or crash),
    and at most ``most`` where a deeper layer has its own limit."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {text}")
        return value

    return parse


def add_command(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """Command ``name``'s parser, with its help from ``COMMANDS``."""
    return sub.add_parser(name, help=COMMANDS[name][1])


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """``tgg``'s parser: every command listed, with the options of those in ``load`` (all when None); the others
    take no options, so only a loaded command can be parsed."""
    parser = argparse.ArgumentParser(prog="tgg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {COMMANDS[name][0] for name in (COMMANDS if load is None else load)}
    for name, (module, help_) in COMMANDS.items():
        if name in sub.choices:  # added with an earlier command of its module
            continue
        if module in modules:  # all of its commands at once: add_commands adds them together
            importlib.import_module(module).add_commands(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # tgg's own options take no value, so the first word that is not an option names the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(load=[command] if command in COMMANDS else []).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        # A bad argument, file, image, box or recipe: its message rather than a traceback. The same types also come
        # from real faults (a full disk, a bug), so the traceback is kept in a file, or shown with TGG_TRACEBACK=1.
        if os.environ.get("TGG_TRACEBACK", "0") not in ("", "0"):
            raise
        with tempfile.NamedTemporaryFile("w", prefix="tgg-traceback-", suffix=".txt", delete=False) as f:
            f.write(traceback.format_exc())
        raise SystemExit(f"tgg {args.command}: {exc}\n(traceback: {f.name}; TGG_TRACEBACK=1 prints it)") from None


if __name__ == "__main__":
    sys.exit(main())
