"""Interpretability commands: ``tgg attend`` (attention map, paper Fig. 5) and ``tgg similarity`` (Fig. 6)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tinygroundinggpt.assets import SHIPPED
from tinygroundinggpt.cli import add_command
from tinygroundinggpt.interpret.attention import SPANS

if TYPE_CHECKING:
    import torch

GIVEN_BOX_COLOUR = (0, 140, 255)  # the question's boxes, apart from the answer's (red)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "attend")
    p.add_argument("--model", default=str(SHIPPED), help="checkpoint folder (default: the shipped tiny model)")
    p.add_argument("--image", required=True)
    p.add_argument("question")
    p.add_argument("--answer", help="score this answer instead of generating one")
    p.add_argument("--span", choices=SPANS, default="answer",
                   help="tokens to take: the answer's (answer: all of it, boxes, text) "
                        "or the prompt's object images (object)")  # fmt: skip
    p.add_argument("--box", type=float, nargs=4, action="append", default=[], metavar=("X1", "Y1", "X2", "Y2"),
                   help="pixel box of the question's <box:i> / <object:i>, in order (repeat for each)")  # fmt: skip
    p.add_argument("--layer", type=int, default=-1, help="LLM layer (default: the last)")
    p.add_argument("--scale", type=float, default=1.0, help="enlarge the picture by this factor")
    p.add_argument("--out", default="attention.png", help="the heat map over the image, predicted boxes red")
    p.set_defaults(func=_attend)

    p = add_command(sub, "similarity")
    p.add_argument("--model", default=str(SHIPPED), help="checkpoint folder (default: the shipped tiny model)")
    p.add_argument("--image", required=True)
    p.add_argument("--point", type=float, nargs=2, required=True, metavar=("X", "Y"), help="query pixel")
    p.add_argument("--scale", type=float, default=1.0, help="enlarge each panel by this factor")
    p.add_argument("--out", default="similarity.png", help="one panel per encoder, the query patch outlined")
    p.set_defaults(func=_similarity)


def _grid_json(grid: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in grid]


def _attend(args: argparse.Namespace) -> int:
    import json

    from tinygroundinggpt.api import TinyGroundingGPTPipeline, answer_boxes
    from tinygroundinggpt.images import load_image
    from tinygroundinggpt.interpret import attention_map

    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    image = load_image(args.image)
    amap = attention_map(pipe.model, pipe.processor, image, args.question, args.answer, layer=args.layer,
                         span=args.span, boxes=args.box)  # fmt: skip
    amap.to_image(image, scale=args.scale, extra_boxes=[(b, GIVEN_BOX_COLOUR) for b in args.box]).save(args.out)
    result = {
        "answer": amap.answer,
        "boxes": [list(b) for b in answer_boxes(amap.answer, image.width, image.height)[0]],
        "span": amap.span,
        "tokens": amap.tokens,
        "layer": amap.layer,
        "grid": _grid_json(amap.grid),
        "out": args.out,
    }
    print(json.dumps(result))
    return 0


def _similarity(args: argparse.Namespace) -> int:
    import json

    from tinygroundinggpt.api import TinyGroundingGPTPipeline
    from tinygroundinggpt.images import load_image
    from tinygroundinggpt.interpret import feature_similarity, similarity_panels

    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    image = load_image(args.image)
    point = (args.point[0], args.point[1])
    maps = feature_similarity(pipe.model, pipe.processor, image, point)
    similarity_panels(image, maps, point, scale=args.scale).save(args.out)
    similarity = {name: _grid_json(grid) for name, grid in maps.items()}
    print(json.dumps({"point": list(point), "similarity": similarity, "out": args.out}))
    return 0
