"""Model commands: ``tgg predict``, ``tgg export``."""

from __future__ import annotations

import argparse

from tinygroundinggpt.assets import SHIPPED
from tinygroundinggpt.cli import add_command, positive

DTYPES = ("bfloat16", "float16", "float32")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict")
    p.add_argument(
        "--model", default=str(SHIPPED), help="checkpoint folder or Hub id (default: the shipped tiny model)"
    )
    p.add_argument("--image", required=True)
    p.add_argument("question")
    p.add_argument("--max-new-tokens", type=positive(int), default=64)
    p.set_defaults(func=_predict)
    e = add_command(sub, "export")
    e.add_argument("--model", required=True, help="checkpoint folder")
    e.add_argument("--out", required=True, help="new folder (must not exist, so nothing is overwritten)")
    e.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    e.set_defaults(func=_export)


def _predict(args: argparse.Namespace) -> int:
    import json

    from tinygroundinggpt.api import TinyGroundingGPTPipeline

    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    pred = pipe.predict(args.image, args.question, max_new_tokens=args.max_new_tokens)
    print(json.dumps(pred.to_json(), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"tgg export: --out {out} already exists")
    # Loaded in fp32 first so that every weight is rounded once, from the trained values.
    model = TinyGroundingGPTForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    processor = TinyGroundingGPTProcessor.from_pretrained(args.model)
    model.to(getattr(torch, args.dtype)).save_pretrained(out)
    processor.save_pretrained(out)
    print(f"wrote {out} ({args.dtype})")
    return 0
