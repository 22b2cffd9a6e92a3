"""World commands: ``tgg world`` writes a synthetic grounding world and a contact sheet."""

from __future__ import annotations

import argparse

from tinygroundinggpt.cli import add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "world")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--n-train", type=int, default=1000, help="training scenes")
    p.add_argument("--n-eval", type=int, default=200, help="evaluation scenes (and as many compositional ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="long side of every image in pixels")
    p.add_argument("--min-objects", type=int, default=2)
    p.add_argument("--max-objects", type=int, default=5)
    p.add_argument("--occlusion", type=float, default=0.3, help="chance that an object may partly cover another")
    p.add_argument("--sheet", type=int, default=16, help="first training scenes shown on contact_sheet.png (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_world)


def _world(args: argparse.Namespace) -> int:
    from tinygroundinggpt.world.build import check_object_range, write_world

    check_object_range(args.min_objects, args.max_objects)
    manifest = write_world(
        args.out,
        args.n_train,
        args.n_eval,
        args.seed,
        args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        occlusion=args.occlusion,
        sheet=args.sheet,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}: " + ", ".join(f"{name} {n}" for name, n in manifest["train_files"].items()))
    return 0
