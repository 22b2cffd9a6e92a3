"""Model commands: ``tgg predict``."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="answer a question about an image; boxes in the image's pixels")
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    p.add_argument("--image", required=True)
    p.add_argument("question")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    import json

    from tinygroundinggpt.api import TinyGroundingGPTPipeline

    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    pred = pipe.predict(args.image, args.question, max_new_tokens=args.max_new_tokens)
    print(json.dumps(pred.to_json(), indent=2))
    return 0
