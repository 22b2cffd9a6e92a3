"""TinyGroundingGPT: build, train, evaluate, serve and inspect the model, and make its data (`tgg <command> -h`).

Each job's package exposes ``add_commands(subparsers)``. To add a job, write ``<package>/cli.py`` with
``add_commands`` and list it in ``COMMAND_MODULES``; keep heavy imports inside the command functions so
``tgg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable

COMMAND_MODULES = [
    "tinygroundinggpt.model.cli",
    "tinygroundinggpt.world.cli",
    "tinygroundinggpt.synthesis.cli",
    "tinygroundinggpt.data.converters.cli",
    "tinygroundinggpt.training.cli",
    "tinygroundinggpt.components.cli",
    "tinygroundinggpt.eval.cli",
    "tinygroundinggpt.demo",
    "tinygroundinggpt.serve.cli",
    "tinygroundinggpt.interpret.cli",
]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
